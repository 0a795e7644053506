"""Host half of RandomResizedCrop + flip when the resampling runs on the accelerator (data.resize_on_device).

At 224 px from ImageNet-sized JPEGs a host spends most of its time in two C routines: the JPEG decode and PIL's
antialiased bicubic resize (docs/data.md, "Throughput"). The resize is a pair of small matrix products per
image, which an accelerator does in microseconds, so with `data.resize_on_device` the host only

  1. samples the crop box and the flip with the same generator calls as `transforms.RandomResizedCrop` and
     `transforms.RandomHorizontalFlip` (so a seed gives the same crops either way),
  2. decodes the JPEG at the DCT scale with the cheapest decode that keeps the box at least as large as the
     output (never upsampling more than the host path) and lets the box's neighbourhood fit the canvas,
  3. copies the box plus the filter's support (clipped to the image) into a fixed-size uint8 canvas,

and `mim_jax.data.device.preprocess` resamples each canvas with PIL's filter (same kernel, same support, same
clipping at the image border), flips and normalizes on the device. A neighbourhood that cannot fit the canvas at
any allowed scale (rare: a large crop of a non-JPEG image, or an extreme aspect ratio) is resized on the host
and sent as an exact output-sized image, which the device resamples with the identity.

Batch contract (see `CanvasCollate`): 'image' uint8 [b, canvas, canvas, C] with the pixels at the top-left,
'crop_box' float32 [b, 4] (left, upper, right, lower) in canvas pixels, 'crop_extent' int32 [b, 2] (width,
height) of the real pixels, 'flip' bool [b], plus 'label' (and 'index').
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mim_jax.data import transforms

# Resampling filters the device implements (mim_jax.data.device), with PIL's support in output-scale pixels.
FILTER_SUPPORT = {'bicubic': 2.0, 'bilinear': 1.0}


def default_canvas(image_size: int) -> int:
  """Canvas side for `image_size` outputs: twice the output, rounded up to a multiple of 8. Crop boxes up to
  about that size are decoded at full size; larger ones at the cheapest DCT scale whose neighbourhood fits."""
  return int(math.ceil(2 * image_size / 8) * 8)


def _span(lo: float, hi: float, support: float, limit: int) -> tuple[int, int]:
  """[start, stop) of the source pixels PIL's filter reads for the box edges lo..hi (clipped to the image)."""
  margin = math.ceil(support) + 1
  return max(0, int(math.floor(lo - margin))), min(limit, int(math.ceil(hi + margin)))


class DeviceCrop:
  """Record transform: raw image -> dict(image=uint8 [h, w, C] neighbourhood, crop_box, crop_extent, flip)."""

  def __init__(self, crop: transforms.RandomResizedCrop, flip_p: float | None, channels: int, canvas: int,
               interpolation: str = 'bicubic', decoder: str = 'auto'):
    if interpolation not in FILTER_SUPPORT:
      raise ValueError(f'resize_on_device supports interpolation {sorted(FILTER_SUPPORT)}, got {interpolation!r}')
    self.crop = crop
    self.flip_p = flip_p
    self.channels = int(channels)
    self.mode = 'L' if self.channels == 1 else 'RGB'
    self.canvas = int(canvas)
    self.support = FILTER_SUPPORT[interpolation]
    self.decoder = transforms.resolve_decoder(decoder)
    out_h, out_w = crop.size
    if max(out_h, out_w) > self.canvas:
      raise ValueError(f'device_canvas={self.canvas} is smaller than the output {out_w}x{out_h}')

  def _scales(self, img: transforms.LazyImage) -> list[int]:
    """Candidate M of the M/8 decoding scales, cheapest decode first."""
    jpeg = not isinstance(img.data, np.ndarray) and transforms.is_jpeg(img.data)
    if jpeg and self.decoder in ('simplejpeg', 'simplejpeg_fast'):
      allowed = range(1, 9)
    elif jpeg and self.decoder == 'pil':
      allowed = (1, 2, 4, 8)
    else:
      allowed = (8,)
    return sorted(allowed, key=lambda m: transforms.DCT_DECODE_COST[m])

  def _region(self, box, scaled_w: int, scaled_h: int, w: int, h: int):
    """The box in pixels of an image decoded at scaled_w x scaled_h, and the [start, stop) rows and columns the
    filter reads around it; plus whether those fit the canvas."""
    out_h, out_w = self.crop.size
    sx, sy = scaled_w / w, scaled_h / h
    x0, y0, x1, y1 = box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
    cols = _span(x0, x1, self.support * max((x1 - x0) / out_w, 1.0), scaled_w)
    rows = _span(y0, y1, self.support * max((y1 - y0) / out_h, 1.0), scaled_h)
    fits = cols[1] - cols[0] <= self.canvas and rows[1] - rows[0] <= self.canvas
    return (x0, y0, x1, y1), cols, rows, fits

  def _scale(self, img: transforms.LazyImage, box) -> int | None:
    """M of the cheapest M/8 decode whose box stays >= the output (as the host path) and whose region fits."""
    w, h = img.size
    out_h, out_w = self.crop.size
    for m in self._scales(img):
      (x0, y0, x1, y1), _, _, fits = self._region(box, math.ceil(w * m / 8), math.ceil(h * m / 8), w, h)
      if m < 8 and (x1 - x0 < out_w or y1 - y0 < out_h):
        continue  # would upsample a crop that a full decode keeps large enough
      if fits:
        return m
    return None

  def _decode(self, img: transforms.LazyImage, m: int) -> np.ndarray:
    w, h = img.size
    if m < 8 or self.decoder in ('simplejpeg', 'simplejpeg_fast'):
      arr = img.decode_array(math.ceil(w * m / 8), math.ceil(h * m / 8))
      if arr is not None:
        return arr
    pil = img.pil()
    return np.asarray(pil).reshape(pil.size[1], pil.size[0], self.channels)

  def __call__(self, raw: bytes | np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    img = transforms.LazyImage(raw, self.mode, self.decoder)
    w, h = img.size
    box = self.crop.get_box(w, h, rng)
    flip = self.flip_p is not None and rng.random() < self.flip_p  # the generator call RandomHorizontalFlip makes
    m = self._scale(img, box)
    if m is not None:
      arr = self._decode(img, m)
      (x0, y0, x1, y1), cols, rows, fits = self._region(box, arr.shape[1], arr.shape[0], w, h)  # actual scale
      if fits:
        return self._record(arr[rows[0]:rows[1], cols[0]:cols[1]],
                            (x0 - cols[0], y0 - rows[0], x1 - cols[0], y1 - rows[0]), flip)
    # Too large for the canvas at every allowed scale: resize on the host; the device resamples 1:1.
    out_size = (self.crop.size[1], self.crop.size[0])
    resized = transforms.as_pil(img.crop_resize(box, out_size, self.crop.resample))
    region = np.asarray(resized).reshape(resized.size[1], resized.size[0], self.channels)
    return self._record(region, (0.0, 0.0) + tuple(float(v) for v in resized.size), flip)

  def _record(self, region: np.ndarray, crop_box, flip: bool) -> dict[str, Any]:
    return {'image': region, 'crop_box': np.asarray(crop_box, np.float32), 'flip': np.bool_(flip),
            'crop_extent': np.asarray((region.shape[1], region.shape[0]), np.int32)}


class CanvasCollate:
  """grain batch_fn for `DeviceCrop` records: neighbourhoods into a zeroed uint8 canvas batch (top-left)."""

  def __init__(self, canvas: int, channels: int):
    self.canvas = int(canvas)
    self.channels = int(channels)

  def __call__(self, records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    images = np.zeros((len(records), self.canvas, self.canvas, self.channels), np.uint8)
    for i, r in enumerate(records):
      h, w = r['image'].shape[:2]
      images[i, :h, :w] = r['image'].reshape(h, w, self.channels)
    out = {'image': images}
    for key, dtype in (('crop_box', np.float32), ('crop_extent', np.int32), ('flip', np.bool_),
                       ('label', np.int32), ('index', np.int64)):
      if key in records[0]:
        out[key] = np.asarray([r[key] for r in records], dtype)
    return out


def build(cfg, channels: int) -> DeviceCrop:
  """The `DeviceCrop` for `cfg` (data config with resize_on_device; only the 'rrc_flip' recipe).

  Checked here, where canvases are made, not with the rest of the config: evaluators inherit the pre-training
  data config and read it on the host (their own recipe, image size), where these settings do not apply.
  """
  def fail(msg):
    raise ValueError(f'bad data config: {msg} (or set data.resize_on_device=False)')

  if cfg.get('augment', 'rrc_flip') != 'rrc_flip':
    fail(f"resize_on_device supports augment='rrc_flip' only, got {cfg.augment!r}")
  if cfg.interpolation not in FILTER_SUPPORT:
    fail(f'resize_on_device supports interpolation {sorted(FILTER_SUPPORT)}, got {cfg.interpolation!r}')
  canvas = cfg.get('device_canvas', None)
  if canvas is not None and (not isinstance(canvas, int) or canvas < cfg.image_size):
    fail(f'device_canvas must be None or an int >= image_size ({cfg.image_size}), got {canvas!r}')
  crop = transforms.RandomResizedCrop(cfg.image_size, scale=cfg.crop_scale, ratio=cfg.crop_ratio,
                                      interpolation=cfg.interpolation, subpixel=cfg.get('crop_subpixel', False))
  return DeviceCrop(crop, 0.5 if cfg.hflip else None, channels, canvas or default_canvas(cfg.image_size),
                    cfg.interpolation, cfg.get('decoder', 'auto'))

