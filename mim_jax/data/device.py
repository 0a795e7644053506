"""On-device preprocessing of pipeline batches: uint8 pixels -> the normalized float32 batch, in small jits.

With `data.normalize_on_device` the host pipeline ships uint8 images (`pipeline.train_iterator(...,
allow_uint8_images=True)`): a quarter of the bytes to copy and transfer, and no per-image float pass on the
host. With `data.resize_on_device` it ships uint8 canvases holding each crop's neighbourhood plus the crop box
and flip (mim_jax/data/device_crop.py), and the accelerator also does the antialiased resampling, the host's
largest cost. `preprocess` turns either into the float32 batch the train step's compiled spec expects, where
the batch lives (the outputs keep the batch's sharding).

Kept apart from `pipeline` so that grain worker processes, which import the pipeline, never import jax.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.data import batch as batch_lib
from mim_jax.data.batch import Fields

CANVAS_KEYS = ('crop_box', 'crop_extent', 'flip')


def _affine(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[jax.Array, jax.Array]:
  """(scale, offset) of the host's formula (transforms.Normalizer): x * scale + offset = (x / 255 - mean) / std."""
  std32 = np.asarray(std, np.float32)
  scale = 1.0 / (255.0 * std32)
  offset = -np.asarray(mean, np.float32) / std32
  return jnp.asarray(scale, jnp.float32), jnp.asarray(offset, jnp.float32)


@functools.partial(jax.jit, static_argnames=('mean', 'std'))
def _normalize_images(images: jax.Array, mean: tuple[float, ...], std: tuple[float, ...]) -> jax.Array:
  scale, offset = _affine(mean, std)
  return images.astype(jnp.float32) * scale + offset


def _filter(name: str, x: jax.Array) -> jax.Array:
  """PIL's resampling kernels (libImaging/Resample.c): Keys cubic with a = -0.5, or the triangle."""
  x = jnp.abs(x)
  if name == 'bilinear':
    return jnp.maximum(1.0 - x, 0.0)
  a = -0.5
  near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
  far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
  return jnp.where(x < 1.0, near, jnp.where(x < 2.0, far, 0.0))


def resample_weights(lo: jax.Array, hi: jax.Array, extent: jax.Array, out_size: int, length: int,
                     name: str = 'bicubic') -> jax.Array:
  """[B, out_size, length] weights of PIL's antialiased resampling of the span [lo, hi) of each row of pixels
  (real pixels at [0, extent), zeros beyond): the filter is widened by the downscale factor, its taps are the
  pixels PIL reads (rounded window, clipped to the image) and each row of weights sums to 1."""
  support = {'bicubic': 2.0, 'bilinear': 1.0}[name]
  scale = (hi - lo) / out_size
  widen = jnp.maximum(scale, 1.0)
  center = lo[:, None] + (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale[:, None]
  reach = (support * widen)[:, None]
  first = jnp.maximum(jnp.trunc(center - reach + 0.5), 0.0)
  stop = jnp.minimum(jnp.trunc(center + reach + 0.5), extent[:, None].astype(jnp.float32))
  x = jnp.arange(length, dtype=jnp.float32)
  w = _filter(name, (x - center[..., None] + 0.5) / widen[:, None, None])
  w = jnp.where((x >= first[..., None]) & (x < stop[..., None]), w, 0.0)
  total = w.sum(-1, keepdims=True)
  return w / jnp.where(total == 0, 1.0, total)


@functools.partial(jax.jit, static_argnames=('out_hw', 'name', 'mean', 'std'))
def _resample_flip_normalize(canvas: jax.Array, box: jax.Array, extent: jax.Array, flip: jax.Array,
                             out_hw: tuple[int, int], name: str, mean: tuple[float, ...],
                             std: tuple[float, ...]) -> jax.Array:
  out_h, out_w = out_hw
  wx = resample_weights(box[:, 0], box[:, 2], extent[:, 0], out_w, canvas.shape[2], name)
  wx = jnp.where(flip[:, None, None], wx[:, ::-1], wx)  # a mirrored image = its output columns reversed
  wy = resample_weights(box[:, 1], box[:, 3], extent[:, 1], out_h, canvas.shape[1], name)
  # Two passes like PIL's, each rounded and clipped to 0..255 (PIL keeps uint8 between and after them), so
  # the result is the host's up to the order of the passes and fixed-point rounding: within a level or so.
  # 'high' precision: pixels are exact and weights keep ~1e-3 relative error where a backend offers less.
  pixels = canvas.astype(jnp.float32)
  rows = jnp.einsum('btw,bhwc->bhtc', wx, pixels, precision=jax.lax.Precision.HIGH)
  rows = jnp.clip(jnp.round(rows), 0.0, 255.0)
  out = jnp.einsum('bsh,bhtc->bstc', wy, rows, precision=jax.lax.Precision.HIGH)
  out = jnp.clip(jnp.round(out), 0.0, 255.0)
  scale, offset = _affine(mean, std)
  return out * scale + offset


def _check_channels(key: str, channels: int, mean: tuple[float, ...]) -> None:
  if channels != len(mean):
    raise ValueError(f'batch[{key!r}] has {channels} channels but its mean/std have {len(mean)}: pass the '
                     'DatasetInfo of the data config that made the batch (or give the field its own statistics)')


def normalize(batch: dict[str, Any], info, fields: Fields | None = None) -> dict[str, Any]:
  """`batch` with every uint8 pixel field normalized with its statistics: the field's own, else `info.mean` /
  `info.std` (a `pipeline.DatasetInfo`). ``fields`` defaults to the single-image batch. Float fields (a pipeline
  that already normalized on the host) are returned unchanged."""
  fields = fields if fields is not None else batch_lib.image_fields(info.image_shape)
  changed = {}
  for key, (mean, std) in batch_lib.pixel_stats(fields, info.mean, info.std).items():
    x = batch.get(key)
    if x is None or x.dtype != np.uint8:
      continue
    _check_channels(key, x.shape[-1], mean)
    changed[key] = _normalize_images(x, mean, std)
  return {**batch, **changed} if changed else batch


def preprocess(batch: dict[str, Any], info, fields: Fields | None = None) -> dict[str, Any]:
  """The float32 train batch from whatever `pipeline.train_iterator(..., allow_uint8_images=True)` yielded:
  canvases are resampled to `info.image_shape`, flipped and normalized; uint8 pixel fields are normalized; float
  fields pass through. Callers can apply it to every batch whatever the data config says."""
  if 'crop_box' not in batch:
    return normalize(batch, info, fields)
  canvas = batch['image']
  mean, std = tuple(float(x) for x in info.mean), tuple(float(x) for x in info.std)
  _check_channels('image', canvas.shape[-1], mean)
  image = _resample_flip_normalize(canvas, batch['crop_box'], batch['crop_extent'], batch['flip'],
                                   tuple(info.image_shape[:2]), getattr(info, 'interpolation', 'bicubic'), mean,
                                   std)
  out = {k: v for k, v in batch.items() if k not in CANVAS_KEYS}
  out['image'] = image
  return out
