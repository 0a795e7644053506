"""MAE's uniform random masking (He et al. 2022): keep the tokens with the smallest uniform noise."""

from __future__ import annotations

import dataclasses

import jax

from mim_jax.masking.core import RatioCounts, Grid, MaskInfo, mask_from_scores
from mim_jax.masking.registry import register


@register('random')
@dataclasses.dataclass(frozen=True)
class RandomMask(RatioCounts):
  """``ratio`` sets the counts by MAE's rule, ``int(N * (1 - ratio))`` visible; ``count='masked'`` by CroCo's,
  ``int(N * ratio)`` masked (one more visible token when ``N * ratio`` is not whole); ``num_visible`` sets the
  visible count directly (CropMAE keeps 2 of 196 patches, a ratio that rounds to zero visible on small grids)."""

  grid: Grid
  ratio: float = 0.75
  num_visible: int | None = None
  count: str = 'visible'  # which count truncates: 'visible' (MAE) or 'masked' (CroCo)

  def __post_init__(self):
    n = self.grid.num_tokens
    if self.count not in ('visible', 'masked'):
      raise ValueError(f"mask count must be 'visible' (MAE's rounding) or 'masked' (CroCo's), got {self.count!r}.")
    if self.num_visible is not None and not (isinstance(self.num_visible, int) and 1 <= self.num_visible <= n):
      raise ValueError(f'mask num_visible must be an int in [1, {n}] (the grid has {n} tokens), '
                       f'got {self.num_visible!r}.')
    self.len_keep  # noqa: B018 - a clear error now for a ratio that leaves no visible token

  @property
  def len_keep(self) -> int:
    n = self.grid.num_tokens
    if self.num_visible is not None:
      return int(self.num_visible)
    if self.count == 'masked':
      if not 0.0 <= self.ratio < 1.0:
        raise ValueError(f'mask_ratio must be in [0, 1), got {self.ratio}.')
      return n - int(self.ratio * n)
    return super().len_keep

  def from_noise(self, noise: jax.Array) -> MaskInfo:
    """The reference semantics with explicit per-token noise ``[B, N]`` (smallest noise is kept)."""
    if noise.ndim != 2 or noise.shape[1] != self.grid.num_tokens:
      raise ValueError(f'noise must be [batch, {self.grid.num_tokens}], got {noise.shape}.')
    return mask_from_scores(noise, self.len_keep)

  def __call__(self, rng: jax.Array, batch_size: int) -> MaskInfo:
    return self.from_noise(jax.random.uniform(rng, (batch_size, self.grid.num_tokens)))
