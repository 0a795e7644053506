"""Grid-wise masking from the MAE paper's sampling ablation (He et al. 2022, Figure 6): keep one token of every
``stride x stride`` cell, the same regular lattice for every image.

At the paper's 75% on a 14x14 grid that is exactly every other row and column. The visible count is MAE's
static ``int(N * (1 - ratio))``: when the lattice has more tokens than that (an odd grid side: 16 lattice tokens
of a 7x7 grid, 12 visible at 75%), the extra lattice tokens are masked at random; when it has fewer, random
off-lattice tokens are kept. ``offset='random'`` moves the lattice by a random offset per image instead of
keeping it at the top-left token.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mim_jax.masking.core import Grid, MaskInfo, RatioCounts, mask_from_scores
from mim_jax.masking.registry import register

OFFSETS = ('fixed', 'random')


@register('grid')
@dataclasses.dataclass(frozen=True)
class GridMask(RatioCounts):
  grid: Grid
  ratio: float = 0.75
  stride: int = 2  # one kept token per stride x stride cell (2 at 75%)
  offset: str = 'fixed'  # 'fixed' (the paper's lattice) | 'random' (a random lattice offset per image)

  def __post_init__(self):
    if self.stride < 1:
      raise ValueError(f'stride must be >= 1, got {self.stride}.')
    if self.offset not in OFFSETS:
      raise ValueError(f'offset must be one of {OFFSETS}, got {self.offset!r}.')
    _ = self.len_keep  # validates ratio

  def __call__(self, rng: jax.Array, batch_size: int) -> MaskInfo:
    offset_rng, tie_rng = jax.random.split(rng)
    h, w = self.grid.height, self.grid.width
    if self.offset == 'random':
      offsets = jax.random.randint(offset_rng, (batch_size, 2), 0, self.stride)
    else:
      offsets = jnp.zeros((batch_size, 2), jnp.int32)
    rows = (jnp.arange(h)[None, :, None] - offsets[:, 0, None, None]) % self.stride == 0
    cols = (jnp.arange(w)[None, None, :] - offsets[:, 1, None, None]) % self.stride == 0
    on_lattice = (rows & cols).reshape(batch_size, h * w)
    # Lattice tokens score in [0, 1), the others in [1, 2): the smallest len_keep are kept, ties broken at random.
    scores = jax.random.uniform(tie_rng, (batch_size, h * w)) + jnp.where(on_lattice, 0.0, 1.0)
    return mask_from_scores(scores, self.len_keep)
