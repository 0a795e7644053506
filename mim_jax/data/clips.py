"""Clips for video methods, host side, per record: synthetic moving sprites ('moving', below) or clips of a
converted video dataset ('stored', :mod:`mim_jax.data.videos`).

``data.clips.kind='moving'``: synthetic moving sprites, offline and exact. Each record of an image dataset (the
bundled digits, Fashion-MNIST) becomes a clip of ``data.num_frames`` frames of ``data.image_size`` px: the image,
resized to ``clips.sprite`` px, moves over a black canvas at a constant velocity, ``speed`` px per frame (drawn from
``clips.speeds``) in one of 8 directions (0 = right, then counter-clockwise in 45 degree steps; a diagonal step
moves one speed along each axis), starting where it stays whole on the canvas for the whole clip. The clip carries
two labels: ``label`` (the image's class, appearance; or the direction when ``clips.label='direction'``) and
``direction`` (dynamics), so one set of clips feeds both probes.

Determinism: a training clip is drawn from the record's generator (the pipeline keys it on the seed and the
example's index: a resumed run draws the same clips); an evaluation clip (no generator) from a generator seeded by
the record's pixels and ``clips.eval_seed``, so every evaluation of a split sees the same clips.

Kept free of jax: grain worker processes import this module.
"""

from __future__ import annotations

import zlib

import ml_collections
import numpy as np

from mim_jax.data import transforms
from mim_jax.data.batch import Field

KINDS = ('moving', 'stored')
LABELS = ('class', 'direction')
# (dx, dy) per direction, image coordinates (y down): right, up-right, up, up-left, left, down-left, down, down-right
DIRECTIONS = ((1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1))


def default_clip_config() -> ml_collections.ConfigDict:
  """``config.data.clips``: how a record becomes a clip (see the module docstring)."""
  c = ml_collections.ConfigDict()
  c.kind = 'moving'
  c.sprite = 16  # px: the record's image is resized to this square before it moves
  c.speeds = (1, 2)  # px per frame, drawn uniformly per clip
  c.label = 'class'  # what 'label' holds: 'class' (appearance) | 'direction' (dynamics)
  c.eval_seed = 0
  # 'stored' (a dataset converted by mim_jax.data.videos): frames `stride` stored frames apart (VideoMAE's sampling
  # rate) and the training crop's side as a fraction of the shorter side.
  c.stride = 4
  c.crop_scale = (0.5, 1.0)
  c.test_views = (1, 1)  # fine-tuning's evaluation views of a stored video: (temporal segments, spatial crops)
  return c


def clip_fields(clip_shape: tuple[int, int, int, int]) -> dict[str, Field]:
  """``video`` ``[T, H, W, C]`` pixels, ``label`` and ``direction``."""
  return {'video': Field(tuple(clip_shape), 'float32', pixels=True), 'label': Field((), 'int32'),
          'direction': Field((), 'int32')}


def moving_clip(sprite: np.ndarray, frames: int, canvas: int, direction: int, speed: int,
                rng: np.random.Generator) -> np.ndarray:
  """``sprite`` (uint8 ``[s, s, C]``) moving over a black ``canvas`` px square for ``frames`` frames: uint8
  ``[frames, canvas, canvas, C]``. The start is uniform over the positions that keep it whole throughout."""
  s, c = sprite.shape[0], sprite.shape[-1]
  dx, dy = (d * speed for d in DIRECTIONS[direction])
  travel = frames - 1
  lo_x, hi_x = max(0, -dx * travel), canvas - s - max(0, dx * travel)
  lo_y, hi_y = max(0, -dy * travel), canvas - s - max(0, dy * travel)
  if hi_x < lo_x or hi_y < lo_y:
    raise ValueError(f'a {s} px sprite moving {speed} px per frame for {frames} frames does not fit a {canvas} px '
                     'canvas; lower data.clips.sprite or the speeds, or raise data.image_size.')
  x0, y0 = int(rng.integers(lo_x, hi_x + 1)), int(rng.integers(lo_y, hi_y + 1))
  clip = np.zeros((frames, canvas, canvas, c), np.uint8)
  for t in range(frames):
    x, y = x0 + t * dx, y0 + t * dy
    clip[t, y:y + s, x:x + s] = sprite
  return clip


class MovingClipRecord:
  """record -> {'video', 'label', 'direction'} (see the module docstring)."""

  def __init__(self, clips: ml_collections.ConfigDict, frames: int, canvas: int, channels: int, image_key: str,
               label_key: str | None, interpolation: str = 'bicubic'):
    if clips.kind not in KINDS:
      raise ValueError(f'data.clips.kind must be one of {KINDS}, got {clips.kind!r}.')
    if clips.label not in LABELS:
      raise ValueError(f'data.clips.label must be one of {LABELS}, got {clips.label!r}.')
    self.frames, self.canvas, self.channels = int(frames), int(canvas), int(channels)
    self.sprite, self.speeds = int(clips.sprite), tuple(int(v) for v in clips.speeds)
    self.label, self.eval_seed = clips.label, int(clips.eval_seed)
    self.image_key, self.label_key = image_key, label_key
    self.mode = 'L' if channels == 1 else 'RGB'
    self.resample = transforms.resample_filter(interpolation)
    worst = max(self.speeds) * (self.frames - 1)
    if self.sprite + worst > self.canvas:
      raise ValueError(f'a {self.sprite} px sprite moving up to {max(self.speeds)} px per frame for {self.frames} '
                       f'frames does not fit a {self.canvas} px canvas; lower data.clips.sprite or the speeds, or '
                       'raise data.image_size.')

  def __call__(self, record, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    raw = record[self.image_key]
    img = transforms.LazyImage(raw, self.mode).pil().resize((self.sprite, self.sprite), self.resample)
    sprite = np.asarray(img, np.uint8).reshape(self.sprite, self.sprite, self.channels)
    if rng is None:  # evaluation: the same clip for this image every time
      rng = np.random.default_rng([self.eval_seed, zlib.crc32(sprite.tobytes())])
    direction = int(rng.integers(len(DIRECTIONS)))
    speed = self.speeds[int(rng.integers(len(self.speeds)))]
    clip = moving_clip(sprite, self.frames, self.canvas, direction, speed, rng)
    cls = int(record[self.label_key]) if self.label_key is not None else -1
    return {'video': clip, 'label': np.int32(direction if self.label == 'direction' else cls),
            'direction': np.int32(direction)}


def clip_record_transform(data_cfg, source, train: bool = False):
  """The record transform a video method hands the pipeline (``source``: :class:`~mim_jax.data.pipeline.
  RecordSource`): synthetic moving sprites from an image dataset ('moving', the same for training and evaluation)
  or clips of a converted video dataset ('stored', :mod:`mim_jax.data.videos`)."""
  clips = data_cfg.get('clips', None) or default_clip_config()
  if clips.get('kind', 'moving') == 'stored':
    from mim_jax.data.videos import StoredClipRecord

    return StoredClipRecord(data_cfg.get('num_frames', 16), clips.get('stride', 4), data_cfg.image_size,
                            source.channels, clips.get('crop_scale', (0.5, 1.0)), train, source.label_key,
                            data_cfg.get('interpolation', 'bicubic'), clips.get('test_views', (1, 1)))
  return MovingClipRecord(clips, data_cfg.get('num_frames', 16), data_cfg.image_size, source.channels,
                          source.image_key, source.label_key, data_cfg.get('interpolation', 'bicubic'))
