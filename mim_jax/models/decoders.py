"""Decoders and prediction heads."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import numpy as np

from mim_jax.models.vit import (
  EMBED,
  HEADS,
  MLP,
  Block,
  DropPath,
  Mlp,
  _param_init,
  block_class,
  dense,
  layer_norm,
  layer_scale_param,
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
              name=f'{prefix}_{i}')(x, True, queries if last else None, False)
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


# ---------------------------------------------------------------------------------------------------------------
# CAE (Chen et al., IJCV 2023): the latent regressor and the decoder on the predicted latents.


class CrossAttention(nn.Module):
  """Queries ``[B, M, D]`` attend to keys ``[B, S, D]`` / values ``[B, S, D]`` (separate inputs): separate q/k/v
  projections, no k bias (CAE's; a k bias would shift every logit of a query alike), then ``proj``."""

  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    b, m, d = q.shape
    hd = d // self.num_heads
    if d % self.num_heads:
      raise ValueError(f'width {d} is not divisible by num_heads {self.num_heads}.')
    q = token_dense(dense(d, (EMBED, HEADS), self.dtype, 'q'), q).reshape(b, m, self.num_heads, hd)
    k = token_dense(nn.Dense(d, use_bias=False, dtype=self.dtype, name='k',
                             kernel_init=_param_init(nn.initializers.xavier_uniform(), (EMBED, HEADS))), k)
    v = token_dense(dense(d, (EMBED, HEADS), self.dtype, 'v'), v)
    s = k.shape[1]
    k, v = k.reshape(b, s, self.num_heads, hd), v.reshape(b, s, self.num_heads, hd)
    logits = jnp.einsum('bqhd,bkhd->bhqk', q * (hd ** -0.5), k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(b, m, d)
    return token_dense(dense(d, (HEADS, EMBED), self.dtype, 'proj'), out)


class RegressorBlock(nn.Module):
  """One block of CAE's latent regressor. The masked queries ``x_q`` attend to ``x_kv`` (the visible latents and
  the current queries): ``x = x_q + g1 * CA(LN_q(x_q + p_q), LN_k(x_kv + p_kv), LN_v(x_kv))``, then the stream is
  *replaced* by its norm, ``x = LN2(x)``, and ``x = x + g2 * MLP(x)`` (their order)."""

  num_heads: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  layer_scale: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_q, x_kv, pos_q, pos_kv, deterministic: bool = True) -> jax.Array:
    d = x_q.shape[-1]
    y = CrossAttention(self.num_heads, self.dtype, name='cross_attn')(
        layer_norm(self.dtype, 'norm1_q')(x_q + pos_q), layer_norm(self.dtype, 'norm1_k')(x_kv + pos_kv),
        layer_norm(self.dtype, 'norm1_v')(x_kv))
    if self.layer_scale:
      y = y * layer_scale_param(self, 'gamma_1_cross', d, self.layer_scale, y.dtype)
    x = x_q + DropPath(self.drop_path, name='drop_path1')(y, deterministic)
    x = layer_norm(self.dtype, 'norm2_cross')(x)
    y = Mlp(int(d * self.mlp_ratio), self.dtype, name='mlp_cross')(x)
    if self.layer_scale:
      y = y * layer_scale_param(self, 'gamma_2_cross', d, self.layer_scale, y.dtype)
    return x + DropPath(self.drop_path, name='drop_path2')(y, deterministic)


class LatentRegressor(nn.Module):
  """CAE's latent contextual regressor: ``depth`` :class:`RegressorBlock` s from the masked queries and the visible
  latents (no CLS) with their positions, then a final norm. Returns the predicted latents ``[B, M, D]``."""

  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0  # the last block's rate (linear from 0, as in the encoder)
  layer_scale: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, queries, visible, pos_masked, pos_visible, deterministic: bool = True) -> jax.Array:
    rates = np.linspace(0.0, self.drop_path, self.depth)  # one block: rate 0, as their torch.linspace
    pos_kv = jnp.concatenate([pos_visible, pos_masked], axis=1)
    x = queries
    for i in range(self.depth):
      x = RegressorBlock(self.num_heads, self.mlp_ratio, float(rates[i]), self.layer_scale, self.dtype,
                         name=f'regressor_blocks_{i}')(x, jnp.concatenate([visible, x], axis=1), pos_masked, pos_kv,
                                                       deterministic)
    return layer_norm(self.dtype, 'norm')(x)


class CAEDecoder(nn.Module):
  """CAE's decoder on the predicted latents of the masked patches only: ``+ positions`` -> ``depth`` ViT blocks
  (LayerScale) -> norm -> linear head to ``out_dim``."""

  depth: int
  num_heads: int
  out_dim: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  layer_scale: float = 0.0
  dtype: Any = jnp.float32
  attention_impl: str = 'auto'

  @nn.compact
  def __call__(self, latents: jax.Array, pos: jax.Array, deterministic: bool = True) -> jax.Array:
    rates = np.linspace(0.0, self.drop_path, self.depth)  # one block: rate 0, as their torch.linspace
    x = latents + pos
    for i in range(self.depth):
      x = Block(self.num_heads, self.mlp_ratio, float(rates[i]), self.dtype, self.attention_impl, self.layer_scale,
                name=f'decoder_blocks_{i}')(x, deterministic)
    x = layer_norm(self.dtype, 'norm')(x)
    return token_dense(dense(self.out_dim, (EMBED, 'pixels'), self.dtype, 'head'), x)
