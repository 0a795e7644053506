"""Video folder -> tfds ArrayRecord dataset of JPEG frames, without TensorFlow; and the clips read from it.

    python -m mim_jax.data.videos --src DIR --out DATA_DIR [--name NAME] [--short-side 128] [--every 1]
        [--max-frames 600] [--val-fraction 0.05] [--seed 0] [--quality 90]

Layouts of ``--src`` are those of the image converter (``mim_jax.data.prepare``): ``train/`` + ``val/`` with class
folders, class folders (a seeded, stratified ``--val-fraction`` becomes ``validation``), or unlabelled files. Each
file is decoded once with PyAV (``pip install av``; ffmpeg inside the wheel), keeping every ``--every``-th frame
(at most ``--max-frames``), resized so the shorter side is ``--short-side`` px (never upsampled) and stored as JPEG
frames. Files PyAV cannot read are skipped and listed in ``DATA_DIR/NAME_prepare_report.json``.

Features: ``frames`` (the JPEG frames concatenated, uint8) with ``frame_offsets`` (int64, ``n + 1``: frame ``i`` is
``frames[offsets[i]:offsets[i + 1]]``), ``image`` (the middle frame, JPEG: what image tools read), ``label``
(ClassLabel, when labelled), ``file_name``, ``fps`` (of the stored frames).

Clips (``data.clips.kind='stored'``, :class:`StoredClipRecord`): ``data.num_frames`` frames ``clips.stride``
stored frames apart (VideoMAE's sampling rate; a video too short for the span repeats its last frame), from a
uniform start when training and the centred one when evaluating; one crop box for all frames (training: a random
square of ``clips.crop_scale`` of the shorter side; evaluation: the centre square), resized to
``data.image_size``. Fine-tuning's multi-view testing (``clips.test_views`` = (segments, crops), VideoMAE's 5 x 3 on
Kinetics) gives ``segments x crops`` clips per video: starts evenly spread over the video, crops spread along its
long side; the classifier averages their softmax.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from mim_jax.data import transforms

DEFAULT_VERSION = '1.0.0'


def _require_av():
  try:
    import av
  except ImportError:
    raise ImportError('reading video files needs PyAV: pip install av (or pip install -e ".[video]").') from None
  return av


def decode_video(path: str, short_side: int = 128, every: int = 1, max_frames: int = 600) -> tuple[list, float]:
  """``(frames, fps)``: RGB uint8 frames of ``path`` (every ``every``-th, at most ``max_frames``), the shorter side
  resized to ``short_side`` when larger, and the stored frames' rate."""
  av = _require_av()
  frames = []
  with av.open(path) as container:
    stream = container.streams.video[0]
    rate = float(stream.average_rate or stream.guessed_rate or 0.0)
    for i, frame in enumerate(container.decode(stream)):
      if i % every:
        continue
      img = frame.to_image()  # PIL RGB
      w, h = img.size
      if min(w, h) > short_side:
        scale = short_side / min(w, h)
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
      frames.append(img)
      if len(frames) >= max_frames:
        break
  if not frames:
    raise ValueError('no video frames decoded')
  return frames, rate / every


def _jpeg(img: Image.Image, quality: int) -> bytes:
  buf = io.BytesIO()
  img.save(buf, 'JPEG', quality=quality)
  return buf.getvalue()


def encode_record(path: str, short_side: int, every: int, max_frames: int, quality: int) -> dict[str, Any]:
  frames, fps = decode_video(path, short_side, every, max_frames)
  jpegs = [_jpeg(f, quality) for f in frames]
  offsets = np.concatenate([[0], np.cumsum([len(j) for j in jpegs])]).astype(np.int64)
  return {'frames': np.frombuffer(b''.join(jpegs), np.uint8), 'frame_offsets': offsets,
          'image': jpegs[len(jpegs) // 2], 'fps': np.float32(fps)}


def prepare_videos(src: str, out: str, name: str | None = None, short_side: int = 128, every: int = 1,
                   max_frames: int = 600, val_fraction: float = 0.05, seed: int = 0, quality: int = 90,
                   progress: bool = True) -> str:
  """Converts a folder of videos (see the module docstring); returns the dataset directory."""
  import tensorflow_datasets as tfds

  from mim_jax.data import prepare
  from mim_jax.data.builders import LocalBuilder, build_once

  _require_av()
  for flag, value in (('--short-side', short_side), ('--every', every), ('--max-frames', max_frames)):
    if int(value) < 1:
      raise ValueError(f'{flag} must be a positive integer, got {value}.')
  name = name or prepare.default_name(src)
  scanned = prepare.scan(src, val_fraction, seed)
  if not any(scanned.splits.values()):
    raise ValueError(f'no files found under {src}.')
  skipped: list[dict[str, str]] = [{'file': f, 'reason': r} for f, r in scanned.skipped]
  written: dict[str, int] = {}
  features = {'frames': tfds.features.Tensor(shape=(None,), dtype=np.uint8),
              'frame_offsets': tfds.features.Tensor(shape=(None,), dtype=np.int64),
              'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
              'fps': tfds.features.Scalar(dtype=np.float32), 'file_name': tfds.features.Text()}
  if scanned.class_names is not None:
    features['label'] = tfds.features.ClassLabel(names=scanned.class_names)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description=f'Videos converted from {src} by mim_jax.data.videos ({scanned.layout}).',
        features=tfds.features.FeaturesDict(features), disable_shuffling=True,
        metadata=tfds.core.MetadataDict({'video': {'short_side': short_side, 'every': every,
                                                   'max_frames': max_frames, 'quality': quality}}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split, items) for split, items in scanned.splits.items() if items}

  def _generate_examples(self, split, items):
    done = 0
    rows = items
    if progress:
      from tqdm import tqdm

      rows = tqdm(items, desc=f'{name} {split}', unit='video', dynamic_ncols=True, disable=not sys.stderr.isatty())
    for i, (rel, label) in enumerate(rows):
      try:
        example = encode_record(os.path.join(src, rel), short_side, every, max_frames, quality)
      except Exception as e:  # noqa: BLE001 - any unreadable file is skipped and reported, not fatal
        skipped.append({'file': rel, 'split': split, 'reason': f'{type(e).__name__}: {e}'.strip()})
        continue
      example['file_name'] = rel
      if scanned.class_names is not None:
        example['label'] = label
      done += 1
      yield f'{i:010d}', example  # stored in the scan's seeded order
    written[split] = done

  builder_cls = type(prepare._camel(name), (LocalBuilder,),
                     {'name': name, 'VERSION': tfds.core.Version(DEFAULT_VERSION), '_info': _info,
                      '_split_generators': _split_generators, '_generate_examples': _generate_examples,
                      '__module__': __name__}, skip_registration=True)
  path = build_once(out, name, DEFAULT_VERSION, lambda: builder_cls(data_dir=out, file_format='array_record'))
  if written:
    with open(os.path.join(out, f'{name}_prepare_report.json'), 'w') as f:
      json.dump({'src': os.path.abspath(src), 'written': written, 'skipped': skipped}, f, indent=1)
    print(f'{name}: {written} videos written to {path}; {len(skipped)} skipped'
          + (f' (see {out}/{name}_prepare_report.json)' if skipped else ''))
  return path


def clip_indices(num_frames: int, frames: int, stride: int, start: int | None) -> np.ndarray:
  """The stored-frame indices of a clip: ``frames`` indices ``stride`` apart from ``start`` (None: centred),
  clamped to the last frame when the video is too short."""
  span = (frames - 1) * stride + 1
  if start is None:
    start = max(0, (num_frames - span) // 2)
  return np.minimum(start + stride * np.arange(frames), num_frames - 1)


class StoredClipRecord:
  """record of a converted video dataset -> {'video' uint8 [T, S, S, C], 'label', 'direction' (-1)}."""

  def __init__(self, frames: int, stride: int, size: int, channels: int, crop_scale: tuple[float, float],
               train: bool, label_key: str | None, interpolation: str = 'bicubic', views: tuple[int, int] = (1, 1)):
    self.frames, self.stride, self.size, self.channels = int(frames), int(stride), int(size), int(channels)
    self.crop_scale, self.train, self.label_key = tuple(float(v) for v in crop_scale), train, label_key
    self.resample = transforms.resample_filter(interpolation)
    self.views = tuple(int(v) for v in views)  # evaluation: (temporal segments, spatial crops)
    if self.stride < 1:
      raise ValueError(f'data.clips.stride must be a positive integer, got {stride}.')
    if len(self.views) != 2 or min(self.views) < 1:
      raise ValueError(f'data.clips.test_views must be (segments, crops) of positive integers, got {views}.')

  def __call__(self, record, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    if 'frames' not in record or 'frame_offsets' not in record:
      raise ValueError("data.clips.kind='stored' reads datasets converted by mim_jax.data.videos (features "
                       f"'frames', 'frame_offsets'); this record has {sorted(record)}.")
    offsets = np.asarray(record['frame_offsets'])
    data = np.asarray(record['frames']).tobytes()
    n = len(offsets) - 1
    room = max(0, n - ((self.frames - 1) * self.stride + 1))
    label = int(record[self.label_key]) if self.label_key is not None else -1
    out = {'label': np.int32(label), 'direction': np.int32(-1)}
    if self.train and rng is not None:
      start = int(rng.integers(0, room + 1))
      images = self._frames(data, offsets, clip_indices(n, self.frames, self.stride, start))
      w, h = images[0].size
      side = int(round(min(w, h) * rng.uniform(*self.crop_scale)))
      box = (int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1)), side)
      return {'video': self._clip(images, box), **out}
    segments, crops = self.views
    clips = []
    for k in range(segments):  # VideoMAE's test views: segments evenly over the video, crops along its long side
      start = None if segments == 1 else int(k * room / (segments - 1))
      images = self._frames(data, offsets, clip_indices(n, self.frames, self.stride, start))
      w, h = images[0].size
      side = min(w, h)
      for c in range(crops):
        shift = (max(w, h) - side) // 2 if crops == 1 else int(c * (max(w, h) - side) / (crops - 1))
        box = (shift, (h - side) // 2, side) if w >= h else ((w - side) // 2, shift, side)
        clips.append(self._clip(images, box))
    return {'video': clips[0] if len(clips) == 1 else np.stack(clips), **out}

  @staticmethod
  def _frames(data: bytes, offsets: np.ndarray, indices: np.ndarray) -> list:
    return [Image.open(io.BytesIO(data[offsets[i]:offsets[i + 1]])) for i in indices]

  def _clip(self, images: list, box: tuple[int, int, int]) -> np.ndarray:
    """The frames cropped to the square ``box`` = (x, y, side) and resized: uint8 [T, size, size, C]."""
    x, y, side = box
    mode = 'L' if self.channels == 1 else 'RGB'
    return np.stack([transforms.to_array(img.convert(mode).resize((self.size, self.size), self.resample,
                                                                  box=(x, y, x + side, y + side)), self.channels)
                     for img in images])


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog='python -m mim_jax.data.videos', description=__doc__.splitlines()[0])
  p.add_argument('--src', required=True, help='folder of videos (class folders, or train/ + val/)')
  p.add_argument('--out', required=True, help='data_dir to write the dataset into')
  p.add_argument('--name', default=None)
  p.add_argument('--short-side', type=int, default=128)
  p.add_argument('--every', type=int, default=1, help='keep every N-th decoded frame')
  p.add_argument('--max-frames', type=int, default=600)
  p.add_argument('--val-fraction', type=float, default=0.05)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--quality', type=int, default=90)
  args = p.parse_args(argv)
  try:
    prepare_videos(args.src, args.out, args.name, args.short_side, args.every, args.max_frames, args.val_fraction,
                   args.seed, args.quality)
  except (ValueError, FileNotFoundError, ImportError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
