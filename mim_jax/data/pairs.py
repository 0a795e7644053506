"""Two views of one scene for the two-view methods (CropMAE, CroCo): host side, per record, deterministic given
the record's generator (the pipeline keys it on the seed and the example's global position, so a resumed run
draws the same pairs).

Convention: ``view1`` is the view the model reconstructs (masked), ``view2`` the reference it sees whole.

Pair kinds (``config.pairs.kind``):

* ``global_to_local`` (CropMAE's default): a RandomResizedCrop of the image (the *global* view, the reference),
  then a RandomResizedCrop *of that crop*, resized to full size (the *local* view, reconstructed), each
  flipped on its own; ``local_to_global`` swaps the roles; ``random_views``: two independent global crops;
  ``same_views``: one crop twice.
* ``homography``: two random perspective warps of one image (every corner of a random crop moved by up to
  ``jitter`` of its side), CroCo-style synthetic multi-view with a known dense correspondence. The record also
  carries ``homography``: the 3x3 map from ``view1`` pixel coordinates to ``view2``'s (pixel centres at
  ``i + 0.5``), so evaluations can score patch correspondences against the truth.

* ``stereo``: real stereo windows (:func:`stereo_window_pair`) from the records of the bundled ``mim_stereo``
  dataset (scikit-image's rectified ``stereo_motorcycle``: left, right, disparity; :mod:`mim_jax.data.stereo`):
  a left window (``view1``) and the right window shifted by its median disparity (``view2``), so they overlap.

Kept free of jax: grain worker processes import this module.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
import numpy as np
from PIL import Image

from mim_jax.data import transforms
from mim_jax.data.batch import Field

CROP_KINDS = ('global_to_local', 'local_to_global', 'random_views', 'same_views')
KINDS = CROP_KINDS + ('homography', 'stereo')


def default_pair_config() -> ml_collections.ConfigDict:
  """``config.pairs``: how a record becomes two views (see the module docstring)."""
  c = ml_collections.ConfigDict()
  c.kind = 'global_to_local'
  c.global_scale = (0.10, 1.0)  # CropMAE's global crop (train_cropmae_in.sh)
  c.local_scale = (0.3, 0.6)  # its local crop, as a fraction of the global crop
  c.ratio = (3 / 4, 4 / 3)
  c.hflip = True  # each view flipped on its own (p = 0.5); digits set False
  c.jitter = 0.15  # homography: corner displacement, as a fraction of the crop side
  c.stereo_side = (96, 192)  # stereo: the source window's side in pixels, uniform in this range
  return c


def pair_fields(image_shape: tuple[int, int, int], homography: bool = False) -> dict[str, Field]:
  """``view1`` (reconstructed) and ``view2`` (reference) pixels and the ``label`` (plus the 3x3 ``homography``
  from view1 to view2 pixel coordinates when asked)."""
  fields = {'view1': Field(tuple(image_shape), 'float32', pixels=True),
            'view2': Field(tuple(image_shape), 'float32', pixels=True), 'label': Field((), 'int32')}
  if homography:
    fields['homography'] = Field((3, 3), 'float32')
  return fields


class CropPair:
  """Raw image -> ``{'view1', 'view2'}`` uint8 ``[size, size, C]`` by one of :data:`CROP_KINDS`.

  The local view is cropped from the *resized* global view, as CropMAE's GlobalToLocal does (two resamplings, so
  the local view is no sharper than the global one)."""

  def __init__(self, kind: str, size: int, global_scale, local_scale, ratio, hflip: bool, channels: int,
               interpolation: str = 'bicubic', subpixel: bool = False, decoder: str = 'auto'):
    if kind not in CROP_KINDS:
      raise ValueError(f'pairs.kind {kind!r} is not a crop pair; crop pairs: {CROP_KINDS}.')
    self.kind = kind
    self.global_crop = transforms.RandomResizedCrop(size, global_scale, ratio, interpolation, subpixel)
    self.local_crop = transforms.RandomResizedCrop(size, local_scale, ratio, interpolation, subpixel)
    self.flip = transforms.RandomHorizontalFlip(0.5 if hflip else 0.0)
    self.channels = int(channels)
    self.mode = 'L' if self.channels == 1 else 'RGB'
    self.decoder = transforms.resolve_decoder(decoder)

  def __call__(self, raw, rng: np.random.Generator) -> dict[str, np.ndarray]:
    img = transforms.LazyImage(raw, self.mode, self.decoder)
    first = self.global_crop(img, rng)
    if self.kind == 'same_views':
      second = first
    elif self.kind == 'random_views':
      second = self.global_crop(img, rng)
    else:
      second = self.local_crop(first, rng)
    first, second = self.flip(first, rng), self.flip(second, rng)
    if self.kind == 'same_views':
      second = first
    a, b = transforms.to_array(first, self.channels), transforms.to_array(second, self.channels)
    # (reference, reconstructed): the global view is the reference in every kind but local_to_global.
    reference, target = (b, a) if self.kind == 'local_to_global' else (a, b)
    return {'view1': target, 'view2': reference}


# ----------------------------------------------------------------------------------------------------------
# Homography pairs


def homography_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """The 3x3 ``H`` with ``H @ [x, y, 1] ~ [x', y', 1]`` for four point pairs ``src`` -> ``dst`` ``[4, 2]``
  (the direct linear transform with ``H[2, 2] = 1``, solved in float64)."""
  a, b = [], []
  for (x, y), (u, v) in zip(np.asarray(src, np.float64), np.asarray(dst, np.float64)):
    a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
    a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    b.extend([u, v])
  h = np.linalg.solve(np.asarray(a), np.asarray(b))
  return np.append(h, 1.0).reshape(3, 3)


def apply_homography(h: np.ndarray, points: np.ndarray) -> np.ndarray:
  """``points`` ``[..., 2]`` (x, y) mapped by ``h``."""
  pts = np.asarray(points, np.float64)
  homog = np.concatenate([pts, np.ones(pts.shape[:-1] + (1,))], axis=-1) @ np.asarray(h, np.float64).T
  return homog[..., :2] / homog[..., 2:]


def random_view_homography(width: int, height: int, size: int, scale, ratio, jitter: float,
                           rng: np.random.Generator) -> np.ndarray:
  """``H`` from a ``size x size`` view's pixel coordinates to the source image's: a RandomResizedCrop box whose
  four corners are then moved independently by up to ``jitter`` of the box side (clipped to the image)."""
  x0, y0, x1, y1 = transforms.RandomResizedCrop(size, scale, ratio, subpixel=True).get_box(width, height, rng)
  bw, bh = x1 - x0, y1 - y0
  corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)
  corners += rng.uniform(-jitter, jitter, (4, 2)) * np.array([bw, bh])
  corners = np.clip(corners, 0.0, [width, height])
  view = np.array([[0, 0], [size, 0], [size, size], [0, size]], np.float64)
  return homography_from_points(view, corners)


def warp(img: Image.Image, view_to_source: np.ndarray, size: int, interpolation: str) -> Image.Image:
  """The ``size x size`` view whose pixel (x, y) shows the source at ``view_to_source @ (x, y, 1)``."""
  h = np.asarray(view_to_source, np.float64) / view_to_source[2, 2]
  return img.transform((size, size), Image.Transform.PERSPECTIVE, tuple(h.reshape(-1)[:8]),
                       transforms.resample_filter(interpolation))


class HomographyPair:
  """Raw image -> ``{'view1', 'view2', 'homography'}``: two random perspective views of it and the map from
  view1 to view2 pixel coordinates (``H2^-1 @ H1``)."""

  def __init__(self, size: int, scale, ratio, jitter: float, channels: int, interpolation: str = 'bicubic',
               decoder: str = 'auto'):
    if not 0.0 <= jitter < 0.5:
      raise ValueError(f'pairs.jitter must be in [0, 0.5) (a fraction of the crop side), got {jitter!r}.')
    self.size, self.scale, self.ratio, self.jitter = int(size), scale, ratio, float(jitter)
    self.channels = int(channels)
    self.mode = 'L' if self.channels == 1 else 'RGB'
    self.interpolation = interpolation
    self.decoder = transforms.resolve_decoder(decoder)

  def __call__(self, raw, rng: np.random.Generator) -> dict[str, np.ndarray]:
    img = transforms.LazyImage(raw, self.mode, self.decoder).pil()
    w, h = img.size
    h1, h2 = (random_view_homography(w, h, self.size, self.scale, self.ratio, self.jitter, rng) for _ in range(2))
    views = [transforms.to_array(warp(img, m, self.size, self.interpolation), self.channels) for m in (h1, h2)]
    one_to_two = np.linalg.inv(h2) @ h1
    return {'view1': views[0], 'view2': views[1], 'homography': (one_to_two / one_to_two[2, 2]).astype(np.float32)}


# ----------------------------------------------------------------------------------------------------------
# The record transform and real stereo windows


class PairRecord:
  """Stored record -> the pair fields and the label (module level so grain workers can unpickle it)."""

  def __init__(self, make_pair, image_key: str, label_key: str | None, keep_homography: bool):
    self.make_pair = make_pair
    self.image_key = image_key
    self.label_key = label_key
    self.keep_homography = keep_homography

  def __call__(self, record: dict[str, Any], rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    if rng is None:
      raise ValueError('pair transforms are random: they need the per-record generator the pipeline passes.')
    out = self.make_pair(record if getattr(self.make_pair, 'whole_record', False) else record[self.image_key], rng)
    if not self.keep_homography:
      out.pop('homography', None)
    out['label'] = np.int32(record[self.label_key] if self.label_key is not None else -1)
    return out


class StereoPair:
  """A stereo record (``image`` = left, ``image_right``, ``disparity``, ``x_range``; the ``mim_stereo`` dataset) ->
  ``{'view1': left window, 'view2': the disparity-aligned right window}``, the left window inside ``x_range``."""

  whole_record = True

  def __init__(self, size: int, side_range, channels: int):
    self.size = int(size)
    self.side_range = (int(side_range[0]), int(side_range[1]))
    if not 0 < self.side_range[0] <= self.side_range[1]:
      raise ValueError(f'pairs.stereo_side must be (min, max) pixels with 0 < min <= max, got {side_range!r}.')
    self.channels = int(channels)

  def __call__(self, record, rng: np.random.Generator) -> dict[str, np.ndarray]:
    missing = [k for k in ('image', 'image_right', 'disparity', 'x_range') if k not in record]
    if missing:
      raise ValueError(f"pairs.kind='stereo' needs stereo records (the mim_stereo dataset); this one lacks {missing}.")
    side = int(rng.integers(self.side_range[0], self.side_range[1] + 1))
    win = stereo_window_pair(np.asarray(record['image']), np.asarray(record['image_right']),
                             np.asarray(record['disparity']), self.size, side, rng,
                             x_range=tuple(int(v) for v in record['x_range']))
    return {k: transforms.to_array(Image.fromarray(getattr(win, k)), self.channels) for k in ('view1', 'view2')}


def pair_record_transform(pairs: ml_collections.ConfigDict, data_cfg, source, keep_homography: bool = False):
  """The record transform a two-view method hands the pipeline: ``pairs`` (:func:`default_pair_config`) at the
  data config's size, interpolation and decoder (``source``: :class:`mim_jax.data.pipeline.RecordSource`)."""
  kind = pairs.kind
  if kind not in KINDS:
    raise ValueError(f'pairs.kind must be one of {KINDS}, got {kind!r}.')
  common = dict(channels=source.channels, interpolation=data_cfg.interpolation, decoder=data_cfg.get('decoder', 'auto'))
  if kind == 'stereo':
    make = StereoPair(data_cfg.image_size, pairs.stereo_side, source.channels)
  elif kind == 'homography':
    make = HomographyPair(data_cfg.image_size, pairs.global_scale, pairs.ratio, pairs.jitter, **common)
  else:
    make = CropPair(kind, data_cfg.image_size, pairs.global_scale, pairs.local_scale, pairs.ratio, pairs.hflip,
                    subpixel=data_cfg.get('crop_subpixel', False), **common)
  if keep_homography and kind != 'homography':
    raise ValueError(f"only pairs.kind='homography' has a known correspondence (got {kind!r}).")
  return PairRecord(make, source.image_key, source.label_key, keep_homography)


@dataclasses.dataclass(frozen=True)
class StereoWindow:
  view1: np.ndarray  # the left window, uint8 [size, size, C]
  view2: np.ndarray  # the right window at the disparity-shifted place
  disparity: float  # the median disparity (pixels) of the left window, by which the right one is shifted
  box: tuple[int, int, int]  # (x, y, side) of the left window


def _resized(window: np.ndarray, size: int) -> np.ndarray:
  return np.asarray(Image.fromarray(window).resize((size, size), Image.Resampling.BICUBIC))


def stereo_window_pair(left: np.ndarray, right: np.ndarray, disparity: np.ndarray, size: int, side: int,
                       rng: np.random.Generator, min_valid: float = 0.5,
                       x_range: tuple[int, int] | None = None) -> StereoWindow:
  """Aligned windows of a rectified stereo pair: a random ``side x side`` window of the left image (inside columns
  ``x_range`` when given) and the right image's window at ``x - d``, ``d`` the median finite disparity inside it (a
  pixel at left x sits at right x - d), both resized to ``size``. Windows with under ``min_valid`` finite
  disparities, or whose twin leaves the right image, are redrawn."""
  hgt, wid = left.shape[:2]
  x_lo, x_hi = x_range if x_range is not None else (0, wid)
  if left.shape != right.shape or disparity.shape != (hgt, wid):
    raise ValueError(f'stereo pair shapes disagree: left {left.shape}, right {right.shape}, disparity '
                     f'{disparity.shape}.')
  if not 0 < side <= min(hgt, x_hi - x_lo):
    raise ValueError(f'window side {side} does not fit the {wid}x{hgt} images (columns {x_lo}..{x_hi}).')
  for _ in range(100):
    x, y = int(rng.integers(x_lo, x_hi - side + 1)), int(rng.integers(0, hgt - side + 1))
    d = disparity[y:y + side, x:x + side]
    finite = d[np.isfinite(d)]
    if finite.size < min_valid * d.size:
      continue
    shift = float(np.median(finite))
    xr = int(round(x - shift))
    if 0 <= xr <= wid - side:
      return StereoWindow(_resized(left[y:y + side, x:x + side], size), _resized(right[y:y + side, xr:xr + side], size),
                          shift, (x, y, side))
  raise ValueError(f'no {side}px window with {min_valid:.0%} finite disparity whose shifted twin fits the right '
                   'image in 100 draws; use a smaller side.')


def stereo_motorcycle() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """scikit-image's real rectified stereo pair (left, right uint8 [500, 741, 3]; disparity float32, inf where
  unknown), bundled with the package (no download)."""
  try:
    from skimage import data
  except ImportError as e:
    raise ImportError('the stereo pair comes with scikit-image: pip install scikit-image') from e
  return data.stereo_motorcycle()
