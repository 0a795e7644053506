"""R-MAE: the radial mask (sensor-centred and the official rule against a numpy reference of the official loop),
the procedural LiDAR sweeps, the sparse-on-dense voxel ConvNet, the loss, and one-line errors."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mim_jax.data import lidar
from mim_jax.masking.radial import radial_keep, sector_table
from mim_jax.methods.base import Facts, build


def _occupancy(count=2, seed=0) -> np.ndarray:
  grids, _ = lidar.make_split(count, seed)
  return grids > 0


def _small(count=2) -> jax.Array:
  """The 16 x 16 m about the sensor (small grids keep the model tests quick)."""
  return jnp.asarray(_occupancy(count)[:, :, 24:40, 24:40].astype(np.float32))


def test_sensor_mode_hides_the_stated_fraction_of_nonempty_sectors_per_sample():
  occ = _occupancy(3)
  m = radial_keep(jax.random.key(0), jnp.asarray(occ), sector_deg=5.0, ratio=0.9, mode='sensor')
  table, count = sector_table(occ.shape[2:], 5.0, 'sensor')
  assert count == 72
  for i in range(3):
    nonempty = np.unique(table[occ[i].any(axis=0)])
    s = len(nonempty)
    assert np.asarray(m.nonempty_sectors[i]).sum() == s
    kept = np.flatnonzero(np.asarray(m.kept_sectors[i]))
    assert len(kept) == int(0.1 * s) and set(kept) <= set(nonempty)
    hidden_fraction = 1 - len(kept) / s
    assert hidden_fraction == 1 - int(0.1 * s) / s
    keep = np.asarray(m.keep[i])
    assert not (keep & ~occ[i]).any()  # only occupied voxels are kept
    assert set(np.unique(table[keep.any(axis=0)])) <= set(kept)  # all in kept sectors
    assert (keep == (occ[i] & np.isin(table, kept)[None])).all()  # and every voxel of a kept sector is
  # per sample: the samples draw different sectors
  assert not np.array_equal(np.asarray(m.kept_sectors[0]), np.asarray(m.kept_sectors[1]))
  # sensor-centred angles cover the whole circle (the official index-space angles cover 90 degrees)
  assert len(np.unique(table)) == 72 and len(np.unique(sector_table((64, 64), 5.0, 'official')[0])) == 19


def official_reference(voxel_coords: np.ndarray, masked_ratio: float, angular_range: int, sector_scores,
                       voxel_scores) -> np.ndarray:
  """The official ``Radial_MAE.forward`` masking, written from its description, over a batch's voxel list
  ``[V, 4]`` (batch, z, y, x): float32 angles ``atan2(x, y)`` in degrees mod 360, sectors ``[a, a + R)`` for a in
  range(0, 360, R) that hold voxels, ``int((1 - ratio) * groups)`` of them by ``random.sample``, the fallback to
  ``max(1, int(0.1 * V))`` random voxels. ``random.sample``'s draws are given as scores (highest first)."""
  angles = np.rad2deg(np.arctan2(voxel_coords[:, 3].astype(np.float32), voxel_coords[:, 2].astype(np.float32)))
  angles = angles.astype(np.float32) % np.float32(360)
  groups = {}
  for angle in range(0, 360, angular_range):
    idx = np.where((angles >= angle) & (angles < angle + angular_range))[0]
    if len(idx):
      groups[angle] = idx
  select = min(int((1 - masked_ratio) * len(groups)), len(groups))
  chosen = sorted(groups, key=lambda a: -sector_scores[a // angular_range])[:select]
  selected = [i for a in chosen for i in groups[a]]
  min_voxels = max(1, int(0.1 * len(voxel_coords)))
  if len(selected) < min_voxels:
    selected = list(np.argsort(-voxel_scores)[:min_voxels])
  return np.sort(np.asarray(selected, np.int64))


@pytest.mark.parametrize('ratio, sector, seed', [(0.8, 1, 0), (0.9, 5, 1), (0.5, 5, 2), (0.95, 1, 3)])
def test_official_mode_equals_the_numpy_reference_of_the_official_loop(ratio, sector, seed):
  occ = _occupancy(2, seed)
  rng = np.random.default_rng(seed)
  count = math.ceil(360 / sector)
  sector_scores = rng.random(count).astype(np.float32)
  voxel_scores = rng.random(occ.shape).astype(np.float32)
  m = radial_keep(None, jnp.asarray(occ), sector_deg=float(sector), ratio=ratio, mode='official',
                  scores=(jnp.asarray(sector_scores)[None], jnp.asarray(voxel_scores)))
  coords = np.argwhere(occ)  # [V, 4]: batch, z, y, x (OpenPCDet's voxel_coords order)
  want = official_reference(coords, ratio, sector, sector_scores, voxel_scores[tuple(coords.T)])
  got = np.flatnonzero(np.asarray(m.keep)[tuple(coords.T)])
  np.testing.assert_array_equal(got, want)
  # one choice for the whole batch
  assert (np.asarray(m.kept_sectors)[0] == np.asarray(m.kept_sectors)[1]).all()


def test_the_official_fallback_keeps_a_tenth_of_the_voxels_at_random():
  occ = _occupancy(2)
  m = radial_keep(jax.random.key(3), jnp.asarray(occ), sector_deg=1.0, ratio=0.99, mode='official')
  assert bool(np.asarray(m.fallback).all())  # int(0.01 * 19 sectors) = 0 sectors kept
  assert np.asarray(m.keep).sum() == max(1, occ.sum() // 10)


def test_sweeps_are_deterministic_and_see_the_scene():
  a, b = lidar.make_sweep(4, 2), lidar.make_sweep(4, 2)
  np.testing.assert_array_equal(a[1].points, b[1].points)
  scene, sweep = a
  assert sweep.range_image.shape == (lidar.BEAMS, lidar.COLUMNS) and len(sweep.points) > 10000
  assert set(np.unique(sweep.classes)) >= {0, 1, 2}  # ground, walls and cars are hit
  ground = sweep.points[sweep.classes == 0]
  np.testing.assert_allclose(ground[:, 2], -lidar.SENSOR_HEIGHT, atol=0.2)  # the ground plane, within noise
  r = np.linalg.norm(sweep.points, axis=1)
  assert r.max() <= lidar.MAX_RANGE + 0.1
  grid = lidar.voxelize(sweep.points, sweep.classes)
  assert grid.shape == lidar.GRID and grid.max() <= len(lidar.CLASS_NAMES)
  assert lidar.MIN_CARS <= scene.num_cars <= lidar.MAX_CARS
  # cars are boxes on the ground: every car point lies inside one of the scene's car boxes (up to the noise)
  cars = scene.boxes[scene.box_classes == lidar.CLASS_NAMES.index('car')]
  car_points = sweep.points[sweep.classes == 2]
  inside = np.zeros(len(car_points), bool)
  for lo, hi in cars:
    inside |= np.all((car_points >= lo - 0.1) & (car_points <= hi + 0.1), axis=1)
  assert inside.all()


def _method(dims=2, **mask):
  c = ml_collections.ConfigDict({
      'method': 'radial_mae',
      'model': {'encoder': {'name': 'voxel_cnn', 'dims': dims, 'widths': (4, 8, 8, 8), 'out_width': 8,
                            'blocks': (1, 1, 1, 1)}},
      'mask': {'name': 'radial', 'ratio': 0.8, 'sector_deg': 5.0, 'mode': 'sensor', **mask},
      'data': {'voxel_grid': (8, 16, 16)}, 'radial_mae': {'decoder_widths': (4, 4)}})
  return build(c, Facts.for_images((8, 8, 1)))


@pytest.mark.slow  # compiling the convolutions: ~20-25 s each
@pytest.mark.parametrize('dims', [2, 3])
def test_the_encoder_is_sparse_what_the_hidden_voxels_hold_never_reaches_it(dims):
  """Sparse semantics on a dense grid: features at the active sites depend only on the active voxels, so
  changing anything outside the kept set changes nothing the decoder reads."""
  m = _method(dims)
  occ = _small()
  params, extras = jax.jit(m.init)(jax.random.key(0), {'voxels': occ})
  mask = m.draw_mask(jax.random.key(1), occ)
  other = jnp.where(mask.keep, occ, 1.0 - occ)  # every voxel outside the kept set flipped
  forward = jax.jit(lambda v: m.forward(params, extras['batch_stats'], v, mask, train=True)['logits'])
  outs = [forward(v) for v in (occ, other)]
  np.testing.assert_allclose(np.asarray(outs[0]), np.asarray(outs[1]), atol=1e-6)
  assert outs[0].shape == occ.shape


def test_the_loss_is_the_bce_over_every_voxel():
  from mim_jax.methods.radial_mae import occupancy_bce

  logits = jnp.asarray([[2.0, -1.0], [0.5, -3.0]])
  target = jnp.asarray([[1.0, 0.0], [0.0, 1.0]])
  p = 1 / (1 + np.exp(-np.asarray(logits)))
  want = -np.mean(np.asarray(target) * np.log(p) + (1 - np.asarray(target)) * np.log(1 - p))
  np.testing.assert_allclose(float(occupancy_bce(logits, target)), want, rtol=1e-6)
  weighted = -np.mean(3 * np.asarray(target) * np.log(p) + (1 - np.asarray(target)) * np.log(1 - p))
  np.testing.assert_allclose(float(occupancy_bce(logits, target, 3.0)), weighted, rtol=1e-6)


@pytest.mark.slow  # kept out of the default run for its compile time
def test_a_training_step_and_the_frozen_features():
  m = _method()
  occ = _small()
  params, extras = jax.jit(m.init)(jax.random.key(0), {'voxels': occ})
  (loss, (metrics, extras)), grads = jax.jit(jax.value_and_grad(m.loss_fn, has_aux=True))(
      params, extras, {'voxels': occ}, jax.random.key(2), 0)
  assert np.isfinite(float(loss)) and 0 < float(metrics['kept_fraction']) < 0.5
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  feats = jax.jit(m.encode)(m.eval_params(params, extras), {'voxels': occ})
  assert feats['pooled'].shape == (2, 8) and feats['patch_tokens'].shape == (2, 4, 8)


def test_the_mirrored_baseline_copies_the_visible_mirror_column():
  from mim_jax.methods.radial_mae import mirrored_baseline

  occ = np.zeros((1, 2, 4, 4), bool)
  occ[0, 0, 0, 1] = occ[0, 1, 3, 1] = True  # a voxel at y=0 and its y-mirror at y=3
  keep = occ.copy()
  keep[0, :, 0] = False  # row y=0 hidden
  hidden = np.zeros((1, 4, 4), bool)
  hidden[0, 0] = True
  guess = mirrored_baseline(occ, keep, hidden)
  assert guess[0, 1, 0, 1] and guess.sum() == 1  # the y-mirror (row 3) copied into row 0, at its own z


def test_bad_settings_get_one_line_errors():
  with pytest.raises(ValueError, match="set config.mask.name='radial'"):
    _method(name='random')
  with pytest.raises(ValueError, match='nothing to generate'):
    _method(ratio=0.0)
  with pytest.raises(ValueError, match='mode must be one of'):
    _method(mode='polar')
  with pytest.raises(ValueError, match='does not take'):
    _method(num_visible=3)
  with pytest.raises(ValueError, match='keeps no sector'):
    _method(sector_deg=90.0, ratio=0.8)  # int(0.2 x 4) = 0 sectors kept
  from mim_jax.models.encoders import build_encoder
  with pytest.raises(ValueError, match="dims must be 3"):
    build_encoder({'name': 'voxel_cnn', 'dims': 4})
  encoder = build_encoder({'name': 'voxel_cnn', 'dims': 3})
  with pytest.raises(ValueError, match='multiples of 8'):  # 3-D strides halve Z three times
    jax.eval_shape(lambda x: encoder.init(jax.random.key(0), x), jax.ShapeDtypeStruct((1, 12, 16, 16), jnp.float32))
  m = _method()
  with pytest.raises(ValueError, match='expected voxel grids of shape'):
    m.voxels({'voxels': jnp.zeros((2, 8, 32, 32))})  # the configured grid is 8 x 16 x 16
