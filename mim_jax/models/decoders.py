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
    b, n = ids_restore.shape
    x = token_dense(dense(self.width, (EMBED, MLP), self.dtype, 'decoder_embed'), latent)
    token = self.param('mask_token', _param_init(token_init, (None, None, EMBED)), (1, 1, self.width))
    visible = x[:, 1:]
    fill = jnp.broadcast_to(token.astype(x.dtype), (b, n - visible.shape[1], self.width))
    x_ = jnp.take_along_axis(jnp.concatenate([visible, fill], axis=1), ids_restore[..., None], axis=1)
    pos = jnp.asarray(sincos_2d_table(self.width, *self.grid_hw))[None].astype(x.dtype)
    x = jnp.concatenate([x[:, :1], x_ + pos], axis=1)
    block = block_class(self.remat)
    queries = None if query_ids is None else query_ids + 1  # token 0 is CLS
    for i in range(self.depth):
      last = i == self.depth - 1
      x = block(self.num_heads, self.mlp_ratio, 0.0, self.dtype, self.attention_impl,
                name=f'decoder_blocks_{i}')(x, True, queries if last else None)
    if queries is not None and self.depth == 0:
      x = jnp.take_along_axis(x, queries[:, :, None], axis=1)
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
