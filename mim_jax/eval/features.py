"""Run a feature function over an array in fixed-size batches and gather the results on the host."""

from __future__ import annotations

import sys
from collections.abc import Callable

import jax
import numpy as np
from tqdm.auto import tqdm


def _to_host(x) -> np.ndarray:
  x = np.asarray(x)
  if x.dtype.kind == 'V' or x.dtype.name == 'bfloat16':  # bf16/fp8 features: keep host math in float32
    x = x.astype(np.float32)
  return x


def extract_features(
  feature_fn: Callable[[jax.Array], jax.Array],
  images,
  batch_size: int,
  *,
  jit: bool = True,
  progress: bool | None = None,
  desc: str = 'features',
) -> np.ndarray:
  """``feature_fn(batch [b, ...]) -> [b, D]`` over ``images [N, ...]``; returns a host array ``[N, D]``.

  Every call sees exactly ``batch_size`` rows (the last batch is zero-padded and the padding stripped), so the
  function compiles once. ``images`` only needs ``len``/slicing (a NumPy array or memmap is fine). Dispatch is
  asynchronous: batch ``i + 1`` is launched before batch ``i`` is copied to the host. Pass ``jit=False`` when
  ``feature_fn`` is already jitted with arguments bound that should not become compile-time constants. A tqdm
  bar is shown when ``progress`` is True, or when it is None and there are at least 20 batches.
  """
  n = len(images)
  if n == 0:
    raise ValueError('extract_features got no images')
  batch_size = max(1, min(int(batch_size), n))
  fn = jax.jit(feature_fn) if jit else feature_fn
  num_batches = -(-n // batch_size)
  # Auto: only on a terminal (a bar's carriage returns would litter a redirected log).
  show = (num_batches >= 20 and sys.stderr.isatty()) if progress is None else progress
  outputs, pending = [], None
  with tqdm(total=n, desc=desc, unit='img', disable=not show, leave=False) as bar:
    for start in range(0, n, batch_size):
      chunk = np.asarray(images[start : start + batch_size])
      valid = chunk.shape[0]
      if valid < batch_size:
        pad = np.zeros((batch_size - valid, *chunk.shape[1:]), chunk.dtype)
        chunk = np.concatenate([chunk, pad])
      result = fn(chunk)
      if pending is not None:
        outputs.append(_to_host(pending[0])[: pending[1]])
        bar.update(pending[1])
      pending = (result, valid)
    outputs.append(_to_host(pending[0])[: pending[1]])
    bar.update(pending[1])
  return np.concatenate(outputs)
