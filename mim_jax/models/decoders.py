"""Decoders and prediction heads."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax.models.vit import (
  EMBED,
  MLP,
  _param_init,
  block_class,
  dense,
  layer_norm,
  sincos_2d_table,
  token_dense,
  token_init,
)


def decoder_input(module: nn.Module, latent: jax.Array, ids_restore: jax.Array) -> jax.Array:
  """MAE's decoder input, built inside ``module``'s compact method (its params are ``module``'s):
  ``decoder_embed`` -> append mask tokens for the hidden positions -> un-shuffle with ``ids_restore`` -> re-attach
  CLS -> add the sin-cos positions (CLS row zeros). ``module`` has ``width``, ``grid_hw`` and ``dtype``."""
  b, n = ids_restore.shape
  x = token_dense(dense(module.width, (EMBED, MLP), module.dtype, 'decoder_embed'), latent)
  token = module.param('mask_token', _param_init(token_init, (None, None, EMBED)), (1, 1, module.width))
  visible = x[:, 1:]
  fill = jnp.broadcast_to(token.astype(x.dtype), (b, n - visible.shape[1], module.width))
  x_ = jnp.take_along_axis(jnp.concatenate([visible, fill], axis=1), ids_restore[..., None], axis=1)
  pos = jnp.asarray(sincos_2d_table(module.width, *module.grid_hw))[None].astype(x.dtype)
  return jnp.concatenate([x[:, :1], x_ + pos], axis=1)


def decoder_tower(module: nn.Module, x: jax.Array, prefix: str, depth: int,
                  queries: jax.Array | None = None) -> jax.Array:
  """``depth`` transformer blocks named ``{prefix}_{i}`` inside ``module``'s compact method; with ``queries``
  (token indices ``[B, M]``) the last block computes only those tokens' outputs. ``module`` has ``num_heads``,
  ``mlp_ratio``, ``dtype``, ``attention_impl`` and ``remat``."""
  block = block_class(module.remat)
  for i in range(depth):
    last = i == depth - 1
    x = block(module.num_heads, module.mlp_ratio, 0.0, module.dtype, module.attention_impl,
              name=f'{prefix}_{i}')(x, True, queries if last else None)
  if queries is not None and depth == 0:
    x = jnp.take_along_axis(x, queries[:, :, None], axis=1)
  return x


class MAEDecoder(nn.Module):
  """MAE's light transformer decoder (D1).

  ``decoder_embed`` -> append mask tokens for the hidden positions -> un-shuffle with ``ids_restore`` ->
  re-attach CLS -> add the decoder's sin-cos positions (CLS row zeros) -> blocks -> norm -> linear to
  ``p*p*C`` -> drop CLS. Returns ``[B, N, p*p*C]`` for every token in raster order, or with ``query_ids``
  (``[B, M]`` raster indices) ``[B, M, p*p*C]`` for those tokens only: the same values, but the last block
  computes its queries, MLP, norm and head for those M tokens only (the train loss reads only masked ones).
  """

  width: int
  depth: int
  num_heads: int
  out_dim: int
  grid_hw: tuple[int, int]
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  attention_impl: str = 'auto'
  remat: bool | str = False  # see mim_jax.models.vit.REMAT_POLICIES

  @nn.compact
  def __call__(self, latent: jax.Array, ids_restore: jax.Array, query_ids: jax.Array | None = None) -> jax.Array:
    x = decoder_input(self, latent, ids_restore)
    queries = None if query_ids is None else query_ids + 1  # token 0 is CLS
    x = decoder_tower(self, x, 'decoder_blocks', self.depth, queries)
    x = layer_norm(self.dtype, 'decoder_norm')(x)
    x = token_dense(dense(self.out_dim, (EMBED, 'pixels'), self.dtype, 'decoder_pred'), x)
    return x if query_ids is not None else x[:, 1:]


class LinearPixelHead(nn.Module):
  """SimMIM-style linear head: each token's feature -> its patch's pixels."""

  out_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    return token_dense(dense(self.out_dim, (EMBED, 'pixels'), self.dtype, 'pred'), tokens)
