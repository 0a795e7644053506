"""Point-MAE's grouping: farthest-point sampling and kNN, against a plain numpy transcription of their definitions."""

import jax
import numpy as np
import pytest

from mim_jax.models import point_groups


def _fps_numpy(points, num):
  idx, dist = [0], np.full(len(points), np.inf)
  for _ in range(num - 1):
    dist = np.minimum(dist, ((points - points[idx[-1]]) ** 2).sum(1))
    idx.append(int(np.argmax(dist)))
  return np.asarray(idx)


def test_fps_and_knn_follow_their_definitions():
  points = np.random.default_rng(0).standard_normal((3, 200, 3)).astype(np.float32)
  fps = np.asarray(jax.jit(point_groups.farthest_point_sample, static_argnums=1)(points, 16))
  for b in range(3):
    np.testing.assert_array_equal(fps[b], _fps_numpy(points[b].astype(np.float64), 16))
  neighborhood, center = jax.jit(point_groups.group_points, static_argnums=(1, 2))(points, 16, 8)
  neighborhood, center = np.asarray(neighborhood), np.asarray(center)
  assert neighborhood.shape == (3, 16, 8, 3) and center.shape == (3, 16, 3)
  np.testing.assert_array_equal(center[1], points[1][fps[1]])
  np.testing.assert_allclose(neighborhood[:, :, 0], 0.0, atol=1e-7)  # the centre is its own nearest point
  for g in range(16):
    d = ((points[2] - center[2, g]) ** 2).sum(1)
    want = np.sort(d)[:8]
    got = (neighborhood[2, g] ** 2).sum(1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # the 8 nearest, nearest first


def test_impossible_group_sizes_get_one_line_errors():
  points = np.zeros((1, 10, 3), np.float32)
  with pytest.raises(ValueError, match='need 1 <= num <= 10'):
    point_groups.farthest_point_sample(points, 11)
  with pytest.raises(ValueError, match='need 1 <= k <= 10'):
    point_groups.knn_indices(points, points[:, :2], 20)
