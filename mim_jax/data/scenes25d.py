"""Procedural 2.5-D scenes with exact RGB, depth and semantics ("dead leaves": overlapping textured shapes at
depths), deterministic from a seed: MultiMAE's modalities without a depth network or a segmenter.

    python -m mim_jax.data.scenes25d --show scenes.png [--seed 0]

A scene (:func:`make_scene`, 64 x 64 px) is a background plane (class 0, depth 12-16 with a slope) and 5-10 shapes
(disc, rectangle, triangle, diamond: classes 1-4) drawn far to near, so nearer shapes hide farther ones. Each shape
lies on a slanted plane (depth at its centre 2-11 plus a slope of up to 0.08 per px) and is painted with a texture
cut from scikit-learn's two sample photos (china, flower: random crops, downscaled, tinted) or, one time in four, a
flat colour with shading that follows its depth. The depth map (metres, float32) and the class map (uint8) are exact
per pixel.

The bundled dataset ``mim_scenes25d`` (``ensure``, built on first use: 2000 training and 200 test scenes, ~20 s)
stores ``image`` (uint8 ``[64, 64, 3]``), ``depth`` (uint16 millimetres) and ``semseg`` (uint8), with ``label`` =
the shape class covering the most pixels (4 classes, a scene-level probe target). Kept free of jax: grain worker
processes import this module.
"""

from __future__ import annotations

import argparse
import functools
import sys

import numpy as np
import tensorflow_datasets as tfds

from mim_jax.data.builders import LocalBuilder, build_once

CLASS_NAMES = ('background', 'disc', 'rectangle', 'triangle', 'diamond')
SIZE = 64
NAME = 'mim_scenes25d'
VERSION = '1.0.0'
SPLITS = {'train': (2000, 0), 'test': (200, 1)}  # split -> (scenes, seed)


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
  """scikit-learn's sample photos at half size (float32 0-1), the texture sources."""
  from PIL import Image
  from sklearn.datasets import load_sample_images

  out = []
  for img in load_sample_images().images:
    pil = Image.fromarray(img).resize((img.shape[1] // 2, img.shape[0] // 2), Image.BILINEAR)
    out.append(np.asarray(pil, np.float32) / 255.0)
  return tuple(out)


def _texture(rng: np.random.Generator) -> np.ndarray:
  if rng.random() < 0.25:  # flat colour
    return np.broadcast_to(rng.uniform(0.1, 0.9, 3).astype(np.float32), (SIZE, SIZE, 3))
  photo = _photos()[rng.integers(len(_photos()))]
  y, x = rng.integers(0, photo.shape[0] - SIZE), rng.integers(0, photo.shape[1] - SIZE)
  tint = rng.uniform(0.6, 1.4, 3).astype(np.float32)
  return np.clip(photo[y:y + SIZE, x:x + SIZE] * tint, 0.0, 1.0)


def _shape_mask(kind: int, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, tuple]:
  cy, cx = rng.uniform(4, SIZE - 4, 2)
  r = rng.uniform(6, 18)
  if kind == 1:  # disc
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2, (cy, cx)
  if kind == 2:  # rectangle, axis-aligned with random aspect
    h, w = r * rng.uniform(0.5, 1.5), r * rng.uniform(0.5, 1.5)
    return (np.abs(yy - cy) <= h) & (np.abs(xx - cx) <= w), (cy, cx)
  if kind == 3:  # triangle: a random rotation of an equilateral one
    a = rng.uniform(0, 2 * np.pi) + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
    py, px = cy + r * np.sin(a), cx + r * np.cos(a)
    inside = np.ones_like(yy, bool)
    for i in range(3):
      j = (i + 1) % 3
      cross = (px[j] - px[i]) * (yy - py[i]) - (py[j] - py[i]) * (xx - px[i])
      inside &= cross >= 0
    return inside, (cy, cx)
  # diamond: |dy| / a + |dx| / b <= 1
  a, b = r * rng.uniform(0.6, 1.3), r * rng.uniform(0.6, 1.3)
  return np.abs(yy - cy) / a + np.abs(xx - cx) / b <= 1, (cy, cx)


def make_scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(rgb uint8 [64, 64, 3], depth float32 [64, 64] metres, semseg uint8 [64, 64])."""
  yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
  base = rng.uniform(12, 16)
  gy, gx = rng.uniform(-0.03, 0.03, 2)
  depth = (base + gy * (yy - SIZE / 2) + gx * (xx - SIZE / 2)).astype(np.float32)
  rgb = _texture(rng).copy()
  semseg = np.zeros((SIZE, SIZE), np.uint8)
  count = rng.integers(5, 11)
  shapes = []
  for _ in range(count):
    kind = int(rng.integers(1, len(CLASS_NAMES)))
    mask, (cy, cx) = _shape_mask(kind, rng, yy, xx)
    z = rng.uniform(2, 11)
    sy, sx = rng.uniform(-0.08, 0.08, 2)
    plane = z + sy * (yy - cy) + sx * (xx - cx)
    shapes.append((z, kind, mask, np.maximum(plane, 0.5), _texture(rng)))
  for _z, kind, mask, plane, tex in sorted(shapes, key=lambda s: -s[0]):  # far to near
    shade = np.clip(1.15 - 0.05 * plane, 0.4, 1.0)[..., None]  # nearer is brighter
    rgb[mask] = (tex * shade)[mask]
    depth[mask] = plane[mask]
    semseg[mask] = kind
  return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8), depth.astype(np.float32), semseg


def scene_label(semseg: np.ndarray) -> int:
  """The shape class (1-4) covering the most pixels, minus 1: a 4-way scene-level label."""
  counts = np.bincount(semseg.reshape(-1), minlength=len(CLASS_NAMES))[1:]
  return int(np.argmax(counts))


def make_split(count: int, seed: int):
  rgb = np.zeros((count, SIZE, SIZE, 3), np.uint8)
  depth = np.zeros((count, SIZE, SIZE), np.float32)
  semseg = np.zeros((count, SIZE, SIZE), np.uint8)
  labels = np.zeros(count, np.int32)
  for i in range(count):
    rgb[i], depth[i], semseg[i] = make_scene(np.random.default_rng([seed, i]))
    labels[i] = scene_label(semseg[i])
  return rgb, depth, semseg, labels


class MimScenes25d(LocalBuilder):
  """Procedural 2.5-D scenes with RGB, depth and semantics (see the module docstring)."""

  VERSION = tfds.core.Version(VERSION)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description='Procedural 2.5-D scenes: RGB, depth, semantics (mim_jax.data.scenes25d).',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(SIZE, SIZE, 3), dtype=np.uint8),
            'depth': tfds.features.Tensor(shape=(SIZE, SIZE), dtype=np.uint16, encoding=tfds.features.Encoding.ZLIB),
            'semseg': tfds.features.Tensor(shape=(SIZE, SIZE), dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB),
            'label': tfds.features.ClassLabel(names=[f'mostly_{n}' for n in CLASS_NAMES[1:]])}),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(*spec) for split, spec in SPLITS.items()}

  def _generate_examples(self, count, seed):
    rgb, depth, semseg, labels = make_split(count, seed)
    for i in range(count):
      yield i, {'image': rgb[i], 'depth': np.round(depth[i] * 1000).astype(np.uint16), 'semseg': semseg[i],
                'label': int(labels[i])}


def ensure(data_dir: str) -> str:
  """Builds ``mim_scenes25d`` under ``data_dir`` unless it is there; returns its dataset directory."""
  return build_once(data_dir, NAME, VERSION, lambda: MimScenes25d(data_dir=data_dir, file_format='array_record'))


class SceneRecord:
  """record -> {'image' uint8 [H, W, 3], 'depth' float32 [H, W, 1] metres, 'semseg' int32 [H/s, W/s] (nearest:
  every s-th pixel), 'label'}; training flips all three left-right together with probability 1/2 (the official
  ``hflip: 0.5``)."""

  def __init__(self, train: bool, semseg_stride: int, hflip: bool = True):
    self.train, self.stride, self.hflip = train, int(semseg_stride), hflip

  def __call__(self, record, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    image = np.asarray(record['image'], np.uint8)
    depth = np.asarray(record['depth'], np.float32)[..., None] / 1000.0
    semseg = np.asarray(record['semseg'])
    if self.train and self.hflip and rng is not None and rng.random() < 0.5:
      image, depth, semseg = image[:, ::-1], depth[:, ::-1], semseg[:, ::-1]
    return {'image': np.ascontiguousarray(image), 'depth': np.ascontiguousarray(depth),
            'semseg': np.ascontiguousarray(semseg[::self.stride, ::self.stride]).astype(np.int32),
            'label': np.int32(record.get('label', -1))}


def show(out: str, seed: int = 0, count: int = 4) -> str:
  """``count`` scenes: RGB, depth and semantics side by side."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(3, count, figsize=(2.2 * count, 6.6), squeeze=False)
  for i in range(count):
    rgb, depth, semseg = make_scene(np.random.default_rng([seed, i]))
    for r, (img, kw) in enumerate(((rgb, {}), (depth, {'cmap': 'magma_r'}),
                                   (semseg, {'cmap': 'tab10', 'vmin': 0, 'vmax': 9}))):
      axes[r, i].imshow(img, **kw)
      axes[r, i].set_xticks([])
      axes[r, i].set_yticks([])
  for r, name in enumerate(('RGB', 'depth (near = light)', 'semantics')):
    axes[r, 0].set_ylabel(name, fontsize=8)
  fig.suptitle(f'procedural 2.5-D scenes (mim_jax.data.scenes25d), seed {seed}; classes: {", ".join(CLASS_NAMES)}',
               fontsize=8)
  fig.tight_layout()
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m mim_jax.data.scenes25d', description=__doc__.splitlines()[0])
  p.add_argument('--show', metavar='FILE.png', required=True, help='draw scenes: RGB, depth, semantics')
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args(argv)
  print(f'wrote {show(args.show, args.seed)}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
