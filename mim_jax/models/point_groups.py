"""Point-cloud tokens: farthest-point sampling and k-nearest-neighbour grouping, jit-able (Point-MAE's ``Group``).

A cloud ``[B, N, 3]`` becomes ``num_groups`` centres (farthest-point sampling from point 0, as pointnet2's CUDA
``furthest_point_sample``) and, per centre, its ``group_size`` nearest points (the centre itself first, at distance
0), expressed relative to the centre: ``neighborhood [B, G, K, 3]``, ``center [B, G, 3]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def farthest_point_sample(points: jax.Array, num: int) -> jax.Array:
  """``[B, num]`` int32 indices: the first is point 0, each next one the point farthest (squared Euclidean) from
  those already chosen (the first of equals on ties)."""
  b, n, _ = points.shape
  if not 1 <= num <= n:
    raise ValueError(f'farthest-point sampling of {num} points from clouds of {n}: need 1 <= num <= {n}.')
  points = points.astype(jnp.float32)

  def step(i, carry):
    idx, dist, last = carry
    d = jnp.sum(jnp.square(points - jnp.take_along_axis(points, last[:, None, None], axis=1)), axis=-1)
    dist = jnp.minimum(dist, d)
    nxt = jnp.argmax(dist, axis=1).astype(jnp.int32)
    return idx.at[:, i].set(nxt), dist, nxt

  idx = jnp.zeros((b, num), jnp.int32)
  dist = jnp.full((b, n), jnp.inf, jnp.float32)
  idx, _, _ = jax.lax.fori_loop(1, num, step, (idx, dist, jnp.zeros((b,), jnp.int32)))
  return idx


def knn_indices(points: jax.Array, centers: jax.Array, k: int) -> jax.Array:
  """``[B, G, k]`` indices of the ``k`` points nearest each centre (squared Euclidean), nearest first."""
  n = points.shape[1]
  if not 1 <= k <= n:
    raise ValueError(f'{k} nearest neighbours in clouds of {n} points: need 1 <= k <= {n}.')
  d = jnp.sum(jnp.square(centers[:, :, None, :] - points[:, None, :, :]), axis=-1)  # [B, G, N]
  _, idx = jax.lax.top_k(-d, k)
  return idx


def group_points(points: jax.Array, num_groups: int, group_size: int) -> tuple[jax.Array, jax.Array]:
  """``(neighborhood [B, G, K, 3], center [B, G, 3])``: Point-MAE's ``Group``."""
  center = jnp.take_along_axis(points, farthest_point_sample(points, num_groups)[..., None], axis=1)
  idx = knn_indices(points, center, group_size)
  b, g, k = idx.shape
  neighborhood = jnp.take_along_axis(points, idx.reshape(b, g * k)[..., None], axis=1).reshape(b, g, k, 3)
  return neighborhood - center[:, :, None, :], center
