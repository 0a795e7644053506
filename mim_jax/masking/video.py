"""Masks over video token grids (VideoMAE, VideoMAE V2): ``frames x height x width`` tokens, numbered time-major
(token ``t * h * w + r * w + c``, the order of a tubelet embedding's flattened output).

* ``tube`` (VideoMAE's encoder mask): one uniform spatial mask, the same in every frame (a "tube" through time), so
  a visible patch can never be copied from the same place in a neighbouring frame. ``int(ratio * h * w)`` masked
  per frame (the official floor: 176 of 196 at 0.9).
* ``running_cell`` (VideoMAE V2's decoder mask): every 2x2 cell of the grid holds ``int(4 * ratio)`` masked and
  the rest kept, as the cyclic sequence ``[1] * m + [0] * (4 - m)`` over the cell's raster order, shifted by one
  per frame; the only randomness is the phase (one of 4) per clip. At ratio 0.5 every frame keeps exactly half
  of its positions, and every position is kept in exactly 2 of any 4 consecutive frames. As the decoder mask,
  the *kept* (visible, ``ids_keep``) tokens are the ones the decoder reconstructs.

Both return visible tokens in time-major order (``mask_from_boolean``), as the official boolean indexing does.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mim_jax.masking.core import MaskInfo, mask_from_boolean
from mim_jax.masking.registry import register


@dataclasses.dataclass(frozen=True)
class VideoGrid:
  """Token grid of a clip: ``frames x height x width`` tokens (frames = tubelets along time)."""

  frames: int
  height: int
  width: int

  @property
  def num_tokens(self) -> int:
    return self.frames * self.height * self.width

  @property
  def frame_tokens(self) -> int:
    return self.height * self.width


def _video_grid(gen) -> VideoGrid:
  if not isinstance(gen.grid, VideoGrid):
    raise ValueError(f'mask generator {type(gen).__name__} masks video token grids: pass a VideoGrid(frames, '
                     f'height, width), got {gen.grid!r}.')
  return gen.grid


@register('tube')
@dataclasses.dataclass(frozen=True)
class TubeMask:
  """VideoMAE's tube masking: one random spatial mask repeated over every frame."""

  grid: VideoGrid
  ratio: float = 0.9
  video = True

  def __post_init__(self):
    _video_grid(self)
    if not 0.0 <= self.ratio < 1.0:
      raise ValueError(f'tube mask ratio must be in [0, 1), got {self.ratio}.')

  @property
  def masked_per_frame(self) -> int:
    return int(self.ratio * self.grid.frame_tokens)  # the official count (numpy float64, floor)

  @property
  def len_keep(self) -> int:
    return self.grid.frames * (self.grid.frame_tokens - self.masked_per_frame)

  @property
  def num_masked(self) -> int:
    return self.grid.frames * self.masked_per_frame

  def spatial_mask(self, rng: jax.Array, batch_size: int) -> jax.Array:
    """``[B, h * w]`` bool, True = masked: exactly ``masked_per_frame`` per row, uniform."""
    noise = jax.random.uniform(rng, (batch_size, self.grid.frame_tokens))
    rank = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
    return rank >= self.grid.frame_tokens - self.masked_per_frame

  def __call__(self, rng: jax.Array, batch_size: int) -> MaskInfo:
    spatial = self.spatial_mask(rng, batch_size)
    masked = jnp.tile(spatial, (1, self.grid.frames))  # time-major: frame t is columns [t*hw, (t+1)*hw)
    return mask_from_boolean(masked, self.len_keep)


def running_cell_pattern(grid: VideoGrid, masked_per_cell: int, phase: jax.Array) -> jax.Array:
  """``[B, T * h * w]`` bool, True = masked, for per-clip phases ``phase`` ``[B]`` in [0, 4): token (t, r, c)
  is masked when ``(j + phase + t + 1) % 4 < masked_per_cell``, ``j = 2 * (r % 2) + c % 2`` its place in its
  2x2 cell (the official ``Cell``: the pointer moves one step before each frame is read)."""
  t = jnp.arange(grid.frames)[:, None, None]
  j = 2 * (jnp.arange(grid.height)[None, :, None] % 2) + jnp.arange(grid.width)[None, None, :] % 2
  slot = (j[None] + phase[:, None, None, None] + t[None] + 1) % 4
  return (slot < masked_per_cell).reshape(phase.shape[0], -1)


@register('running_cell')
@dataclasses.dataclass(frozen=True)
class RunningCellMask:
  """VideoMAE V2's running-cell mask: in every 2x2 cell a cyclic pattern shifted by one per frame (random phase)."""

  grid: VideoGrid
  ratio: float = 0.5
  video = True

  def __post_init__(self):
    g = _video_grid(self)
    if not 0 < self.masked_per_cell < 4:
      raise ValueError(f'running_cell ratio {self.ratio} gives {self.masked_per_cell} masked of each 2x2 cell; it '
                       'must leave between 1 and 3 (a ratio of 0.25, 0.5 or 0.75).')
    if g.height % 2 or g.width % 2:
      raise ValueError(f'running_cell tiles 2x2 cells: the token grid {g.height}x{g.width} must have even sides.')

  @property
  def masked_per_cell(self) -> int:
    return int(4 * self.ratio)

  @property
  def len_keep(self) -> int:
    return self.grid.num_tokens * (4 - self.masked_per_cell) // 4

  def __call__(self, rng: jax.Array, batch_size: int) -> MaskInfo:
    phase = jax.random.randint(rng, (batch_size,), 0, 4)
    return mask_from_boolean(running_cell_pattern(self.grid, self.masked_per_cell, phase), self.len_keep)
