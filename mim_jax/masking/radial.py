"""R-MAE's radial masking (Tayebati et al., "Sense Less, Generate More"): LiDAR voxels grouped by azimuth sector,
a fraction of the non-empty sectors kept, everything in the other sectors hidden.

Unlike the token-grid generators of this package the mask depends on the data (which sectors hold voxels) and
the number of kept voxels varies, so it is a function of the occupancy grid, not a registered generator: a
convolutional encoder takes the masked dense grid.

``radial_keep(rng, occupied, sector_deg=, ratio=, mode=)`` with ``occupied`` bool ``[B, Z, Y, X]`` (the grid
centred on the sensor in y and x):

* ``mode='sensor'`` (ours, the paper's idea): azimuths of the BEV cell centres about the sensor, all 360 degrees;
  each sample draws its own sectors: ``int((1 - ratio) * S)`` of its ``S`` non-empty sectors are kept.
* ``mode='official'``: the official code's rule (sinatayebati/Radial_MAE ``radial_mae.py``), quirks included:
  the angle is ``atan2(x_index, y_index)`` of the grid indices (non-negative, so only a 90 degree wedge occurs),
  the sectors are chosen once for the whole batch, and when the kept voxels are fewer than ``max(1, int(0.1 * V))``
  of the batch's ``V`` voxels, that many random voxels are kept instead.

Randomness enters as uniform scores (the kept sectors are the non-empty ones with the highest scores, the fallback
voxels the occupied ones with the highest), which is what ``random.sample`` draws, so a numpy reference of the
official loop given the same scores gives the same mask (tests/test_radial_mae.py).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

MODES = ('sensor', 'official')
RADIAL = 'radial'  # config.mask.name of the radial mask (a method draws it from its data; not in the registry)


def sector_table(grid_yx: tuple[int, int], sector_deg: float, mode: str) -> tuple[np.ndarray, int]:
  """int32 ``[Y, X]``: the sector of every BEV column, and the number of sectors."""
  y, x = grid_yx
  if mode == 'sensor':
    cy, cx = np.meshgrid(np.arange(y) + 0.5 - y / 2, np.arange(x) + 0.5 - x / 2, indexing='ij')
    angle = np.rad2deg(np.arctan2(cy, cx)) % 360.0
  elif mode == 'official':
    yi, xi = np.meshgrid(np.arange(y, dtype=np.float32), np.arange(x, dtype=np.float32), indexing='ij')
    angle = np.rad2deg(np.arctan2(xi, yi)).astype(np.float32) % np.float32(360.0)  # atan2(coords[:,3], coords[:,2])
  else:
    raise ValueError(f'radial mask mode must be one of {MODES}, got {mode!r}.')
  count = int(math.ceil(360.0 / sector_deg))
  return np.minimum(np.floor(angle / sector_deg), count - 1).astype(np.int32), count


@dataclasses.dataclass(frozen=True)
class RadialMask:
  keep: jax.Array  # bool [B, Z, Y, X]: the voxels the encoder sees
  kept_sectors: jax.Array  # bool [B, S]
  nonempty_sectors: jax.Array  # bool [B, S]
  hidden_columns: jax.Array  # bool [B, Y, X]: BEV columns in non-empty sectors that were not kept (the generation
  # target region; empty sectors hold nothing to generate)
  fallback: jax.Array  # bool [B]: the official 10% fallback replaced the sectors


def radial_keep(rng: jax.Array, occupied: jax.Array, *, sector_deg: float, ratio: float, mode: str = 'sensor',
                scores: tuple[jax.Array, jax.Array] | None = None) -> RadialMask:
  """See the module docstring. ``scores``: (sector scores ``[B or 1, S]``, voxel scores ``[B, Z, Y, X]``) in
  place of ``rng`` (tests pass the draws the reference uses)."""
  if not 0.0 <= ratio < 1.0:
    raise ValueError(f'the radial mask ratio must be in [0, 1), got {ratio}.')
  if not 0.0 < sector_deg <= 360.0:
    raise ValueError(f'sector_deg must be in (0, 360], got {sector_deg}.')
  occupied = occupied.astype(bool)
  b, _, gy, gx = occupied.shape
  table, count = sector_table((gy, gx), sector_deg, mode)
  per_batch = mode == 'official'
  onehot = jnp.asarray(np.eye(count, dtype=np.float32)[table.reshape(-1)])  # [Y*X, S]
  columns = occupied.any(axis=1).reshape(b, -1).astype(jnp.float32)
  nonempty = (columns @ onehot) > 0  # [B, S]
  if per_batch:  # official: one choice for the batch's voxels together
    nonempty = jnp.broadcast_to(nonempty.any(axis=0, keepdims=True), nonempty.shape)
  # int((1 - ratio) * n) exactly as Python's float64 arithmetic gives it, for every possible n
  select_ratio = 1.0 - float(ratio)
  keep_count = jnp.asarray([min(int(select_ratio * n), n) for n in range(count + 1)], jnp.int32)
  n_keep = keep_count[nonempty.sum(axis=1)]  # [B]
  if scores is None:
    sector_rng, voxel_rng = jax.random.split(rng)
    sector_scores = jax.random.uniform(sector_rng, (1 if per_batch else b, count))
    voxel_scores = jax.random.uniform(voxel_rng, occupied.shape)
  else:
    sector_scores, voxel_scores = scores
  sector_scores = jnp.broadcast_to(sector_scores, (b, count))
  ranked = jnp.where(nonempty, sector_scores, -1.0)
  rank = jnp.argsort(jnp.argsort(-ranked, axis=1), axis=1)  # 0 = highest score
  kept = nonempty & (rank < n_keep[:, None])
  kept_columns = kept[:, table.reshape(-1)].reshape(b, gy, gx)
  keep = occupied & kept_columns[:, None]
  fallback = jnp.zeros((b,), bool)
  if per_batch:
    total = occupied.sum()
    min_voxels = jnp.maximum(1, total // 10)  # max(1, int(0.1 * V)): 0.1 * V never rounds below V // 10
    short = keep.sum() < min_voxels
    flat = jnp.where(occupied, voxel_scores, -1.0).reshape(-1)
    voxel_rank = jnp.argsort(jnp.argsort(-flat)).reshape(occupied.shape)
    random_keep = occupied & (voxel_rank < min_voxels)
    keep = jnp.where(short, random_keep, keep)
    fallback = jnp.broadcast_to(short, (b,))
  hidden = (nonempty & ~kept)[:, table.reshape(-1)].reshape(b, gy, gx)
  return RadialMask(keep, kept, nonempty, hidden, fallback)
