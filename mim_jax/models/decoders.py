"""Decoders and prediction heads."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import numpy as np

from mim_jax.models.rope import apply_rope
from mim_jax.models.vit import (
  EMBED,
  HEADS,
  MLP,
  Attention,
  Block,
  DropPath,
  Mlp,
  _param_init,
  block_class,
  dense,
  gelu_exact,
  layer_norm,
  layer_scale_param,
  sincos_1d_table,
  sincos_2d_table,
  token_dense,
  token_init,
)


def decoder_input(module: nn.Module, latent: jax.Array, ids_restore: jax.Array,
                  embed: nn.Dense | None = None) -> jax.Array:
  """MAE's decoder input, built inside ``module``'s compact method (its params are ``module``'s):
  ``decoder_embed`` -> append mask tokens for the hidden positions -> un-shuffle with ``ids_restore`` -> re-attach
  CLS -> add the sin-cos positions (CLS row zeros). ``module`` has ``width``, ``grid_hw`` and ``dtype``;
  ``embed``: the ``decoder_embed`` layer when the caller shares it with another input (two-view decoders)."""
  embed = embed or dense(module.width, (EMBED, MLP), module.dtype, 'decoder_embed')
  x = token_dense(embed, latent)
  x_ = with_mask_tokens(module, x[:, 1:], ids_restore)
  pos = jnp.asarray(sincos_2d_table(module.width, *module.grid_hw))[None].astype(x.dtype)
  return jnp.concatenate([x[:, :1], x_ + pos], axis=1)


def with_mask_tokens(module: nn.Module, visible: jax.Array, ids_restore: jax.Array) -> jax.Array:
  """The visible tokens ``[B, K, W]`` (no CLS) back in raster order with ``module``'s learned ``mask_token`` in
  the ``N - K`` hidden places (MAE's append + un-shuffle), inside ``module``'s compact method."""
  b, n = ids_restore.shape
  token = module.param('mask_token', _param_init(token_init, (None, None, EMBED)), (1, 1, visible.shape[-1]))
  fill = jnp.broadcast_to(token.astype(visible.dtype), (b, n - visible.shape[1], visible.shape[-1]))
  return jnp.take_along_axis(jnp.concatenate([visible, fill], axis=1), ids_restore[..., None], axis=1)


def decoder_tower(module: nn.Module, x: jax.Array, prefix: str, depth: int,
                  queries: jax.Array | None = None) -> jax.Array:
  """``depth`` transformer blocks named ``{prefix}_{i}`` inside ``module``'s compact method; with ``queries``
  (token indices ``[B, M]``) the last block computes only those tokens' outputs. ``module`` has ``num_heads``,
  ``mlp_ratio``, ``dtype``, ``attention_impl`` and ``remat`` (and optionally ``qkv_bias``, default 'qkv')."""
  block = block_class(module.remat)
  for i in range(depth):
    last = i == depth - 1
    x = block(module.num_heads, module.mlp_ratio, 0.0, module.dtype, module.attention_impl,
              qkv_bias=getattr(module, 'qkv_bias', 'qkv'), name=f'{prefix}_{i}')(x, True, queries if last else None,
                                                                                False)
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


class VideoMAEDecoder(nn.Module):
  """VideoMAE's decoder (V1, and V2's dual masking): ``decoder_embed`` (no bias) on the encoder's visible tokens
  plus the decoder's fixed 1-D sinusoid positions, then a learned ``mask_token`` plus the positions of every token
  to reconstruct (``ids_decode``: V1 the encoder-masked ones, V2 the running cell's kept ones, which may include
  tokens the encoder saw: they then appear twice), blocks over the whole sequence, norm and a linear head on the
  reconstructed tokens only. Returns ``[B, M, out_dim]`` in ``ids_decode``'s order."""

  width: int
  depth: int
  num_heads: int
  out_dim: int
  num_tokens: int  # the clip's token count (the position table's length)
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  attention_impl: str = 'auto'
  remat: bool | str = False
  qkv_bias: str = 'qv'  # VideoMAE's blocks: q and v biases, none on the keys

  @nn.compact
  def __call__(self, latent: jax.Array, ids_keep: jax.Array, ids_decode: jax.Array) -> jax.Array:
    x = token_dense(dense(self.width, (EMBED, MLP), self.dtype, 'decoder_embed', use_bias=False), latent)
    pos = jnp.asarray(sincos_1d_table(self.width, self.num_tokens)).astype(x.dtype)
    token = self.param('mask_token', _param_init(token_init, (None, None, EMBED)), (1, 1, self.width))
    queries = token.astype(x.dtype) + pos[ids_decode]
    x = jnp.concatenate([x + pos[ids_keep], queries], axis=1)
    k, m = latent.shape[1], ids_decode.shape[1]
    query_ids = jnp.broadcast_to(jnp.arange(k, k + m), (x.shape[0], m))
    x = decoder_tower(self, x, 'decoder_blocks', self.depth, query_ids)
    x = layer_norm(self.dtype, 'decoder_norm')(x)
    return token_dense(dense(self.out_dim, (EMBED, 'pixels'), self.dtype, 'decoder_pred'), x)


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
  projections, then ``proj``. By default no k bias (CAE's; a k bias shifts every logit of a query alike, so its
  gradient is zero); ``key_bias`` for layers that have one (CroCo's, torch's ``nn.MultiheadAttention``).
  ``dropout``: on the attention probabilities in training (``nn.MultiheadAttention(dropout=...)``)."""

  num_heads: int
  dtype: Any = jnp.float32
  key_bias: bool = False
  dropout: float = 0.0

  @nn.compact
  def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, deterministic: bool = True,
               rope_q: jax.Array | None = None, rope_k: jax.Array | None = None) -> jax.Array:
    """``rope_q`` / ``rope_k``: rotary tables of the queries' and keys' positions (CroCo v2)."""
    b, m, d = q.shape
    hd = d // self.num_heads
    if d % self.num_heads:
      raise ValueError(f'width {d} is not divisible by num_heads {self.num_heads}.')
    q = token_dense(dense(d, (EMBED, HEADS), self.dtype, 'q'), q).reshape(b, m, self.num_heads, hd)
    k_layer = (dense(d, (EMBED, HEADS), self.dtype, 'k') if self.key_bias else
               nn.Dense(d, use_bias=False, dtype=self.dtype, name='k',
                        kernel_init=_param_init(nn.initializers.xavier_uniform(), (EMBED, HEADS))))
    k = token_dense(k_layer, k)
    v = token_dense(dense(d, (EMBED, HEADS), self.dtype, 'v'), v)
    s = k.shape[1]
    k, v = k.reshape(b, s, self.num_heads, hd), v.reshape(b, s, self.num_heads, hd)
    if rope_q is not None:
      q, k = apply_rope(q, rope_q), apply_rope(k, rope_k)
    logits = jnp.einsum('bqhd,bkhd->bhqk', q * (hd ** -0.5), k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    weights = nn.Dropout(self.dropout)(weights, deterministic=deterministic or self.dropout == 0.0)
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


# ---------------------------------------------------------------------------------------------------------------
# Two-view decoders: the reconstructed view's tokens attend to the reference view's (CropMAE, CroCo).


class SiamDecoderBlock(nn.Module):
  """CropMAE's decoder block (SiamMAE's): torch's ``TransformerDecoderLayer`` with post-norm, in their order,
  cross-attention first: ``x = LN2(x + CA(x, mem))``, ``x = LN3(x + FF(x))``, ``x = LN1(x + SA(x))``. Both
  attentions are ``nn.MultiheadAttention`` (biases on q, k, v and out); the feed-forward is GELU with a *fixed*
  width (``dim_feedforward``, 2048 whatever the model width); ``dropout`` on the attention probabilities, the
  feed-forward's hidden layer and every residual branch, in training."""

  num_heads: int
  ff_width: int = 2048
  dropout: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mem: jax.Array, deterministic: bool = True) -> jax.Array:
    drop = lambda y, name: nn.Dropout(self.dropout, name=name)(y, deterministic=deterministic or not self.dropout)
    attn = lambda name: CrossAttention(self.num_heads, self.dtype, key_bias=True, dropout=self.dropout, name=name)
    x = layer_norm(self.dtype, 'norm2')(x + drop(attn('cross_attn')(x, mem, mem, deterministic), 'dropout2'))
    h = token_dense(dense(self.ff_width, (EMBED, MLP), self.dtype, 'linear1'), x)
    h = drop(gelu_exact(h), 'dropout')
    h = token_dense(dense(x.shape[-1], (MLP, EMBED), self.dtype, 'linear2'), h)
    x = layer_norm(self.dtype, 'norm3')(x + drop(h, 'dropout3'))
    return layer_norm(self.dtype, 'norm1')(x + drop(attn('self_attn')(x, x, x, deterministic), 'dropout1'))


class CroCoDecoderBlock(nn.Module):
  """CroCo's decoder block, pre-norm: ``x += SA(LN1 x)``; ``x += CA(LN2 x, LN_y y)`` (the reference's tokens,
  normalized by the block's own ``norm_y``); ``x += MLP(LN3 x)``. The reference ``y`` passes through unchanged."""

  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  attention_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array, rope_x: jax.Array | None = None,
               rope_y: jax.Array | None = None) -> jax.Array:
    """``rope_x`` / ``rope_y``: the two views' rotary tables (CroCo v2; None with absolute positions)."""
    d = x.shape[-1]
    x = x + Attention(self.num_heads, self.dtype, self.attention_impl, name='attn')(
        layer_norm(self.dtype, 'norm1')(x), None, False, rope_x)
    y = layer_norm(self.dtype, 'norm_y')(y)
    x = x + CrossAttention(self.num_heads, self.dtype, key_bias=True, name='cross_attn')(
        layer_norm(self.dtype, 'norm2')(x), y, y, True, rope_x, rope_y)
    return x + Mlp(int(d * self.mlp_ratio), self.dtype, name='mlp')(layer_norm(self.dtype, 'norm3')(x))
