"""Building blocks shared by the structured mask generators (block, coarse, colormae, gmml).

* :func:`per_example_keys` splits one rng into one key per example (generators vmap over them).
* :func:`rectangle` rasterizes an axis-aligned rectangle on the token grid (jit-able, traced sizes).
* :func:`exact_count` turns an approximate boolean mask into a :class:`MaskInfo` with exactly
  ``N - len_keep`` masked tokens, topping up or trimming with a documented rule.
* :func:`neighbour_agreement` is the statistic the tests and the CLI use to tell generators apart:
  the fraction of 4-neighbour token pairs whose mask values are equal.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.masking.core import Grid, MaskInfo, mask_from_scores

FILL_MODES = ('random', 'boundary')


def per_example_keys(rng: jax.Array, batch_size: int) -> jax.Array:
  """One independent key per example (``jax.random.split``; works with typed and raw keys)."""
  return jax.random.split(rng, batch_size)


def rectangle(grid: Grid, top: jax.Array, left: jax.Array, height: jax.Array, width: jax.Array) -> jax.Array:
  """Boolean ``[H, W]`` mask of rows ``[top, top + height)`` and columns ``[left, left + width)``.

  The bounds may be traced scalars; parts outside the grid are simply cut off.
  """
  rows = jnp.arange(grid.height)[:, None]
  cols = jnp.arange(grid.width)[None, :]
  return (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)


def _shift(x: jax.Array, axis: int, step: int) -> jax.Array:
  """Shifts a boolean ``[B, H, W]`` array by one cell along ``axis`` and fills the gap with False."""
  pad = [(0, 0)] * x.ndim
  if step > 0:
    pad[axis] = (1, 0)
    sl = [slice(None)] * x.ndim
    sl[axis] = slice(0, x.shape[axis])
  else:
    pad[axis] = (0, 1)
    sl = [slice(None)] * x.ndim
    sl[axis] = slice(1, x.shape[axis] + 1)
  return jnp.pad(x, pad)[tuple(sl)]


def four_neighbours_any(x: jax.Array) -> jax.Array:
  """``[B, H, W]`` boolean: True where at least one 4-neighbour of the cell is True."""
  return (_shift(x, 1, 1) | _shift(x, 1, -1) | _shift(x, 2, 1) | _shift(x, 2, -1))


def check_shape_settings(fill: str, attempts) -> None:
  """The settings the shape generators (block, gmml) share: the exact-count ``fill`` rule and ``attempts``."""
  if fill not in FILL_MODES:
    raise ValueError(f'fill must be one of {FILL_MODES}, got {fill!r}.')
  if attempts is not None and attempts < 1:
    raise ValueError(f'attempts must be >= 1, got {attempts}.')


def exact_count(rng: jax.Array, masked: jax.Array, grid: Grid, len_keep: int, fill: str = 'random') -> MaskInfo:
  """Makes a boolean mask ``[B, N]`` (True = masked) exact: ``N - len_keep`` masked tokens in every row.

  Every token gets the score ``2 * masked + tie`` with ``tie`` in ``[0, 1)``, and the ``len_keep``
  smallest scores are kept (:func:`mask_from_scores`). So a row with too few masked tokens keeps all of
  them masked and masks the unmasked tokens with the largest ``tie`` (top-up); a row with too many keeps
  the masked tokens with the smallest ``tie`` visible (trim). ``fill`` chooses ``tie``:

  * ``'random'``: uniform noise, so top-up and trim pick tokens uniformly at random.
  * ``'boundary'``: top-up prefers unmasked tokens that touch the mask (4-neighbourhood) and trimming
    prefers masked tokens on the mask's boundary, so groups grow or shrink at their edges instead of
    leaving isolated specks; ties are broken at random.
  """
  if fill not in FILL_MODES:
    raise ValueError(f'fill must be one of {FILL_MODES}, got {fill!r}.')
  b, n = masked.shape
  u = jax.random.uniform(rng, (b, n))
  if fill == 'random':
    tie = u
  else:
    m2 = masked.reshape(b, grid.height, grid.width)
    touches_mask = four_neighbours_any(m2).reshape(b, n)
    on_boundary = four_neighbours_any(~m2).reshape(b, n)
    tie = jnp.where(masked, 0.5 * (~on_boundary) + 0.5 * u, 0.5 * touches_mask + 0.5 * u)
  scores = 2.0 * masked.astype(jnp.float32) + tie
  return mask_from_scores(scores, len_keep)


def neighbour_agreement(mask, grid: Grid) -> np.ndarray:
  """Per-example fraction of horizontally or vertically adjacent token pairs with equal mask values.

  ``mask`` is ``[B, N]`` (or ``[N]``), 1/True = masked. For i.i.d. masking with ratio ``r`` the
  expectation is ``r**2 + (1 - r)**2`` (0.625 at r = 0.75); spatially smooth masks score higher,
  masks that avoid masked neighbours (blue noise, checkerboard-like) score lower.
  """
  m = np.asarray(mask).astype(bool)
  if m.ndim == 1:
    m = m[None]
  m = m.reshape(m.shape[0], grid.height, grid.width)
  same_h = (m[:, :, 1:] == m[:, :, :-1]).reshape(m.shape[0], -1)
  same_v = (m[:, 1:, :] == m[:, :-1, :]).reshape(m.shape[0], -1)
  pairs = same_h.shape[1] + same_v.shape[1]
  return (same_h.sum(1) + same_v.sum(1)) / pairs


def random_agreement(ratio: float) -> float:
  """Expected :func:`neighbour_agreement` of i.i.d. masking with masked fraction ``ratio``."""
  return ratio**2 + (1.0 - ratio) ** 2
