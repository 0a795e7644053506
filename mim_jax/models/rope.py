"""Rotary position embeddings (RoPE): rotations of query/key channel pairs by angles proportional to a token's
position, so that their dot products depend on the relative offset only.

Two forms, each with its own channel pairing (a table is ``[..., N, 2, head_dim]``: the cos and sin of every
channel's angle; :func:`apply_rope` needs the layout the table was made for):

* 2-D, CroCo v2's (``models/pos_embed.py: RoPE2D``), layout ``'half'``: each head's channels are split in two
  halves, the first rotating with the token's row index, the second with its column index. Within a half of ``D``
  channels, channel pairs ``(i, i + D/2)`` rotate by ``pos * f_i`` with ``f_i = F0 / base ** (2 i / D)``,
  ``i < D/2`` (the "rotate half" layout).
* 1-D, LLaMA's (iLLaMA ``models/illama.py: apply_rotary_emb``), layout ``'interleaved'``: adjacent channels
  ``(2i, 2i + 1)`` are one complex number rotated by ``pos * theta_i``, ``theta_i = 1 / base ** (2 i / head_dim)``,
  over the flattened sequence position.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def grid_positions(grid_h: int, grid_w: int) -> jax.Array:
  """int32 ``[grid_h * grid_w, 2]``: (row, column) of each token in raster order."""
  rows, cols = jnp.divmod(jnp.arange(grid_h * grid_w, dtype=jnp.int32), grid_w)
  return jnp.stack([rows, cols], axis=-1)


def _one_axis(pos: jax.Array, dim: int, base: float, f0: float) -> tuple[jax.Array, jax.Array]:
  inv_freq = f0 / (base ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
  angles = pos.astype(jnp.float32)[..., None] * inv_freq  # [..., dim / 2]
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def rope_2d_table(positions: jax.Array, head_dim: int, base: float = 100.0, f0: float = 1.0) -> jax.Array:
  """float32 ``[..., N, 2, head_dim]``: the cos (index 0) and sin (1) of every channel of a head for tokens at
  ``positions`` ``[..., N, 2]`` (row, column)."""
  if head_dim % 4:
    raise ValueError(f'2-D RoPE needs a head width divisible by 4 (two axes, channel pairs), got {head_dim}.')
  half = head_dim // 2
  cy, sy = _one_axis(positions[..., 0], half, base, f0)
  cx, sx = _one_axis(positions[..., 1], half, base, f0)
  return jnp.stack([jnp.concatenate([cy, cx], -1), jnp.concatenate([sy, sx], -1)], axis=-2)


def rope_1d_table(positions: jax.Array, head_dim: int, base: float = 10000.0) -> jax.Array:
  """float32 ``[..., N, 2, head_dim]`` for the ``'interleaved'`` layout: cos (index 0) and sin (1) of
  ``pos * theta_i`` repeated over each channel pair ``(2i, 2i + 1)``, for tokens at sequence ``positions``
  ``[..., N]``."""
  if head_dim % 2:
    raise ValueError(f'1-D RoPE pairs channels, so the head width must be even, got {head_dim}.')
  theta = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles = jnp.repeat(positions.astype(jnp.float32)[..., None] * theta, 2, axis=-1)  # [..., N, head_dim]
  return jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=-2)


ROPE_LAYOUTS = ('half', 'interleaved')


def apply_rope(t: jax.Array, table: jax.Array, layout: str = 'half') -> jax.Array:
  """Rotates queries or keys ``[B, N, H, hd]`` by ``table`` ``[B or 1, N, 2, hd]`` (:func:`rope_2d_table` for
  the ``'half'`` layout, :func:`rope_1d_table` for ``'interleaved'``)."""
  *lead, hd = t.shape
  if layout == 'half':
    parts = t.reshape(*lead, 2, 2, hd // 4)  # (row half, column half) x (first, second quarter of the half)
    rotated = jnp.stack([-parts[..., 1, :], parts[..., 0, :]], axis=-2).reshape(t.shape)
  elif layout == 'interleaved':
    pairs = t.reshape(*lead, hd // 2, 2)  # (x_2i, x_2i+1) -> (-x_2i+1, x_2i): multiplication by i
    rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(t.shape)
  else:
    raise ValueError(f'RoPE layout must be one of {ROPE_LAYOUTS}, got {layout!r}.')
  cos, sin = (table[..., i, :][:, :, None, :].astype(jnp.float32) for i in (0, 1))
  return (t.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(t.dtype)
