"""Procedural street scenes swept by a simulated spinning LiDAR (a KITTI stand-in that needs no download),
deterministic from a seed.

    python -m mim_jax.data.lidar --show lidar.png [--seed 0]

A scene (:func:`make_scene`) is a street along x: the ground plane 1.8 m below the sensor, building walls on both
sides (thin boxes with gaps for side streets), 3-10 parked or driving cars (axis-aligned boxes on the ground),
poles and pedestrians (vertical cylinders). The sensor (:func:`sweep`) is a 32-beam spinning LiDAR at the origin:
elevations -25 to +3 degrees, 0.4 degree azimuth steps (900 columns), 50 m range; each ray returns its nearest hit
with 2 cm range noise, and 2% of the rays drop out. A sweep is its points with a class per point
(``CLASS_NAMES``), its range image ``[32, 900]`` and its voxel grid (:func:`voxelize`): ``[Z, Y, X] = [8, 64, 64]``
cells of 0.5 x 1 x 1 m centred on the sensor in x and y (x, y in [-32, 32) m, z in [-2, 2) m about the sensor),
each 0 (empty) or 1 + the highest class id among its points.

The bundled dataset ``mim_lidar`` (``ensure``, built on first use like the digits: 2000 training and 200 test
sweeps, ~1 min) stores the voxel grid (``voxels`` uint8 ``[8, 64, 64]``) and ``label`` = the number of cars - 3
(0..7, a scene-level probe target). :class:`VoxelRecord` makes the ``voxels`` batch field. Kept free of jax: grain
worker processes import this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import numpy as np
import tensorflow_datasets as tfds

from mim_jax.data.builders import LocalBuilder, build_once

CLASS_NAMES = ('ground', 'wall', 'car', 'pole', 'pedestrian')
SENSOR_HEIGHT = 1.8  # m above the ground
BEAMS = 32
ELEVATIONS_DEG = np.linspace(-25.0, 3.0, BEAMS)
AZIMUTH_STEP_DEG = 0.4
COLUMNS = int(round(360 / AZIMUTH_STEP_DEG))
MAX_RANGE = 50.0
RANGE_NOISE = 0.02
DROPOUT = 0.02
GRID = (8, 64, 64)  # voxels [Z, Y, X]
VOXEL = (0.5, 1.0, 1.0)  # m
GRID_LOW = (-2.0, -32.0, -32.0)  # m: the grid's low corner (z, y, x) in the sensor frame
MIN_CARS, MAX_CARS = 3, 10

NAME = 'mim_lidar'
VERSION = '1.0.0'
SPLITS = {'train': (2000, 0), 'test': (200, 1)}  # split -> (sweeps, seed)


@dataclasses.dataclass
class Scene:
  """Axis-aligned boxes ``[K, 2, 3]`` (low, high corners) with classes, vertical cylinders ``[M, 5]`` (x, y,
  radius, z low, z high) with classes; the ground is the plane z = -SENSOR_HEIGHT (sensor frame, metres)."""

  boxes: np.ndarray
  box_classes: np.ndarray
  cylinders: np.ndarray
  cylinder_classes: np.ndarray

  @property
  def num_cars(self) -> int:
    return int(np.sum(self.box_classes == CLASS_NAMES.index('car')))


@dataclasses.dataclass
class Sweep:
  points: np.ndarray  # float32 [N, 3]
  classes: np.ndarray  # int32 [N]
  range_image: np.ndarray  # float32 [BEAMS, COLUMNS], 0 where the ray returned nothing
  class_image: np.ndarray  # int32 [BEAMS, COLUMNS], -1 where the ray returned nothing


def _overlaps(lo, hi, boxes, margin=0.3) -> bool:
  return any(np.all(lo[:2] < b_hi[:2] + margin) and np.all(hi[:2] > b_lo[:2] - margin) for b_lo, b_hi in boxes)


def make_scene(rng: np.random.Generator) -> Scene:
  """One random street scene (see the module docstring)."""
  ground = -SENSOR_HEIGHT
  boxes, box_classes = [], []
  cylinders, cyl_classes = [], []
  half_widths = rng.uniform(7.0, 14.0, 2)  # the street's walls at y = +w0 and y = -w1
  for side, w in zip((1.0, -1.0), half_widths):
    # A wall from x = -60 to 60 m with 0-2 gaps (side streets) 6-12 m wide.
    cuts = sorted(rng.uniform(-40, 40, rng.integers(0, 3)))
    edges, x = [], -60.0
    for c in cuts:
      gap = rng.uniform(6, 12)
      if c - gap / 2 > x + 1:
        edges.append((x, c - gap / 2))
      x = max(x, c + gap / 2)
    edges.append((x, 60.0))
    height = rng.uniform(6.0, 12.0)
    for x0, x1 in edges:
      y0, y1 = (w, w + 0.5) if side > 0 else (-w - 0.5, -w)
      boxes.append(((x0, y0, ground), (x1, y1, ground + height)))
      box_classes.append(CLASS_NAMES.index('wall'))
  cars = rng.integers(MIN_CARS, MAX_CARS + 1)
  placed = []
  tries = 0
  while len(placed) < cars and tries < 500:
    tries += 1
    length, width, height = rng.uniform(3.8, 4.8), rng.uniform(1.6, 2.0), rng.uniform(1.3, 1.7)
    if rng.random() < 0.2:  # a car across the street (in a driveway, turning)
      length, width = width, length
    side = rng.choice([0, 1])
    w = half_widths[side]
    cy = rng.uniform(-w + width / 2 + 0.5, w - width / 2 - 0.5)
    cx = rng.uniform(-30, 30)
    lo = np.array([cx - length / 2, cy - width / 2, ground])
    hi = np.array([cx + length / 2, cy + width / 2, ground + height])
    if np.hypot(cx, cy) < 4.0 or _overlaps(lo, hi, placed):
      continue
    placed.append((lo, hi))
    boxes.append((tuple(lo), tuple(hi)))
    box_classes.append(CLASS_NAMES.index('car'))
  for kind, count, radius, height in (('pole', rng.integers(2, 7), (0.1, 0.2), (4.0, 7.0)),
                                      ('pedestrian', rng.integers(0, 6), (0.25, 0.35), (1.5, 1.9))):
    for _ in range(count):
      side = rng.choice([0, 1])
      w = half_widths[side]
      y = (1 if side == 0 else -1) * rng.uniform(w - 2.0, w - 0.5)
      x = rng.uniform(-35, 35)
      cylinders.append((x, y, rng.uniform(*radius), ground, ground + rng.uniform(*height)))
      cyl_classes.append(CLASS_NAMES.index(kind))
  return Scene(np.asarray(boxes, np.float64).reshape(-1, 2, 3), np.asarray(box_classes, np.int32),
               np.asarray(cylinders, np.float64).reshape(-1, 5), np.asarray(cyl_classes, np.int32))


def ray_directions() -> np.ndarray:
  """Unit directions ``[BEAMS, COLUMNS, 3]``: beam (elevation) by column (azimuth from +x, counter-clockwise)."""
  el = np.deg2rad(ELEVATIONS_DEG)[:, None]
  az = np.deg2rad(np.arange(COLUMNS) * AZIMUTH_STEP_DEG)[None, :]
  return np.stack(np.broadcast_arrays(np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)), -1)


def _hit_boxes(d: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """Ray parameter ``[R, K]`` of the first hit of rays from the origin with each box (inf: none)."""
  inv = (1.0 / np.where(np.abs(d) < 1e-9, 1e-9, d)).astype(np.float32)[:, None, :]  # no 0 * inf
  t1, t2 = boxes[None, :, 0].astype(np.float32) * inv, boxes[None, :, 1].astype(np.float32) * inv
  near = np.minimum(t1, t2).max(-1)
  far = np.maximum(t1, t2).min(-1)
  return np.where((near <= far) & (near > 0), near, np.inf)


def _hit_cylinders(d: np.ndarray, cyl: np.ndarray) -> np.ndarray:
  """Ray parameter ``[R, M]`` of the first hit with each vertical cylinder's side (inf: none)."""
  if not len(cyl):
    return np.zeros((len(d), 0))
  cx, cy, r, z0, z1 = (cyl[None, :, i] for i in range(5))
  dx, dy, dz = d[:, 0:1], d[:, 1:2], d[:, 2:3]
  a = dx ** 2 + dy ** 2
  b = -2 * (dx * cx + dy * cy)
  c = cx ** 2 + cy ** 2 - r ** 2
  disc = b ** 2 - 4 * a * c
  with np.errstate(invalid='ignore', divide='ignore'):
    t = (-b - np.sqrt(disc)) / (2 * a)
  z = t * dz
  return np.where((disc >= 0) & (t > 0) & (z >= z0) & (z <= z1), t, np.inf)


def sweep(scene: Scene, rng: np.random.Generator) -> Sweep:
  """Ray-casts the scene (see the module docstring)."""
  d = ray_directions().reshape(-1, 3)
  with np.errstate(divide='ignore'):
    t_ground = np.where(d[:, 2] < 0, -SENSOR_HEIGHT / d[:, 2], np.inf)
  hits = np.concatenate([t_ground[:, None], _hit_boxes(d, scene.boxes), _hit_cylinders(d, scene.cylinders)], 1)
  classes = np.concatenate([[CLASS_NAMES.index('ground')], scene.box_classes, scene.cylinder_classes])
  first = np.argmin(hits, 1)
  t = hits[np.arange(len(d)), first]
  keep = (t <= MAX_RANGE) & (rng.random(len(d)) >= DROPOUT)
  t = np.where(keep, t + rng.normal(0.0, RANGE_NOISE, len(d)), 0.0)
  points = (d * t[:, None])[keep].astype(np.float32)
  cls = classes[first].astype(np.int32)
  range_image = np.where(keep, t, 0.0).astype(np.float32).reshape(BEAMS, COLUMNS)
  class_image = np.where(keep, cls, -1).astype(np.int32).reshape(BEAMS, COLUMNS)
  return Sweep(points, cls[keep], range_image, class_image)


def voxelize(points: np.ndarray, classes: np.ndarray) -> np.ndarray:
  """uint8 ``[Z, Y, X]``: 0 for an empty voxel, else 1 + the highest class id among its points (points outside
  the grid are dropped)."""
  idx = np.floor((points[:, ::-1] - np.asarray(GRID_LOW)) / np.asarray(VOXEL)).astype(np.int64)  # (z, y, x)
  inside = np.all((idx >= 0) & (idx < np.asarray(GRID)), axis=1)
  grid = np.zeros(GRID, np.uint8)
  np.maximum.at(grid, tuple(idx[inside].T), (classes[inside] + 1).astype(np.uint8))
  return grid


def make_sweep(seed: int, index: int) -> tuple[Scene, Sweep]:
  rng = np.random.default_rng([seed, index])
  scene = make_scene(rng)
  return scene, sweep(scene, rng)


def make_split(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """``count`` voxel grids uint8 ``[count, Z, Y, X]`` and labels (cars - 3)."""
  grids = np.zeros((count, *GRID), np.uint8)
  labels = np.zeros(count, np.int32)
  for i in range(count):
    scene, sw = make_sweep(seed, i)
    grids[i] = voxelize(sw.points, sw.classes)
    labels[i] = scene.num_cars - MIN_CARS
  return grids, labels


class MimLidar(LocalBuilder):
  """Procedural LiDAR sweeps as voxel grids (see the module docstring)."""

  VERSION = tfds.core.Version(VERSION)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description='Procedural LiDAR street sweeps as voxel grids (mim_jax.data.lidar).',
        features=tfds.features.FeaturesDict({
            'voxels': tfds.features.Tensor(shape=GRID, dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB),
            'label': tfds.features.ClassLabel(names=[f'{n}_cars' for n in range(MIN_CARS, MAX_CARS + 1)])}),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(*spec) for split, spec in SPLITS.items()}

  def _generate_examples(self, count, seed):
    grids, labels = make_split(count, seed)
    for i, (g, y) in enumerate(zip(grids, labels)):
      yield i, {'voxels': g, 'label': int(y)}


def ensure(data_dir: str) -> str:
  """Builds ``mim_lidar`` under ``data_dir`` unless it is there; returns its dataset directory."""
  return build_once(data_dir, NAME, VERSION, lambda: MimLidar(data_dir=data_dir, file_format='array_record'))


class VoxelRecord:
  """record -> {'voxels' float32 [Z, Y, X] occupancy (0/1), 'label'}; training flips the scene left-right
  (y -> -y) with probability 1/2 (the street's two sides are alike)."""

  def __init__(self, train: bool, voxels_key: str, label_key: str | None, augment: bool = True):
    self.train, self.augment = train, augment
    self.voxels_key, self.label_key = voxels_key, label_key

  def __call__(self, record, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    grid = np.asarray(record[self.voxels_key])
    if grid.shape != GRID:
      raise ValueError(f'a voxel record needs {self.voxels_key!r} of shape {GRID}, got {grid.shape}.')
    occupancy = (grid > 0).astype(np.float32)
    if self.train and self.augment and rng is not None and rng.random() < 0.5:
      occupancy = occupancy[:, ::-1].copy()  # y -> -y about the sensor (the grid is centred on it)
    label = int(record[self.label_key]) if self.label_key is not None else -1
    return {'voxels': occupancy, 'label': np.int32(label)}


def show(out: str, seed: int = 0) -> str:
  """A scene from above (points coloured by class), its range image and its voxel occupancy seen from above."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  scene, sw = make_sweep(seed, 0)
  grid = voxelize(sw.points, sw.classes)
  colours = np.array([[0.6, 0.6, 0.6], [0.55, 0.35, 0.2], [0.85, 0.1, 0.1], [0.1, 0.3, 0.9], [0.1, 0.7, 0.2]])
  fig = plt.figure(figsize=(12, 5.6))
  ax = fig.add_subplot(2, 2, (1, 3))
  ax.scatter(sw.points[:, 0], sw.points[:, 1], s=0.2, c=colours[sw.classes])
  ax.set_aspect('equal')
  ax.set_xlim(-MAX_RANGE, MAX_RANGE)
  ax.set_ylim(-25, 25)
  ax.set_title(f'{len(sw.points)} points from above ({scene.num_cars} cars); '
               + ', '.join(f'{n}' for n in CLASS_NAMES), fontsize=8)
  for k, name in enumerate(CLASS_NAMES):
    ax.scatter([], [], s=8, c=[colours[k]], label=name)
  ax.legend(fontsize=6, loc='upper right', markerscale=2)
  ax = fig.add_subplot(2, 2, 2)
  ax.imshow(sw.range_image, aspect='auto', cmap='viridis')
  ax.set_title(f'range image [{BEAMS} beams x {COLUMNS} columns] (0 = no return)', fontsize=8)
  ax.set_axis_off()
  ax = fig.add_subplot(2, 2, 4)
  top = grid.max(axis=0)
  rgb = np.ones((*top.shape, 3))
  rgb[top > 0] = colours[top[top > 0] - 1]
  ax.imshow(rgb, origin='lower', extent=(GRID_LOW[2], -GRID_LOW[2], GRID_LOW[1], -GRID_LOW[1]))
  ax.set_title(f'voxel grid {GRID} (z, y, x), from above: {int((grid > 0).sum())} occupied', fontsize=8)
  fig.suptitle(f'procedural LiDAR sweep (mim_jax.data.lidar), seed {seed}', fontsize=9)
  fig.tight_layout()
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m mim_jax.data.lidar', description=__doc__.splitlines()[0])
  p.add_argument('--show', metavar='FILE.png', required=True, help='draw a sweep, its range image and voxels')
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args(argv)
  print(f'wrote {show(args.show, args.seed)}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
