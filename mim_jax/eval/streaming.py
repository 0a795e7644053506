"""Sharded forward passes over a whole split, for evaluators: the frozen encoder's features, a classifier's logits.

Batches come from the grain pipeline (each host reads its share), become one global array split over the
('data', 'fsdp') mesh exactly like pre-training batches, and the jitted function's outputs come back
replicated, so every host ends with the full result in split order. Nothing holds the whole split's images in
memory, so the same code serves the digits and ImageNet.

The eval stream is the train pipeline (``mim_jax.data.pipeline.train_dataset``) on the requested split with
``augment='none'`` (the eval resize + center crop) and ``shuffle=False``: element ``i`` of the endless stream is
example ``i mod n``, so ``ceil(n / batch)`` batches cover the split once and a per-example ``valid`` flag marks
the wrap-around padding of the last batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from mim_jax.data import pipeline
from mim_jax.train import sharding as shd


def device_count(mesh) -> int:
  return int(mesh.shape['data'] * mesh.shape['fsdp'])


def fit_batch(batch_size: int, num_examples: int, mesh) -> int:
  """``batch_size`` clipped to the split and rounded down to a multiple of the mesh's devices (at least one each)."""
  devices = device_count(mesh)
  step = devices * jax.process_count() // np.gcd(devices, jax.process_count())
  if num_examples < step:
    raise ValueError(f'the split has {num_examples} examples, fewer than the {step} devices/processes; '
                     'evaluate on a larger split or fewer devices (config.mesh).')
  return max(step, min(int(batch_size), num_examples) // step * step)


def split_size(data_cfg, split: str, max_examples: int | None = None) -> int:
  info = pipeline.dataset_info(data_cfg)
  if split not in info.splits:
    raise ValueError(f'dataset {info.name!r} has no split {split!r}; available: {sorted(info.splits)}.')
  n = info.splits[split]
  return n if max_examples is None else min(n, int(max_examples))


def eval_batches(data_cfg, split: str, global_batch: int, mesh, max_examples: int | None = None,
                 progress: bool = False, desc: str = '') -> Iterator[dict[str, jax.Array]]:
  """Global batches ``dict(image, label, valid)`` covering the first ``max_examples`` of ``split`` once."""
  n = split_size(data_cfg, split, max_examples)
  global_batch = fit_batch(global_batch, n, mesh)
  cfg = ml_collections.ConfigDict(data_cfg.to_dict())
  cfg.train_split, cfg.augment, cfg.shuffle, cfg.return_index = split, 'none', False, False
  procs, me = jax.process_count(), jax.process_index()
  per_host = global_batch // procs
  it = pipeline.train_iterator(cfg, per_host, seed=0, process_index=me, process_count=procs)
  num_batches = -(-n // global_batch)
  local = np.arange(per_host)
  show = progress and num_batches >= 20  # a bar only where there is something to wait for
  for k in tqdm(range(num_batches), desc=desc or split, disable=not show, leave=False):
    batch = next(it)
    # Host `me` holds elements me, me + P, me + 2P, ... of the endless stream; element i is example i mod n.
    position = (k * per_host + local) * procs + me
    local_batch = {'image': batch['image'], 'label': batch['label'], 'valid': position < n}
    yield shd.global_batch(local_batch, mesh)


def param_shardings(boxed_abstract_params, mesh, rules):
  """Shardings of a (boxed, abstract) params tree under the logical rules, as in pre-training."""
  return shd.logical_shardings(boxed_abstract_params, mesh, rules)


def put_params(params, shardings):
  return jax.tree.map(lambda x, s: jax.device_put(np.asarray(x), s), params, shardings)


def jit_forward(fn: Callable[[Any, jax.Array], Any], params_shardings, mesh, rules):
  """``batch -> (fn(params, batch['image']), batch['label'], batch['valid'])``, jitted with the batch split over
  the mesh and the outputs replicated (every host gets all rows)."""

  def with_labels(params, batch):
    return fn(params, batch['image']), batch['label'], batch['valid']

  jitted = jax.jit(with_labels, in_shardings=(params_shardings, shd.batch_sharding(mesh)),
                   out_shardings=shd.replicated(mesh))

  def call(params, batch):
    with nn.logical_axis_rules(rules), jax.set_mesh(mesh):
      return jitted(params, batch)

  return call


def gather(forward, params, batches) -> tuple[np.ndarray, np.ndarray]:
  """``(outputs [N, ...], labels [N])`` of a :func:`jit_forward` function over the batches, padding dropped.

  Dispatch runs one batch ahead of the host copy.
  """
  outs, labels, pending = [], [], None

  def collect(item):
    out, label, valid = (np.asarray(a) for a in item)
    outs.append(out.astype(np.float32)[valid])
    labels.append(label[valid])

  for batch in batches:
    result = forward(params, batch)
    if pending is not None:
      collect(pending)
    pending = result
  if pending is None:
    raise ValueError('no batches to evaluate')
  collect(pending)
  return np.concatenate(outs), np.concatenate(labels)


def features_fn(encoder: nn.Module, feature: str) -> Callable[[Any, jax.Array], jax.Array]:
  """Frozen features without masking: 'cls' (token 0 after the final norm) or 'pooled' (mean of patch tokens),
  as ``Method.encode`` defines them."""
  if feature not in ('cls', 'pooled'):
    raise ValueError(f"feature must be 'cls' or 'pooled', got {feature!r}.")

  def fn(encoder_params, images):
    tokens = encoder.apply({'params': encoder_params}, images)
    out = tokens[:, 0] if feature == 'cls' else tokens[:, 1:].mean(axis=1)
    return out.astype(jnp.float32)

  return fn
