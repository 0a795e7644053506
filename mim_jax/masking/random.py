"""MAE's uniform random masking (He et al. 2022): keep the tokens with the smallest uniform noise."""

from __future__ import annotations

import dataclasses

import jax

from mim_jax.masking.core import RatioCounts, Grid, MaskInfo, mask_from_scores
from mim_jax.masking.registry import register


@register('random')
@dataclasses.dataclass(frozen=True)
class RandomMask(RatioCounts):
  grid: Grid
  ratio: float = 0.75

  def from_noise(self, noise: jax.Array) -> MaskInfo:
    """The reference semantics with explicit per-token noise ``[B, N]`` (smallest noise is kept)."""
    if noise.ndim != 2 or noise.shape[1] != self.grid.num_tokens:
      raise ValueError(f'noise must be [batch, {self.grid.num_tokens}], got {noise.shape}.')
    return mask_from_scores(noise, self.len_keep)

  def __call__(self, rng: jax.Array, batch_size: int) -> MaskInfo:
    return self.from_noise(jax.random.uniform(rng, (batch_size, self.grid.num_tokens)))
