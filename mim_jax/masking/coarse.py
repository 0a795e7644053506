"""SimMIM's coarse random masking (Xie et al. 2022, "SimMIM: A Simple Framework for Masked Image Modeling").

SimMIM masks at a *mask-patch* size larger than the model's token patch: with 32 px mask patches over
16 px tokens (ViT-B/16 at 224 px) the image is cut into a 7x7 grid of cells, ``ceil(49 * 0.6) = 30``
random cells are masked, and each cell's mask is repeated over its ``2x2`` tokens. The reference
(``MaskGenerator`` in the SimMIM repository) asserts that the sizes divide each other.

Implementation: every cell gets a random rank (a permutation), every token inherits its cell's rank plus
a tie-break noise below one, and the tokens with the highest scores are masked
(:func:`mask_from_scores`). Whole cells are therefore masked in random order, and when the masked count
is not a multiple of the cell size exactly one cell is masked partially (its tokens chosen at random).

How many tokens are masked (``rounding``):

* ``'simmim'`` (default): ``ceil(cells * ratio)`` whole cells, as in the reference; the effective ratio
  can be a little above ``ratio`` (0.612 for 30 of 49 cells). If the token grid is not a multiple of the
  cell size, the border cells are cropped, and ``ceil(N * ratio)`` tokens are masked instead.
* ``'mae'``: ``N - int(N * (1 - ratio))`` tokens, the MAE formula shared with the other generators, so
  the visible count matches a ``random`` mask of the same ratio; one cell may be partial.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.masking.core import Grid, MaskInfo, mask_from_scores, num_visible
from mim_jax.masking.registry import register

ROUNDINGS = ('simmim', 'mae')


@register('coarse')
@dataclasses.dataclass(frozen=True)
class CoarseMask:
  """SimMIM: random masking of coarse cells (mask_patch_size / token_patch_size tokens a side), upsampled."""

  grid: Grid
  ratio: float = 0.6
  mask_patch_size: int = 32  # pixels per mask cell side (SimMIM default)
  token_patch_size: int = 16  # pixels per token side (ViT-B/16); SimMIM's Swin uses 4
  scale: int | None = None  # tokens per cell side; overrides mask_patch_size / token_patch_size
  rounding: str = 'simmim'  # 'simmim': ceil(cells * ratio) whole cells | 'mae': N - int(N * (1 - ratio))

  def __post_init__(self):
    if self.rounding not in ROUNDINGS:
      raise ValueError(f'rounding must be one of {ROUNDINGS}, got {self.rounding!r}.')
    if self.scale is None and self.mask_patch_size % self.token_patch_size:
      raise ValueError(f'mask_patch_size ({self.mask_patch_size}) must be a multiple of token_patch_size '
                       f'({self.token_patch_size}); or pass scale=<tokens per cell side>.')
    if self.cell_size < 1:
      raise ValueError(f'the cell must cover at least one token, got scale={self.cell_size}.')
    if not 0.0 <= self.ratio < 1.0:
      raise ValueError(f'ratio must be in [0, 1), got {self.ratio}.')
    if self.len_keep < 1:
      raise ValueError(f'ratio={self.ratio} leaves no visible token with {self.cell_size}x{self.cell_size} cells.')

  @property
  def cell_size(self) -> int:
    """Tokens per cell side."""
    return self.scale if self.scale is not None else self.mask_patch_size // self.token_patch_size

  @property
  def coarse_grid(self) -> Grid:
    s = self.cell_size
    return Grid(-(-self.grid.height // s), -(-self.grid.width // s))

  @property
  def divisible(self) -> bool:
    s = self.cell_size
    return self.grid.height % s == 0 and self.grid.width % s == 0

  @property
  def num_masked(self) -> int:
    n = self.grid.num_tokens
    if self.rounding == 'mae':
      return n - num_visible(n, self.ratio)
    # The reference's own expression, float error included: int(np.ceil(cells * ratio)) masks 25 of 40 cells at
    # 0.6 (0.6 * 40 = 24.000000000000004), and so do we.
    if self.divisible:
      return math.ceil(self.coarse_grid.num_tokens * self.ratio) * self.cell_size**2
    return math.ceil(n * self.ratio)

  @property
  def len_keep(self) -> int:
    return self.grid.num_tokens - self.num_masked

  def cell_index(self) -> np.ndarray:
    """``[N]`` int: the coarse cell of every token (raster order on both grids)."""
    s = self.cell_size
    rows = np.arange(self.grid.height) // s
    cols = np.arange(self.grid.width) // s
    return (rows[:, None] * self.coarse_grid.width + cols[None, :]).reshape(-1)

  def from_permutation(self, permutation: jax.Array) -> MaskInfo:
    """The reference's mask from its draw: ``permutation`` ``[B, cells]`` is what ``MaskGenerator`` got from
    ``np.random.permutation(cells)``; the cells ``permutation[:, :ceil(cells * ratio)]`` are masked, each over its
    ``scale x scale`` tokens. Needs the reference's setting: a token grid divisible into cells, ``'simmim'``
    rounding. (Replays official draws in the parity check; training uses ``__call__``.)"""
    if not self.divisible or self.rounding != 'simmim':
      raise ValueError('from_permutation replays the SimMIM reference, which needs a token grid divisible into '
                       f"cells and rounding='simmim' (got grid {self.grid}, cells of {self.cell_size}, "
                       f'rounding={self.rounding!r}).')
    c = self.coarse_grid.num_tokens
    permutation = jnp.asarray(permutation)
    if permutation.ndim != 2 or permutation.shape[1] != c:
      raise ValueError(f'permutation must be [batch, {c}] (one per image over the {c} cells), got {permutation.shape}.')
    masked_cells = self.num_masked // self.cell_size**2
    # Score 1 for masked cells, 0 for the others; mask_from_scores keeps the smallest, in raster order.
    position = jnp.argsort(permutation, axis=1)  # where each cell appears in the permutation
    cell_masked = (position < masked_cells).astype(jnp.float32)
    return mask_from_scores(jnp.take(cell_masked, jnp.asarray(self.cell_index()), axis=1), self.len_keep)

  def __call__(self, rng: jax.Array, batch_size: int) -> MaskInfo:
    k_cells, k_tie = jax.random.split(rng)
    c = self.coarse_grid.num_tokens
    # A uniformly random rank per cell (argsort of uniform noise is a uniform random permutation).
    ranks = jnp.argsort(jax.random.uniform(k_cells, (batch_size, c)), axis=1).astype(jnp.float32)
    tie = jax.random.uniform(k_tie, (batch_size, self.grid.num_tokens), maxval=0.5)
    # mask_from_scores keeps the smallest scores, so the masked tokens are the highest-ranked cells.
    scores = jnp.take(ranks, jnp.asarray(self.cell_index()), axis=1) + tie
    return mask_from_scores(scores, self.len_keep)
