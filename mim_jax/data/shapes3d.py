"""Procedural point clouds of 10 shape classes (a ModelNet stand-in that needs no download), deterministic from a seed.

    python -m mim_jax.data.shapes3d --show shapes.png [--points 1024] [--seed 0]

Classes (``CLASS_NAMES``): sphere, box, cylinder, cone, torus, pyramid, octahedron, capsule, table, chair.
Each cloud is ``points`` surface samples of one shape, area-weighted over its parts (a box's faces, a table's top
and legs), then a random anisotropic scale (each axis in ``[0.7, 1.3]``), a random rotation about the vertical
axis and a tilt of up to 15 degrees, Gaussian jitter (0.01) and Point-MAE's normalisation (centred, the farthest
point at radius 1). Shapes are sampled exactly (area-weighted) where the surface has a closed form; the cone and
pyramid sample their lateral surfaces and bases by area.

The bundled dataset ``mim_shapes3d`` (``ensure``, built on first use like the digits) stores 2000 training and
500 test clouds of 2048 points; :class:`PointRecord` makes the ``points`` batch field from a record. Kept free of
jax: grain worker processes import this module.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import numpy as np
import tensorflow_datasets as tfds

from mim_jax.data.builders import LocalBuilder, build_once

Sampler = Callable[[np.random.Generator, int], np.ndarray]


def _sphere(rng, n):
  v = rng.standard_normal((n, 3))
  return v / np.linalg.norm(v, axis=1, keepdims=True)


def _box_surface(rng, n, size=(1.0, 1.0, 1.0), center=(0.0, 0.0, 0.0)):
  """Uniform on the surface of an axis-aligned box (faces chosen by area)."""
  sx, sy, sz = size
  areas = np.array([sy * sz, sy * sz, sx * sz, sx * sz, sx * sy, sx * sy])
  face = rng.choice(6, n, p=areas / areas.sum())
  u, v = rng.uniform(-0.5, 0.5, (2, n))
  pts = np.zeros((n, 3))
  axis = face // 2
  sign = np.where(face % 2 == 0, -0.5, 0.5)
  for a in range(3):
    others = [b for b in range(3) if b != a]
    sel = axis == a
    pts[sel, a] = sign[sel]
    pts[sel, others[0]] = u[sel]
    pts[sel, others[1]] = v[sel]
  return pts * np.asarray(size) + np.asarray(center)


def _box(rng, n):
  return _box_surface(rng, n, (1.4, 1.4, 1.4))


def _cylinder(rng, n, radius=0.6, height=1.6):
  side, cap = 2 * np.pi * radius * height, np.pi * radius ** 2
  part = rng.choice(3, n, p=np.array([side, cap, cap]) / (side + 2 * cap))
  theta = rng.uniform(0, 2 * np.pi, n)
  r = np.where(part == 0, radius, radius * np.sqrt(rng.uniform(0, 1, n)))
  z = np.where(part == 0, rng.uniform(-height / 2, height / 2, n), np.where(part == 1, -height / 2, height / 2))
  return np.stack([r * np.cos(theta), r * np.sin(theta), z], axis=1)


def _cone(rng, n, radius=0.8, height=1.6):
  slant = np.hypot(radius, height)
  side, base = np.pi * radius * slant, np.pi * radius ** 2
  on_side = rng.uniform(0, side + base, n) < side
  theta = rng.uniform(0, 2 * np.pi, n)
  s = np.sqrt(rng.uniform(0, 1, n))  # area-uniform along the slant (and over the base disc)
  r = radius * s
  z = np.where(on_side, height / 2 - height * s, -height / 2)
  return np.stack([r * np.cos(theta), r * np.sin(theta), z], axis=1)


def _torus(rng, n, big=0.8, small=0.3):
  # rejection on the tube angle: the area element is proportional to (big + small cos phi)
  out = np.zeros((0, 3))
  while len(out) < n:
    theta, phi = rng.uniform(0, 2 * np.pi, (2, 2 * n))
    keep = rng.uniform(0, big + small, 2 * n) < big + small * np.cos(phi)
    theta, phi = theta[keep], phi[keep]
    ring = big + small * np.cos(phi)
    out = np.concatenate([out, np.stack([ring * np.cos(theta), ring * np.sin(theta), small * np.sin(phi)], 1)])
  return out[:n]


def _triangles(rng, n, tris: np.ndarray) -> np.ndarray:
  """Uniform on a triangle mesh ``[T, 3, 3]`` (triangles chosen by area)."""
  a, b, c = tris[:, 0], tris[:, 1], tris[:, 2]
  areas = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
  t = rng.choice(len(tris), n, p=areas / areas.sum())
  u, v = rng.uniform(0, 1, (2, n))
  flip = u + v > 1
  u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
  return a[t] + u[:, None] * (b[t] - a[t]) + v[:, None] * (c[t] - a[t])


def _pyramid(rng, n):
  h, s = 1.4, 0.8
  base = np.array([[-s, -s, -h / 2], [s, -s, -h / 2], [s, s, -h / 2], [-s, s, -h / 2]])
  apex = np.array([0.0, 0.0, h / 2])
  tris = [[base[i], base[(i + 1) % 4], apex] for i in range(4)] + [[base[0], base[1], base[2]],
                                                                    [base[0], base[2], base[3]]]
  return _triangles(rng, n, np.asarray(tris))


def _octahedron(rng, n):
  v = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
  tris = [[v[a], v[b], v[c]] for a in (0, 1) for b in (2, 3) for c in (4, 5)]
  return _triangles(rng, n, np.asarray(tris))


def _capsule(rng, n, radius=0.45, length=1.0):
  side, caps = 2 * np.pi * radius * length, 4 * np.pi * radius ** 2
  on_side = rng.uniform(0, side + caps, n) < side
  theta = rng.uniform(0, 2 * np.pi, n)
  body = np.stack([radius * np.cos(theta), radius * np.sin(theta), rng.uniform(-length / 2, length / 2, n)], 1)
  cap = radius * _sphere(rng, n)
  cap[:, 2] += np.where(cap[:, 2] >= 0, length / 2, -length / 2)
  return np.where(on_side[:, None], body, cap)


def _parts(rng, n, boxes: list[tuple[tuple[float, float, float], tuple[float, float, float]]]) -> np.ndarray:
  """Uniform on the union of box surfaces (each box by its area; hidden faces are kept, as in a CAD mesh)."""
  areas = np.array([2 * (sx * sy + sy * sz + sx * sz) for (sx, sy, sz), _ in boxes])
  counts = rng.multinomial(n, areas / areas.sum())
  return np.concatenate([_box_surface(rng, k, size, center) for k, (size, center) in zip(counts, boxes) if k])


def _table(rng, n):
  legs = [((0.12, 0.12, 0.9), (x, y, -0.45)) for x in (-0.75, 0.75) for y in (-0.45, 0.45)]
  return _parts(rng, n, [((1.8, 1.2, 0.1), (0.0, 0.0, 0.05))] + legs)


def _chair(rng, n):
  legs = [((0.1, 0.1, 0.6), (x, y, -0.5)) for x in (-0.4, 0.4) for y in (-0.4, 0.4)]
  return _parts(rng, n, [((1.0, 1.0, 0.1), (0.0, 0.0, -0.15)), ((1.0, 0.1, 1.0), (0.0, 0.45, 0.4))] + legs)


CLASSES: dict[str, Sampler] = {
    'sphere': _sphere, 'box': _box, 'cylinder': _cylinder, 'cone': _cone, 'torus': _torus,
    'pyramid': _pyramid, 'octahedron': _octahedron, 'capsule': _capsule, 'table': _table, 'chair': _chair,
}
CLASS_NAMES = tuple(CLASSES)


def _rotation(rng) -> np.ndarray:
  yaw = rng.uniform(0, 2 * np.pi)
  tilt, tilt_dir = rng.uniform(0, np.deg2rad(15)), rng.uniform(0, 2 * np.pi)
  cz, sz = np.cos(yaw), np.sin(yaw)
  rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
  axis = np.array([np.cos(tilt_dir), np.sin(tilt_dir), 0.0])
  k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
  rt = np.eye(3) + np.sin(tilt) * k + (1 - np.cos(tilt)) * (k @ k)  # Rodrigues
  return rt @ rz


def normalize(points: np.ndarray) -> np.ndarray:
  """Point-MAE's ``pc_norm``: centred on the mean, scaled so the farthest point is at radius 1."""
  points = points - points.mean(axis=0)
  return points / np.max(np.linalg.norm(points, axis=1))


def make_cloud(label: int, num_points: int, rng: np.random.Generator, jitter: float = 0.01) -> np.ndarray:
  """One cloud of class ``label`` (an index into ``CLASS_NAMES``): float32 ``[num_points, 3]``."""
  pts = CLASSES[CLASS_NAMES[label]](rng, num_points)
  pts = pts * rng.uniform(0.7, 1.3, 3)
  pts = pts @ _rotation(rng).T + jitter * rng.standard_normal(pts.shape)
  return normalize(pts).astype(np.float32)


def make_split(num_per_class: int, num_points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """``(points [M, num_points, 3], labels [M])`` with ``num_per_class`` clouds of every class, in a seeded order;
  cloud ``i`` has its own generator (``[seed, i]``), so a split is reproducible and any prefix is stratified-ish."""
  labels = np.tile(np.arange(len(CLASS_NAMES)), num_per_class)
  labels = labels[np.random.default_rng([seed, 1]).permutation(len(labels))]
  points = np.stack([make_cloud(int(y), num_points, np.random.default_rng([seed, 2, i]))
                     for i, y in enumerate(labels)])
  return points, labels.astype(np.int64)


# The bundled dataset: clouds of STORED_POINTS points per shape (the pipeline subsamples to data.num_points),
# TRAIN_PER_CLASS / TEST_PER_CLASS shapes per class, from different seeds.
NAME = 'mim_shapes3d'
VERSION = '1.0.0'
STORED_POINTS = 2048
SPLITS = {'train': (200, 0), 'test': (50, 1)}  # split -> (shapes per class, seed)


class MimShapes3d(LocalBuilder):
  """Procedural point clouds of 10 shape classes (see the module docstring)."""

  VERSION = tfds.core.Version(VERSION)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description='Procedural point clouds of 10 shape classes (mim_jax.data.shapes3d).',
        features=tfds.features.FeaturesDict({
            'points': tfds.features.Tensor(shape=(STORED_POINTS, 3), dtype=np.float32),
            'label': tfds.features.ClassLabel(names=list(CLASS_NAMES))}),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(*spec) for split, spec in SPLITS.items()}

  def _generate_examples(self, per_class, seed):
    points, labels = make_split(per_class, STORED_POINTS, seed)
    for i, (p, y) in enumerate(zip(points, labels)):
      yield i, {'points': p, 'label': int(y)}


def ensure(data_dir: str) -> str:
  """Builds ``mim_shapes3d`` (``points`` float32 [2048, 3] and ``label``) under ``data_dir`` unless it is there;
  returns its dataset directory."""
  return build_once(data_dir, NAME, VERSION, lambda: MimShapes3d(data_dir=data_dir, file_format='array_record'))


class PointRecord:
  """record -> {'points' float32 [num_points, 3], 'label'}: ``num_points`` of the stored points, a random subset
  when training (then Point-MAE's augmentation: per-axis scale U(2/3, 3/2) and shift U(-0.2, 0.2)), the first ones
  (a fixed subset: the stored order is random) when evaluating."""

  def __init__(self, num_points: int, train: bool, points_key: str, label_key: str | None, augment: bool = True):
    self.num_points, self.train, self.augment = int(num_points), train, augment
    self.points_key, self.label_key = points_key, label_key

  def __call__(self, record, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    pts = np.asarray(record[self.points_key], np.float32)
    if pts.ndim != 2 or pts.shape[1] != 3:
      raise ValueError(f'a point record needs {self.points_key!r} of shape [N, 3], got {pts.shape}.')
    if len(pts) < self.num_points:
      raise ValueError(f'data.num_points={self.num_points} but the records hold {len(pts)} points.')
    if self.train and rng is not None:
      pts = normalize(pts[rng.choice(len(pts), self.num_points, replace=False)])
      if self.augment:
        pts = pts * rng.uniform(2 / 3, 3 / 2, 3) + rng.uniform(-0.2, 0.2, 3)
    else:
      pts = normalize(pts[:self.num_points])
    label = int(record[self.label_key]) if self.label_key is not None else -1
    return {'points': pts.astype(np.float32), 'label': np.int32(label)}


def show(out: str, num_points: int = 1024, seed: int = 0) -> str:
  """One cloud of every class, as 3-D scatter plots."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig = plt.figure(figsize=(10, 4.4))
  for k, name in enumerate(CLASS_NAMES):
    pts = make_cloud(k, num_points, np.random.default_rng([seed, k]))
    ax = fig.add_subplot(2, 5, k + 1, projection='3d')
    ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], s=0.6, c=pts[:, 2], cmap='viridis')
    ax.set_title(name, fontsize=8)
    ax.set_axis_off()
    ax.set_box_aspect((1, 1, 1))
  fig.suptitle(f'procedural shapes (mim_jax.data.shapes3d), {num_points} points each, seed {seed}', fontsize=8)
  fig.tight_layout()
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m mim_jax.data.shapes3d', description=__doc__.splitlines()[0])
  p.add_argument('--show', metavar='FILE.png', required=True, help='draw one cloud of every class')
  p.add_argument('--points', type=int, default=1024)
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args(argv)
  print(f'wrote {show(args.show, args.points, args.seed)}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
