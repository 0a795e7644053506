"""Image transforms: per-record geometric/photometric ops on PIL images, and per-batch normalization in numpy.

A record's image arrives either as encoded bytes (JPEG/PNG from an ArrayRecord dataset) or as a uint8 array
`[H, W, C]`. It is wrapped in a `LazyImage`, whose size is known from the file header before any pixel is
decoded; a crop op (`RandomResizedCrop`, `ResizeCenterCrop`) picks its box on that size and then decodes only
as much as it needs: for JPEGs, `Image.draft` lets libjpeg decode at 1/2, 1/4 or 1/8 scale (DCT scaling,
nearly free) whenever the crop box still covers the output size at that scale; the box is then cropped and
resized in one PIL call.

An op is any callable `op(img, rng) -> img` where `img` is a `LazyImage` or a `PIL.Image.Image` and `rng` a
numpy `Generator` (the per-record generator grain hands to `random_map`; deterministic given the pipeline
seed). Ops that need pixels call `as_pil(img)`. `Compose(ops, channels)` runs them and returns uint8 `[size,
size, channels]`. Adding an augmentation (SimMIM, fine-tune RandAugment, color jitter, ...) = writing one such
callable and adding it to a recipe in `build_train_transform` / `build_eval_transform`.

Crop boxes follow torchvision's `RandomResizedCrop.get_params` (10 tries, then a center crop with the ratio
clamped) and `Resize(int(size / crop_pct))` + `CenterCrop(size)` for evaluation, with PIL's antialiased
resampling.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from typing import Union

import numpy as np
from PIL import Image

INTERPOLATIONS = {
  'nearest': Image.Resampling.NEAREST,
  'bilinear': Image.Resampling.BILINEAR,
  'bicubic': Image.Resampling.BICUBIC,
  'lanczos': Image.Resampling.LANCZOS,
  'box': Image.Resampling.BOX,
  'hamming': Image.Resampling.HAMMING,
}


def resample_filter(name: str) -> Image.Resampling:
  try:
    return INTERPOLATIONS[name]
  except KeyError:
    raise ValueError(f'unknown interpolation {name!r}; choose one of {sorted(INTERPOLATIONS)}') from None


def _mode(channels: int) -> str:
  if channels == 1:
    return 'L'
  if channels == 3:
    return 'RGB'
  raise ValueError(f'channels must be 1 or 3, got {channels!r}')


class LazyImage:
  """An image not yet decoded: encoded bytes or a uint8 [H, W, C] array, to be read as PIL mode `mode`."""

  __slots__ = ('data', 'mode', '_pil')

  def __init__(self, data: bytes | np.ndarray, mode: str):
    self.data = data
    self.mode = mode
    self._pil = None

  def _open(self) -> Image.Image:
    if self._pil is None:
      if isinstance(self.data, np.ndarray):
        arr = self.data
        if arr.ndim == 3 and arr.shape[-1] == 1:
          arr = arr[..., 0]
        self._pil = Image.fromarray(np.ascontiguousarray(arr))
      else:
        self._pil = Image.open(io.BytesIO(self.data))
    return self._pil

  @property
  def size(self) -> tuple[int, int]:
    """(width, height), from the header only for encoded images."""
    if isinstance(self.data, np.ndarray):
      return int(self.data.shape[1]), int(self.data.shape[0])
    return self._open().size

  def crop_resize(self, box: Sequence[float], out_size: tuple[int, int], resample: Image.Resampling,
                  draft: bool = True) -> Image.Image:
    """Crops `box` (left, upper, right, lower in full-size pixels) and resizes it to `out_size` (w, h)."""
    img = self._open()
    left, upper, right, lower = box
    if draft and img.format == 'JPEG':
      # Smallest DCT scale at which the box still has at least out_size pixels.
      s = max(out_size[0] / max(right - left, 1e-6), out_size[1] / max(lower - upper, 1e-6))
      if s < 0.5:
        w, h = img.size
        img.draft(self.mode if self.mode in ('RGB', 'L') else None, (math.ceil(w * s), math.ceil(h * s)))
        sx, sy = img.size[0] / w, img.size[1] / h
        box = (left * sx, upper * sy, right * sx, lower * sy)
    img = _convert(img, self.mode)
    return img.resize(out_size, resample, box=tuple(float(b) for b in box))

  def pil(self) -> Image.Image:
    return _convert(self._open(), self.mode)


def _convert(img: Image.Image, mode: str) -> Image.Image:
  if img.mode == mode:
    return img
  if img.mode in ('RGBA', 'LA') or (img.mode == 'P' and 'transparency' in img.info):
    img = img.convert('RGBA')
    background = Image.new('RGBA', img.size, (255, 255, 255, 255))
    img = Image.alpha_composite(background, img)
  return img.convert(mode)


ImageLike = Union[LazyImage, Image.Image]
Op = Callable[[ImageLike, np.random.Generator], ImageLike]


def as_pil(img: ImageLike) -> Image.Image:
  return img.pil() if isinstance(img, LazyImage) else img


def _crop_resize(img: ImageLike, box, out_size, resample, draft) -> Image.Image:
  if isinstance(img, LazyImage):
    return img.crop_resize(box, out_size, resample, draft)
  return img.resize(out_size, resample, box=tuple(float(b) for b in box))


def _size2(size) -> tuple[int, int]:
  """(h, w) from an int or a pair."""
  if isinstance(size, int):
    return size, size
  h, w = size
  return int(h), int(w)


class RandomResizedCrop:
  """torchvision-style RandomResizedCrop: area fraction in `scale`, aspect ratio log-uniform in `ratio`.

  `subpixel=True` samples real-valued boxes (useful for tiny sources like 8x8 digits, where integer boxes only
  give a handful of distinct crops); otherwise boxes are integer like torchvision's.
  """

  def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation: str = 'bicubic',
               subpixel: bool = False, draft: bool = True):
    self.size = _size2(size)
    self.scale = (float(scale[0]), float(scale[1]))
    self.ratio = (float(ratio[0]), float(ratio[1]))
    if not 0 < self.scale[0] <= self.scale[1] <= 1:
      raise ValueError(f'crop scale must satisfy 0 < min <= max <= 1, got {scale!r}')
    if not 0 < self.ratio[0] <= self.ratio[1]:
      raise ValueError(f'crop ratio must satisfy 0 < min <= max, got {ratio!r}')
    self.resample = resample_filter(interpolation)
    self.subpixel = subpixel
    self.draft = draft

  def get_box(self, width: int, height: int, rng: np.random.Generator) -> tuple[float, float, float, float]:
    area = width * height
    log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
    (s0, s1), (r0, r1) = self.scale, log_ratio
    for _ in range(10):
      u_area, u_ratio, u_x, u_y = rng.random(4).tolist()  # one generator call per attempt
      target_area = area * (s0 + (s1 - s0) * u_area)
      aspect = math.exp(r0 + (r1 - r0) * u_ratio)
      w = math.sqrt(target_area * aspect)
      h = math.sqrt(target_area / aspect)
      if not self.subpixel:
        w, h = int(round(w)), int(round(h))
      if 0 < w <= width and 0 < h <= height:
        if self.subpixel:
          x0, y0 = u_x * (width - w), u_y * (height - h)
        else:  # uniform integer offset in [0, width - w]
          x0, y0 = min(int(u_x * (width - w + 1)), width - w), min(int(u_y * (height - h + 1)), height - h)
        return x0, y0, x0 + w, y0 + h
    # Fallback: central crop with the aspect ratio clamped into range.
    in_ratio = width / height
    if in_ratio < self.ratio[0]:
      w, h = width, int(round(width / self.ratio[0]))
    elif in_ratio > self.ratio[1]:
      w, h = int(round(height * self.ratio[1])), height
    else:
      w, h = width, height
    x0, y0 = (width - w) // 2, (height - h) // 2
    return x0, y0, x0 + w, y0 + h

  def __call__(self, img: ImageLike, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    box = self.get_box(w, h, rng)
    return _crop_resize(img, box, (self.size[1], self.size[0]), self.resample, self.draft)


class ResizeCenterCrop:
  """Eval transform: resize the shorter side to `size / crop_pct`, center-crop `size` (one box resize).

  crop_pct=0.875 with size 224 is the classic Resize(256) + CenterCrop(224); crop_pct=1 resizes the shorter
  side to `size` and crops the center square (a plain resize for square images).
  """

  def __init__(self, size, crop_pct: float = 0.875, interpolation: str = 'bicubic', draft: bool = True):
    self.size = _size2(size)
    if not 0 < crop_pct <= 1:
      raise ValueError(f'eval crop_pct must be in (0, 1], got {crop_pct!r}')
    self.crop_pct = float(crop_pct)
    self.resample = resample_filter(interpolation)
    self.draft = draft

  def get_box(self, width: int, height: int) -> tuple[float, float, float, float]:
    out_h, out_w = self.size
    resize_short = int(math.floor(min(out_h, out_w) / self.crop_pct))
    scale = resize_short / min(width, height)  # full-size pixels -> resized pixels
    new_w, new_h = width * scale, height * scale
    # The center crop in resized pixels, mapped back to full-size pixels.
    left = (new_w - out_w) / 2 / scale
    upper = (new_h - out_h) / 2 / scale
    return left, upper, left + out_w / scale, upper + out_h / scale

  def __call__(self, img: ImageLike, rng: np.random.Generator | None = None) -> Image.Image:
    del rng
    w, h = img.size
    return _crop_resize(img, self.get_box(w, h), (self.size[1], self.size[0]), self.resample, self.draft)



class RandomHorizontalFlip:
  def __init__(self, p: float = 0.5):
    self.p = float(p)

  def __call__(self, img: ImageLike, rng: np.random.Generator) -> Image.Image:
    img = as_pil(img)
    if rng.random() < self.p:
      return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


class Compose:
  """Runs `ops` on a record's raw image and returns a uint8 array [H, W, channels]."""

  def __init__(self, ops: Sequence[Op], channels: int):
    self.ops = list(ops)
    self.channels = int(channels)
    self.mode = _mode(self.channels)

  def __call__(self, raw: bytes | np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    img: ImageLike = LazyImage(raw, self.mode)
    for op in self.ops:
      img = op(img, rng)
    img = as_pil(img)
    if img.mode != self.mode:
      img = _convert(img, self.mode)
    w, h = img.size
    return np.frombuffer(img.tobytes(), np.uint8).reshape(h, w, self.channels)


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """uint8 [..., C] -> float32 (x / 255 - mean) / std, vectorized over a whole batch."""
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  scale = (1.0 / (255.0 * std)).astype(np.float32)
  offset = (-mean / std).astype(np.float32)
  out = images.astype(np.float32)
  out *= scale
  out += offset
  return out


def build_train_transform(cfg, channels: int) -> Compose:
  """The pre-training augmentation `cfg.augment`: 'rrc_flip' (MAE/SimMIM) or 'none' (= eval transform)."""
  name = cfg.get('augment', 'rrc_flip')
  if name == 'none':
    return build_eval_transform(cfg, channels)
  if name != 'rrc_flip':
    raise ValueError(f"unknown data.augment {name!r}; available: 'rrc_flip', 'none'")
  ops: list[Op] = [
    RandomResizedCrop(cfg.image_size, scale=cfg.crop_scale, ratio=cfg.crop_ratio,
                      interpolation=cfg.interpolation, subpixel=cfg.get('crop_subpixel', False),
                      draft=cfg.get('fast_decode', True)),
  ]
  if cfg.hflip:
    ops.append(RandomHorizontalFlip(0.5))
  return Compose(ops, channels)


def build_eval_transform(cfg, channels: int) -> Compose:
  return Compose(
    [ResizeCenterCrop(cfg.image_size, crop_pct=cfg.eval_crop_pct, interpolation=cfg.interpolation,
                      draft=cfg.get('fast_decode', True))],
    channels,
  )
