"""GMML-style masking of groups of connected tokens (Atito et al., "GMML is All you Need"; SiT).

GMML corrupts "randomly groups of connected tokens", so that a group covers a meaningful part of an
object. The authors' SiT code (``GMML_drop_rand_patches``) places rectangles whose height and width are
drawn independently between one patch and 30% of the image side, aligned to the patch grid, at uniform
positions (cut off at the image border), overlapping freely, until the corrupted area reaches a fraction
drawn per image from ``U(0.5, max_replace)`` (``max_replace`` 0.7 by default).

Here, on the token grid:

* ``shape='rect'`` (default): that rectangle process, sides uniform in ``[1, max(1, int(max_side * side))]``
  tokens; ``shape='ellipse'``: rotated ellipses with semi-axes uniform in ``[0.5, max_side * side / 2]``
  (rounder blobs; the centre token is always inside, so every group is non-empty and connected).
* Groups are added while the count is below the target, for a fixed number of ``attempts`` (a
  ``lax.fori_loop`` per example under ``vmap``; jits once).
* The count is then made exact with :func:`mim_jax.masking.ops.exact_count` and ``fill='boundary'``:
  the overshoot of the last group is trimmed from the groups' boundaries, and a rare shortfall is topped
  up next to existing groups, so the groups stay connected.
* The per-image random fraction of the original is replaced by a fixed ``ratio`` (the visible count must be
  static); 0.6 is the mean of GMML's ``U(0.5, 0.7)``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from mim_jax.masking.core import RatioCounts, Grid, MaskInfo
from mim_jax.masking.ops import check_shape_settings, exact_count, per_example_keys, rectangle
from mim_jax.masking.registry import register

SHAPES = ('rect', 'ellipse')


@register('gmml')
@dataclasses.dataclass(frozen=True)
class GroupMask(RatioCounts):
  """GMML: random connected groups (rectangles or ellipses up to 30% of a side) until the ratio, exact."""

  grid: Grid
  ratio: float = 0.6
  shape: str = 'rect'  # 'rect' (GMML's rectangles) | 'ellipse' (rounder blobs)
  max_side: float = 0.3  # largest group side as a fraction of the grid side (GMML's max_block_sz)
  attempts: int | None = None  # groups tried per example; None = enough for 4x the mean group count
  fill: str = 'boundary'  # exact-count rule, see ops.exact_count

  def __post_init__(self):
    if self.shape not in SHAPES:
      raise ValueError(f'shape must be one of {SHAPES}, got {self.shape!r}.')
    if not 0.0 < self.max_side <= 1.0:
      raise ValueError(f'max_side must be in (0, 1], got {self.max_side}.')
    check_shape_settings(self.fill, self.attempts)
    _ = self.len_keep  # validates ratio

  @property
  def max_height(self) -> int:
    return max(1, int(self.max_side * self.grid.height))

  @property
  def max_width(self) -> int:
    return max(1, int(self.max_side * self.grid.width))

  @property
  def num_attempts(self) -> int:
    if self.attempts is not None:
      return self.attempts
    mean_area = (1 + self.max_height) / 2 * (1 + self.max_width) / 2
    if self.shape == 'ellipse':
      mean_area = math.pi * (0.5 + self.max_height / 2) / 2 * (0.5 + self.max_width / 2) / 2
    return max(16, math.ceil(4 * self.num_masked / max(mean_area, 1.0)))

  def _group(self, u: jax.Array) -> jax.Array:
    """One random group, ``[H, W]`` bool, from five uniform numbers ``u``."""
    h, w = self.grid.height, self.grid.width
    cy = jnp.floor(u[0] * h)  # uniform token row / column of the corner (rect) or centre (ellipse)
    cx = jnp.floor(u[1] * w)
    if self.shape == 'rect':
      gh = 1 + jnp.floor(u[2] * self.max_height)  # uniform in [1, max_height]
      gw = 1 + jnp.floor(u[3] * self.max_width)
      return rectangle(self.grid, cy, cx, gh, gw)
    ay = 0.5 + u[2] * max(0.0, self.max_height / 2 - 0.5)  # semi-axes uniform in [0.5, max_side / 2]
    ax = 0.5 + u[3] * max(0.0, self.max_width / 2 - 0.5)
    theta = u[4] * jnp.pi
    dy = jnp.arange(h, dtype=jnp.float32)[:, None] - cy
    dx = jnp.arange(w, dtype=jnp.float32)[None, :] - cx
    a = dy * jnp.cos(theta) + dx * jnp.sin(theta)
    b = -dy * jnp.sin(theta) + dx * jnp.cos(theta)
    return (a / ay) ** 2 + (b / ax) ** 2 <= 1.0

  def _one(self, rng: jax.Array) -> jax.Array:
    target = self.num_masked
    # All random numbers are drawn up front, so the loop body holds no PRNG code (faster to compile and run).
    u = jax.random.uniform(rng, (self.num_attempts, 5))

    def body(i, mask):
      grow = jnp.sum(mask) < target
      return jnp.where(grow, mask | self._group(u[i]), mask)

    shape = (self.grid.height, self.grid.width)
    return jax.lax.fori_loop(0, self.num_attempts, body, jnp.zeros(shape, bool))

  def groups(self, rng: jax.Array, batch_size: int) -> jax.Array:
    """The union-of-groups masks ``[B, N]`` (bool) before the exact-count fix-up."""
    k_groups, _ = jax.random.split(rng)
    masks = jax.vmap(self._one)(per_example_keys(k_groups, batch_size))
    return masks.reshape(batch_size, self.grid.num_tokens)

  def __call__(self, rng: jax.Array, batch_size: int) -> MaskInfo:
    _, k_fill = jax.random.split(rng)
    return exact_count(k_fill, self.groups(rng, batch_size), self.grid, self.len_keep, self.fill)
