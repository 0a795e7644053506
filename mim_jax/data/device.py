"""On-device preprocessing of pipeline batches: uint8 pixels -> normalized float32, inside one small jit.

With `data.normalize_on_device` the host pipeline ships uint8 images (`pipeline.train_iterator(...,
allow_uint8_images=True)`): a quarter of the bytes to copy and transfer, and no per-image float pass on the
host. `normalize` computes `(x / 255 - mean) / std` on the global batch where it lives (the output keeps the
input's sharding), so the train step still sees the float32 batch its compiled spec expects.

Kept apart from `pipeline` so that grain worker processes, which import the pipeline, never import jax.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.jit, static_argnames=('mean', 'std'))
def _normalize_images(images: jax.Array, mean: tuple[float, ...], std: tuple[float, ...]) -> jax.Array:
  # The host's formula (transforms.Normalizer): one multiply-add with float32 constants.
  scale = jnp.asarray(1.0 / (255.0 * np.asarray(std, np.float32)), jnp.float32)
  offset = jnp.asarray(-np.asarray(mean, np.float32) / np.asarray(std, np.float32), jnp.float32)
  return images.astype(jnp.float32) * scale + offset


def normalize(batch: dict[str, Any], info) -> dict[str, Any]:
  """`batch` with its uint8 'image' normalized with `info.mean` / `info.std` (a `pipeline.DatasetInfo`).

  Float images (a pipeline that already normalized on the host) are returned unchanged, so callers can apply
  this to every batch whatever `data.normalize_on_device` says.
  """
  images = batch['image']
  if images.dtype != np.uint8:
    return batch
  mean, std = tuple(float(x) for x in info.mean), tuple(float(x) for x in info.std)
  if images.shape[-1] != len(mean):
    raise ValueError(f'images have {images.shape[-1]} channels but the dataset mean/std have {len(mean)}: '
                     'pass the DatasetInfo of the data config that made the batch')
  return {**batch, 'image': _normalize_images(images, mean, std)}
