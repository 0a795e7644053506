"""Procedural point clouds: points lie on the named surfaces, clouds are normalized and reproducible."""

import numpy as np

from mim_jax.data import shapes3d


def test_samplers_put_points_on_their_surfaces():
  rng = np.random.default_rng(0)
  np.testing.assert_allclose(np.linalg.norm(shapes3d._sphere(rng, 500), axis=1), 1.0, rtol=1e-9)
  box = shapes3d._box_surface(rng, 500, (1.0, 2.0, 3.0))
  on_face = np.isclose(np.abs(box) / [0.5, 1.0, 1.5], 1.0).any(axis=1)
  assert on_face.all() and (np.abs(box) <= [0.5, 1.0, 1.5]).all()
  torus = shapes3d._torus(rng, 500)
  ring = np.hypot(torus[:, 0], torus[:, 1])
  np.testing.assert_allclose(np.hypot(ring - 0.8, torus[:, 2]), 0.3, rtol=1e-9)
  cyl = shapes3d._cylinder(rng, 2000)
  r = np.hypot(cyl[:, 0], cyl[:, 1])
  assert (np.isclose(r, 0.6) | np.isclose(np.abs(cyl[:, 2]), 0.8)).all()
  # area weighting: the side is 2 pi r h = 6.03 of a total 8.29 (caps 2 x 1.13): ~73% on the side
  assert 0.68 < np.isclose(r, 0.6).mean() < 0.78


def test_clouds_are_normalized_reproducible_and_every_class_differs():
  points, labels = shapes3d.make_split(3, 256, seed=5)
  assert points.shape == (30, 256, 3) and points.dtype == np.float32
  assert sorted(np.bincount(labels)) == [3] * 10
  np.testing.assert_allclose(points.mean(1), 0.0, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(points, axis=2).max(1), 1.0, rtol=1e-5)
  again, _ = shapes3d.make_split(3, 256, seed=5)
  np.testing.assert_array_equal(points, again)
  other, _ = shapes3d.make_split(3, 256, seed=6)
  assert not np.allclose(points, other)
  # a crude shape statistic (the spread of distances from the centre) separates e.g. spheres from tables
  spread = {shapes3d.CLASS_NAMES[y]: np.linalg.norm(p, axis=1).std() for p, y in zip(points, labels)}
  assert spread['sphere'] < spread['table']


def test_the_picture_command_draws_every_class(tmp_path):
  out = tmp_path / 'shapes.png'
  assert shapes3d.main(['--show', str(out), '--points', '128']) == 0 and out.stat().st_size > 0


def test_point_records_subsample_normalize_and_augment():
  cloud = shapes3d.make_cloud(3, 512, np.random.default_rng(0)) * 2.0 + 0.5
  make = shapes3d.PointRecord(128, train=False, points_key='points', label_key='label')
  out = make({'points': cloud, 'label': 3})
  assert out['points'].shape == (128, 3) and int(out['label']) == 3
  np.testing.assert_allclose(out['points'].mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(out['points'], axis=1).max(), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(out['points'], make({'points': cloud, 'label': 3})['points'])  # eval: fixed
  train = shapes3d.PointRecord(128, train=True, points_key='points', label_key='label')
  a = train({'points': cloud, 'label': 3}, np.random.default_rng(1))['points']
  b = train({'points': cloud, 'label': 3}, np.random.default_rng(2))['points']
  assert not np.allclose(a, b)  # another subset, scale and shift
  plain = shapes3d.PointRecord(128, True, 'points', 'label', augment=False)({'points': cloud, 'label': 3},
                                                                             np.random.default_rng(1))['points']
  np.testing.assert_allclose(np.linalg.norm(plain, axis=1).max(), 1.0, rtol=1e-5)
  import pytest

  with pytest.raises(ValueError, match='data.num_points=128 but the records hold 64'):
    make({'points': cloud[:64], 'label': 3})
