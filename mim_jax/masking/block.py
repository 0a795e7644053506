"""BEiT block-wise masking (Bao et al. 2022, "BEiT: BERT Pre-Training of Image Transformers", Algorithm 1).

Rectangles of random area and aspect ratio are added to the mask until the target count is reached:

  repeat: area s ~ U(min_block, min(max_block, remaining)); log aspect r ~ U(log a_min, log a_max);
          height = round(sqrt(s r)), width = round(sqrt(s / r)); uniform position inside the grid;
          accept the rectangle if it masks at least one new token and no more than ``remaining``.

BEiT's reference loops in Python until the target is reached or ten attempts in a row fail, so its
masked count varies from image to image. Here the loop is a ``lax.fori_loop`` over a *fixed* number of
attempts (``attempts``; each is one try of the BEiT inner loop) run per example under ``vmap``, so the
generator jits once and is pure. Because a rectangle is only accepted when it does not overshoot, the
count after the loop is at most the target; the (usually small) deficit is topped up by
:func:`mim_jax.masking.ops.exact_count` (``fill='random'`` by default, as asked for by the contract;
``fill='boundary'`` grows the blocks at their edges instead). ``blocks()`` returns the pure
union-of-rectangles mask before that step and ``rectangles()`` the rectangles themselves, for
inspection and tests.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from mim_jax.masking.core import RatioCounts, Grid, MaskInfo
from mim_jax.masking.ops import check_shape_settings, exact_count, per_example_keys, rectangle
from mim_jax.masking.registry import register


@register('block')
@dataclasses.dataclass(frozen=True)
class BlockMask(RatioCounts):
  """BEiT block-wise masking: random rectangles (>= min_block tokens, aspect 0.3..3.3) up to the ratio."""

  grid: Grid
  ratio: float = 0.4  # BEiT masks 75 of 196 tokens (~0.4); MAE-style use would pass 0.75
  min_block: int = 16  # minimum tokens per rectangle (BEiT, 14x14 grid)
  max_block: int | None = None  # maximum tokens per rectangle; None = the whole target (BEiT default)
  min_aspect: float = 0.3  # aspect ratios are log-uniform in [min_aspect, max_aspect]
  max_aspect: float | None = None  # None = 1 / min_aspect
  attempts: int | None = None  # rectangle tries per example; None = 10 per expected block, at least 32
  fill: str = 'random'  # how the final deficit is topped up: 'random' | 'boundary' (see ops.exact_count)

  def __post_init__(self):
    if self.min_block < 1:
      raise ValueError(f'min_block must be >= 1, got {self.min_block}.')
    if self.max_block is not None and self.max_block < self.min_block:
      raise ValueError(f'max_block ({self.max_block}) must be >= min_block ({self.min_block}).')
    if not 0.0 < self.min_aspect <= self._max_aspect:
      raise ValueError(f'need 0 < min_aspect <= max_aspect, got {self.min_aspect}, {self._max_aspect}.')
    check_shape_settings(self.fill, self.attempts)
    _ = self.len_keep  # validates ratio

  @property
  def _max_aspect(self) -> float:
    return self.max_aspect if self.max_aspect is not None else 1.0 / self.min_aspect

  @property
  def num_attempts(self) -> int:
    if self.attempts is not None:
      return self.attempts
    return max(32, 10 * math.ceil(self.num_masked / self.min_block))

  def _one(self, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One example: the union of accepted rectangles ``[H, W]`` (bool, at most ``num_masked`` tokens) and
    every attempt's rectangle ``[attempts, 5]`` int32 as (top, left, height, width, accepted)."""
    h, w = self.grid.height, self.grid.width
    target = self.num_masked
    max_block = target if self.max_block is None else self.max_block
    log_lo, log_hi = math.log(self.min_aspect), math.log(self._max_aspect)
    # All random numbers are drawn up front, so the loop body holds no PRNG code (faster to compile and run).
    u = jax.random.uniform(rng, (self.num_attempts, 4))

    def body(i, state):
      mask, rects = state
      u_area, u_aspect, u_top, u_left = u[i, 0], u[i, 1], u[i, 2], u[i, 3]
      remaining = target - jnp.sum(mask)
      budget = jnp.minimum(max_block, remaining)
      # BEiT draws random.uniform(min_block, budget); like Python's, the bounds may come in either order.
      lo = jnp.minimum(self.min_block, budget).astype(jnp.float32)
      hi = jnp.maximum(self.min_block, budget).astype(jnp.float32)
      area = lo + (hi - lo) * u_area
      aspect = jnp.exp(log_lo + (log_hi - log_lo) * u_aspect)
      bh = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
      bw = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
      fits = (bh >= 1) & (bw >= 1) & (bh < h) & (bw < w)  # BEiT requires strictly smaller than the grid
      top = jnp.floor(u_top * (jnp.maximum(h - bh, 0) + 1)).astype(jnp.int32)  # uniform in [0, h - bh]
      left = jnp.floor(u_left * (jnp.maximum(w - bw, 0) + 1)).astype(jnp.int32)
      rect = rectangle(self.grid, top, left, bh, bw)
      new = jnp.sum(rect & ~mask)
      accept = fits & (new > 0) & (new <= budget)
      rects = rects.at[i].set(jnp.stack([top, left, bh, bw, accept.astype(jnp.int32)]))
      return jnp.where(accept, mask | rect, mask), rects

    init = (jnp.zeros((h, w), bool), jnp.zeros((self.num_attempts, 5), jnp.int32))
    return jax.lax.fori_loop(0, self.num_attempts, body, init)

  def rectangles(self, rng: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """Before the exact-count fix-up: the union-of-rectangles masks ``[B, N]`` (bool) and every attempt's
    rectangle ``[B, attempts, 5]`` as (top, left, height, width, accepted)."""
    k_blocks, _ = jax.random.split(rng)
    masks, rects = jax.vmap(self._one)(per_example_keys(k_blocks, batch_size))
    return masks.reshape(batch_size, self.grid.num_tokens), rects

  def blocks(self, rng: jax.Array, batch_size: int) -> jax.Array:
    """The union-of-rectangles masks ``[B, N]`` (bool) before the exact-count fix-up."""
    return self.rectangles(rng, batch_size)[0]

  def __call__(self, rng: jax.Array, batch_size: int) -> MaskInfo:
    _, k_fill = jax.random.split(rng)
    return exact_count(k_fill, self.blocks(rng, batch_size), self.grid, self.len_keep, self.fill)
