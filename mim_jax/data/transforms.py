"""Image transforms: per-record geometric/photometric ops on PIL images, and per-batch normalization in numpy.

A record's image arrives either as encoded bytes (JPEG/PNG from an ArrayRecord dataset) or as a uint8 array
`[H, W, C]`. It is wrapped in a `LazyImage`, whose size is known from the file header before any pixel is
decoded; a crop op (`RandomResizedCrop`, `ResizeCenterCrop`) picks its box on that size and then decodes only
as much as it needs: JPEGs are decoded at the smallest DCT scale that keeps the crop box at least as large as
the output (libjpeg-turbo scales by M/8 through simplejpeg, or by 1/2, 1/4, 1/8 through PIL's `draft`), and
the box is cropped and resized in one PIL call. See `LazyImage` and `data.decoder`.

An op is any callable `op(img, rng) -> img` where `img` is a `LazyImage` or a `PIL.Image.Image` and `rng` a
numpy `Generator` (the per-record generator grain hands to `random_map`; deterministic given the pipeline
seed). Ops that need pixels call `as_pil(img)`. `Compose(ops, channels)` runs them and returns uint8
`[size, size, channels]`. A new augmentation recipe (SimMIM, fine-tune RandAugment, color jitter, ...) is a
function `cfg -> [ops]` registered with `@register_augment('name')` and chosen with `data.augment='name'`.

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


try:  # Optional: libjpeg-turbo with every M/8 DCT scale (PIL's draft only has 1/2, 1/4, 1/8).
  import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - depends on the environment
  _simplejpeg = None

DECODERS = ('auto', 'simplejpeg', 'simplejpeg_fast', 'pil', 'pil_full')
_SIMPLEJPEG = ('simplejpeg', 'simplejpeg_fast')


def resolve_decoder(name: str) -> str:
  """'auto' -> 'simplejpeg' when installed, else 'pil'. Raises for unknown names or a missing simplejpeg."""
  if name not in DECODERS:
    raise ValueError(f'unknown decoder {name!r}; choose one of {DECODERS}')
  if name == 'auto':
    return 'simplejpeg' if _simplejpeg is not None else 'pil'
  if name in _SIMPLEJPEG and _simplejpeg is None:
    raise ValueError(f"decoder {name!r} needs `pip install simplejpeg` (or `pip install 'mim_jax[fast]'`; "
                     "or use decoder='auto' / 'pil')")
  return name


# CPU time of decoding a JPEG at scale M/8 relative to a full decode (libjpeg-turbo 3 through simplejpeg 1.9,
# x86-64, ~450x420 photos; benchmarks/input_pipeline.py --decode-costs re-measures them). Only 8/8, 4/8, 2/8 and
# 1/8 have SIMD inverse DCTs: 5/8-7/8 cost more than a full decode, and below 1/2 the entropy decoding dominates.
DCT_DECODE_COST = {1: 0.61, 2: 0.68, 3: 0.88, 4: 0.78, 5: 1.37, 6: 1.70, 7: 2.14, 8: 1.0}
# PIL's antialiased bicubic resize costs about this many full decodes per pixel of its (decoded) input box.
RESIZE_COST_PER_BOX_PIXEL = 4.0


def dct_eighths(width: int, height: int, need_width: int, need_height: int, box_fraction: float = 1.0) -> int:
  """M of the M/8 JPEG decoding scale for a crop that must keep at least `need_*` pixels per side.

  Among the scales that do not upsample the crop, the one with the least estimated decode + resize time:
  `DCT_DECODE_COST[M] + RESIZE_COST_PER_BOX_PIXEL * box_fraction * (M / 8) ** 2` in units of a full decode,
  where `box_fraction` is the crop's share of the image area. So a large crop is decoded at 5/8 or 6/8 (the
  slower decode pays for itself in a smaller resize), a small one at full size, and 7/8 practically never.
  """
  best, best_cost = 8, None
  for m in range(1, 9):
    if math.ceil(width * m / 8) >= need_width and math.ceil(height * m / 8) >= need_height:
      cost = DCT_DECODE_COST[m] + RESIZE_COST_PER_BOX_PIXEL * box_fraction * (m / 8) ** 2
      if best_cost is None or cost < best_cost:
        best, best_cost = m, cost
  return best


def is_jpeg(data: bytes) -> bool:
  return data[:3] == b'\xff\xd8\xff'


class LazyImage:
  """An image not yet decoded: encoded bytes or a uint8 [H, W, C] array, to be read as PIL mode `mode`.

  `decoder` chooses how JPEG bytes become pixels when a crop is requested:
    'pil_full'   PIL, full resolution (what a plain PyTorch/PIL loader does);
    'pil'        PIL with `draft`: libjpeg decodes at 1/2, 1/4 or 1/8 scale when the box stays >= the output;
    'simplejpeg' libjpeg-turbo via simplejpeg at the smallest M/8 scale that keeps the box >= the output
                 (e.g. 6/8 for a 300 px box resized to 224; see `dct_eighths`), straight into a 4-byte RGBX
                 buffer that PIL resizes in place (no copy into PIL, no RGB repacking of the large image);
    'simplejpeg_fast'  the same with libjpeg's fast integer IDCT and plain chroma upsampling (~45 dB PSNR
                 against the exact decode, a few % faster).
  Reduced-scale decoding low-passes in the DCT domain before the bicubic resize; it never upsamples the crop.
  Non-JPEG bytes and anything simplejpeg rejects (CMYK, corrupt data) fall back to PIL.
  """

  __slots__ = ('data', 'mode', 'decoder', '_pil', '_size')

  def __init__(self, data: bytes | np.ndarray, mode: str, decoder: str = 'pil'):
    self.data = data
    self.mode = mode
    self.decoder = decoder
    self._pil = None
    self._size = None

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
    if self._size is None:
      if isinstance(self.data, np.ndarray):
        self._size = int(self.data.shape[1]), int(self.data.shape[0])
      elif self.decoder in _SIMPLEJPEG and self._pil is None and is_jpeg(self.data):
        try:
          h, w, _, _ = _simplejpeg.decode_jpeg_header(self.data)
          self._size = int(w), int(h)
        except ValueError:
          self._size = self._open().size
      else:
        self._size = self._open().size
    return self._size

  def _decode_reduced(self, scale: float, box_fraction: float = 1.0) -> tuple[Image.Image, float, float] | None:
    """Decodes at >= `scale` of full size with the configured decoder; None when not applicable.

    `box_fraction` (the crop's share of the image area) lets simplejpeg pick the cheapest M/8 scale.
    simplejpeg results come back in mode 'RGBX' (or 'L'): PIL wraps the decoder's buffer without copying it.
    """
    w, h = self.size
    need_w, need_h = max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))
    if self.decoder in _SIMPLEJPEG and is_jpeg(self.data):
      m = dct_eighths(w, h, need_w, need_h, box_fraction)
      mode = 'L' if self.mode == 'L' else 'RGBX'  # PIL stores RGB as 4 bytes a pixel: RGBX is its own layout
      fast = self.decoder == 'simplejpeg_fast'
      try:
        arr = _simplejpeg.decode_jpeg(self.data, colorspace='GRAY' if mode == 'L' else 'RGBX', fastdct=fast,
                                      fastupsample=fast, min_width=math.ceil(w * m / 8),
                                      min_height=math.ceil(h * m / 8))
      except ValueError:
        return None  # e.g. CMYK or a damaged stream: let PIL handle it
      img = Image.frombuffer(mode, (arr.shape[1], arr.shape[0]), arr, 'raw', mode, 0, 1)
      return img, img.size[0] / w, img.size[1] / h
    if self.decoder == 'pil' and scale <= 0.5:
      img = self._open()
      if img.format == 'JPEG':
        img.draft(self.mode if self.mode in ('RGB', 'L') else None, (need_w, need_h))
        return img, img.size[0] / w, img.size[1] / h
    return None

  def decode_array(self, min_width: int, min_height: int) -> np.ndarray | None:
    """JPEG pixels as uint8 [h, w, C] (C = 1 for mode 'L', else 3), decoded at a reduced scale of at least
    min_width x min_height (simplejpeg: the smallest such M/8 scale; 'pil': draft's 1/2, 1/4, 1/8, or full);
    None when the data is not a JPEG or simplejpeg cannot decode it (the caller falls back to `pil()`)."""
    if isinstance(self.data, np.ndarray) or not is_jpeg(self.data):
      return None
    channels = 1 if self.mode == 'L' else 3
    if self.decoder in _SIMPLEJPEG:
      fast = self.decoder == 'simplejpeg_fast'
      try:
        return _simplejpeg.decode_jpeg(self.data, colorspace='GRAY' if channels == 1 else 'RGB', fastdct=fast,
                                       fastupsample=fast, min_width=min_width, min_height=min_height)
      except ValueError:
        return None
    img = self._open()
    if self.decoder == 'pil' and img.format == 'JPEG':
      img.draft(self.mode if self.mode in ('RGB', 'L') else None, (min_width, min_height))
    img = _convert(img, self.mode)
    return np.asarray(img).reshape(img.size[1], img.size[0], channels)

  def crop_resize(self, box: Sequence[float], out_size: tuple[int, int],
                  resample: Image.Resampling) -> Image.Image:
    """Crops `box` (left, upper, right, lower in full-size pixels) and resizes it to `out_size` (w, h)."""
    left, upper, right, lower = (float(b) for b in box)
    if not isinstance(self.data, np.ndarray) and self.decoder != 'pil_full':
      # The smallest scale at which the box still has at least out_size pixels.
      scale = max(out_size[0] / max(right - left, 1e-6), out_size[1] / max(lower - upper, 1e-6))
      w, h = self.size
      box_fraction = (right - left) * (lower - upper) / max(w * h, 1)
      reduced = self._decode_reduced(scale, box_fraction) if scale < 1 else None
      if reduced is None and self.decoder in _SIMPLEJPEG and is_jpeg(self.data):
        reduced = self._decode_reduced(1.0)  # full size, still via libjpeg-turbo's faster path
      if reduced is not None:
        img, sx, sy = reduced
        if img.mode != 'RGBX':  # RGBX resizes as is and is repacked once, at the output size
          img = _convert(img, self.mode)
        out = img.resize(out_size, resample, box=(left * sx, upper * sy, right * sx, lower * sy))
        return out if out.mode == self.mode else out.convert(self.mode)
    img = _convert(self._open(), self.mode)
    return img.resize(out_size, resample, box=(left, upper, right, lower))

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


def _crop_resize(img: ImageLike, box, out_size, resample) -> Image.Image:
  if isinstance(img, LazyImage):
    return img.crop_resize(box, out_size, resample)
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
               subpixel: bool = False):
    self.size = _size2(size)
    self.scale = (float(scale[0]), float(scale[1]))
    self.ratio = (float(ratio[0]), float(ratio[1]))
    if not 0 < self.scale[0] <= self.scale[1] <= 1:
      raise ValueError(f'crop scale must satisfy 0 < min <= max <= 1, got {scale!r}')
    if not 0 < self.ratio[0] <= self.ratio[1]:
      raise ValueError(f'crop ratio must satisfy 0 < min <= max, got {ratio!r}')
    self.resample = resample_filter(interpolation)
    self.subpixel = subpixel

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
    return _crop_resize(img, box, (self.size[1], self.size[0]), self.resample)


class ResizeCenterCrop:
  """Eval transform: resize the shorter side to `size / crop_pct`, center-crop `size` (one box resize).

  crop_pct=0.875 with size 224 is the classic Resize(256) + CenterCrop(224); crop_pct=1 resizes the shorter
  side to `size` and crops the center square (a plain resize for square images).
  """

  def __init__(self, size, crop_pct: float = 0.875, interpolation: str = 'bicubic'):
    self.size = _size2(size)
    if not 0 < crop_pct <= 1:
      raise ValueError(f'eval crop_pct must be in (0, 1], got {crop_pct!r}')
    self.crop_pct = float(crop_pct)
    self.resample = resample_filter(interpolation)

  def get_box(self, width: int, height: int) -> tuple[float, float, float, float]:
    """The center crop's box in source pixels, with torchvision's rounding of the resized size and offsets."""
    out_h, out_w = self.size
    short = int(math.floor(min(out_h, out_w) / self.crop_pct))
    if width <= height:
      new_w, new_h = short, int(short * height / width)
    else:
      new_w, new_h = int(short * width / height), short
    left = int(round((new_w - out_w) / 2.0))
    top = int(round((new_h - out_h) / 2.0))
    sx, sy = new_w / width, new_h / height  # resized pixels per source pixel
    return left / sx, top / sy, (left + out_w) / sx, (top + out_h) / sy

  def __call__(self, img: ImageLike, rng: np.random.Generator | None = None) -> Image.Image:
    del rng
    w, h = img.size
    return _crop_resize(img, self.get_box(w, h), (self.size[1], self.size[0]), self.resample)



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

  def __init__(self, ops: Sequence[Op], channels: int, decoder: str = 'auto'):
    self.ops = list(ops)
    self.channels = int(channels)
    self.mode = _mode(self.channels)
    self.decoder = resolve_decoder(decoder)

  def __call__(self, raw: bytes | np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    img: ImageLike = LazyImage(raw, self.mode, self.decoder)
    for op in self.ops:
      img = op(img, rng)
    return to_array(img, self.channels)


def to_array(img: ImageLike, channels: int) -> np.ndarray:
  """A uint8 ``[H, W, channels]`` array of ``img`` (converted to L or RGB as the pipeline does: transparency over
  white)."""
  img = as_pil(img)
  mode = _mode(channels)
  if img.mode != mode:
    img = _convert(img, mode)
  w, h = img.size
  return np.frombuffer(img.tobytes(), np.uint8).reshape(h, w, channels)


class Normalizer:
  """uint8 [H, W, C] -> float32 (x / 255 - mean) / std, as one multiply-add over contiguous rows."""

  def __init__(self, mean: Sequence[float], std: Sequence[float], shape: tuple[int, ...]):
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    self.shape = tuple(shape)
    width = self.shape[-2] * self.shape[-1]  # W * C, channels interleaved
    reps = width // len(mean)
    self.scale = np.tile((1.0 / (255.0 * std)).astype(np.float32), reps)
    self.offset = np.tile((-mean / std).astype(np.float32), reps)

  def __call__(self, image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    rows = image.reshape(-1, self.scale.shape[0])
    if out is None:
      out = np.empty(image.shape, np.float32)
    out_rows = out.reshape(rows.shape)
    np.multiply(rows, self.scale, out=out_rows, dtype=np.float32)
    out_rows += self.offset
    return out


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """uint8 [..., H, W, C] -> float32 (x / 255 - mean) / std (vectorized over any leading dims)."""
  return Normalizer(mean, std, images.shape[-3:])(images)


# ----------------------------------------------------------------------------------------------------------
# Augmentation recipes: name -> function(cfg) returning the ops. Register new ones (SimMIM, fine-tune
# RandAugment, ...) with @register_augment('name') and select them with data.augment = 'name'.

AUGMENTS: dict[str, Callable[..., list[Op]]] = {}


def register_augment(name: str):
  def deco(fn):
    if name in AUGMENTS:
      raise ValueError(f'augment {name!r} is already registered')
    AUGMENTS[name] = fn
    return fn

  return deco


@register_augment('rrc_flip')
def _rrc_flip(cfg) -> list[Op]:
  """MAE / SimMIM pre-training: RandomResizedCrop(scale, ratio, bicubic) + optional horizontal flip."""
  ops: list[Op] = [RandomResizedCrop(cfg.image_size, scale=cfg.crop_scale, ratio=cfg.crop_ratio,
                                     interpolation=cfg.interpolation,
                                     subpixel=cfg.get('crop_subpixel', False))]
  if cfg.hflip:
    ops.append(RandomHorizontalFlip(0.5))
  return ops


@register_augment('none')
def _eval_ops(cfg) -> list[Op]:
  """No augmentation: the eval resize + center crop."""
  return [ResizeCenterCrop(cfg.image_size, crop_pct=cfg.eval_crop_pct, interpolation=cfg.interpolation)]


def augments() -> dict[str, Callable[..., list[Op]]]:
  """Every registered recipe, the ones defined in other modules of mim_jax.data included."""
  from mim_jax.data import randaugment  # noqa: F401  (registers 'rrc_flip_randaug'; it imports this module)

  return AUGMENTS


def build_train_transform(cfg, channels: int) -> Compose:
  """The train transform named by `cfg.augment` (see AUGMENTS), decoding with `cfg.decoder`."""
  name = cfg.get('augment', 'rrc_flip')
  if name not in augments():
    raise ValueError(f'unknown data.augment {name!r}; registered: {sorted(AUGMENTS)}')
  return Compose(AUGMENTS[name](cfg), channels, decoder=cfg.get('decoder', 'auto'))


def build_eval_transform(cfg, channels: int) -> Compose:
  return Compose(_eval_ops(cfg), channels, decoder=cfg.get('decoder', 'auto'))
