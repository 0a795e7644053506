"""Realistic JPEG photos made offline from the sample photos that installed packages ship.

Used by the input-pipeline benchmark and the converter tests: real photographs (scikit-learn's china/flower,
scikit-image's astronaut/coffee/chelsea/rocket/..., matplotlib's grace_hopper), randomly cropped, resized to
ImageNet-typical sizes (about 500x375, either orientation) and re-encoded at ImageNet-typical JPEG qualities
(75-95).
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image

# (width, height) of common ImageNet train images; each is jittered a little.
IMAGENET_LIKE_SIZES = ((500, 375), (375, 500), (500, 333), (333, 500), (500, 400), (400, 500), (500, 500),
                       (640, 480), (450, 300))
_SKIMAGE_PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket', 'hubble_deep_field', 'immunohistochemistry',
                   'retina')


def source_photos() -> list[np.ndarray]:
  """RGB uint8 photos bundled with scikit-learn, scikit-image (if installed) and matplotlib; no network."""
  photos = []
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    try:
      from sklearn.datasets import load_sample_images

      photos.extend(load_sample_images().images)
    except Exception:  # noqa: BLE001 - any failure just means fewer photos
      pass
    try:
      import skimage.data

      for name in _SKIMAGE_PHOTOS:
        try:
          img = getattr(skimage.data, name)()
        except Exception:  # noqa: BLE001 - some need a download; skip those
          continue
        if img.ndim == 3 and img.shape[-1] == 3 and img.dtype == np.uint8:
          photos.append(img)
    except ImportError:
      pass
    try:
      from matplotlib import cbook

      with cbook.get_sample_data('grace_hopper.jpg') as f:
        photos.append(np.asarray(Image.open(f).convert('RGB')))
    except Exception:  # noqa: BLE001
      pass
  if not photos:
    raise RuntimeError('no sample photos found (need scikit-learn, scikit-image or matplotlib installed)')
  return [np.ascontiguousarray(p) for p in photos]


def random_photo(photos: list[np.ndarray], rng: np.random.Generator, size: tuple[int, int] | None = None,
                 size_scale: float = 1.0) -> Image.Image:
  """A random crop of a random photo, resized to `size` (w, h) or a jittered ImageNet-like size x size_scale."""
  src = photos[int(rng.integers(len(photos)))]
  if size is None:
    w, h = IMAGENET_LIKE_SIZES[int(rng.integers(len(IMAGENET_LIKE_SIZES)))]
    jitter = rng.uniform(0.85, 1.1) * size_scale
    w, h = max(16, int(w * jitter)), max(16, int(h * jitter))
  else:
    w, h = size
  sh, sw = src.shape[:2]
  # Largest crop with the target aspect ratio, then a random 55-100% of it.
  aspect = w / h
  cw, ch = (sw, int(sw / aspect)) if sw / sh < aspect else (int(sh * aspect), sh)
  f = rng.uniform(0.55, 1.0)
  cw, ch = max(8, int(cw * f)), max(8, int(ch * f))
  x0, y0 = int(rng.integers(0, sw - cw + 1)), int(rng.integers(0, sh - ch + 1))
  img = Image.fromarray(src[y0:y0 + ch, x0:x0 + cw])
  if rng.random() < 0.5:
    img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  return img.resize((w, h), Image.Resampling.BICUBIC)


def jpeg_bytes(img: Image.Image, quality: int) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format='JPEG', quality=int(quality))
  return buf.getvalue()


def write_jpeg_folder(out_dir: str, num_images: int, seed: int = 0, num_classes: int = 0,
                      quality_range: tuple[int, int] = (75, 95),
                      size: tuple[int, int] | None = None, size_scale: float = 1.0) -> list[str]:
  """Writes `num_images` realistic JPEGs under `out_dir` (in `class_k/` subfolders if num_classes > 0)."""
  rng = np.random.default_rng(seed)
  photos = source_photos()
  paths = []
  for i in range(num_images):
    folder = os.path.join(out_dir, f'class_{i % num_classes}') if num_classes else out_dir
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f'img_{i:05d}.jpg')
    q = int(rng.integers(quality_range[0], quality_range[1] + 1))
    with open(path, 'wb') as f:
      f.write(jpeg_bytes(random_photo(photos, rng, size, size_scale), q))
    paths.append(path)
  return paths
