"""CroCo (Weinzaepfel et al., NeurIPS 2022, "CroCo: Self-Supervised Pre-training for 3D Vision Tasks by Cross-View
Completion").

Two views of one scene (:mod:`mim_jax.data.pairs`: homographies of one photo by default; real stereo windows for
evaluation). View 1 is masked at 0.9 and encoded visible-only; view 2 is encoded whole by the same encoder; the
decoder completes view 1 from its visible tokens and view 2. As in the authors' code (naver/croco
``models/croco.py``, ``models/blocks.py``, ``models/masking.py``, ``models/criterion.py``; read for semantics,
nothing copied):

* encoder without a CLS token (``model.encoder.class_token='none'``), fixed sin-cos positions, q/k/v bias, final
  norm; the mask counts by CroCo's rule, ``int(N * 0.9)`` masked (``config.mask.count='masked'``);
* ``decoder_embed`` (one layer) on both views; mask tokens scattered into view 1's masked places; the decoder's
  sin-cos positions added to *both* views;
* pre-norm blocks (:class:`mim_jax.models.decoders.CroCoDecoderBlock`): self-attention over view 1, then
  cross-attention to view 2 normalized by the block's own norm, then the MLP; view 2 passes through unchanged;
* decoder norm -> linear to the patch pixels; norm-pix MSE on view 1's masked patches.

CroCo v2 (``model.encoder.rope='2d'``, ``pos_embed='none'``): no absolute positions; rotary 2-D positions
(:mod:`mim_jax.models.rope`, base 100) on the queries and keys of every encoder block and of the decoder's self- and
cross-attention, each view's tokens with their own grid positions.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax import masking
from mim_jax.data import pairs
from mim_jax.methods.base import register
from mim_jax.methods.two_view import TwoViewMethod
from mim_jax.models.decoders import CroCoDecoderBlock, with_mask_tokens
from mim_jax.models.rope import grid_positions, rope_2d_table
from mim_jax.models.vit import EMBED, MLP, ViTEncoder, dense, layer_norm, sincos_2d_table, token_dense


class CroCoDecoder(nn.Module):
  width: int
  depth: int
  num_heads: int
  out_dim: int
  grid_hw: tuple[int, int]
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  attention_impl: str = 'auto'
  rope: str = 'none'  # '2d': CroCo v2's rotary positions in every attention instead of the sin-cos table
  rope_base: float = 100.0

  @nn.compact
  def __call__(self, visible: jax.Array, ids_restore: jax.Array, reference: jax.Array) -> jax.Array:
    embed = dense(self.width, (EMBED, MLP), self.dtype, 'decoder_embed')
    x = with_mask_tokens(self, token_dense(embed, visible), ids_restore)
    y = token_dense(embed, reference)
    table = None
    if self.rope == '2d':  # both views are whole grids here: one table serves queries and keys
      table = rope_2d_table(grid_positions(*self.grid_hw)[None], self.width // self.num_heads, self.rope_base)
    else:
      pos = jnp.asarray(sincos_2d_table(self.width, *self.grid_hw))[None].astype(x.dtype)
      x, y = x + pos, y + pos
    for i in range(self.depth):
      x = CroCoDecoderBlock(self.num_heads, self.mlp_ratio, self.dtype, self.attention_impl,
                            name=f'decoder_blocks_{i}')(x, y, table, table)
    x = layer_norm(self.dtype, 'decoder_norm')(x)
    return token_dense(dense(self.out_dim, (EMBED, 'pixels'), self.dtype, 'decoder_pred'), x)


class CroCoModel(nn.Module):
  encoder: ViTEncoder
  decoder: CroCoDecoder

  def __call__(self, view1: jax.Array, view2: jax.Array, info: masking.MaskInfo, deterministic: bool = True):
    del deterministic  # nothing random in CroCo's model (no dropout, no drop path)
    visible = self.encoder(view1, ids_keep=info.ids_keep)['tokens']
    reference = self.encoder(view2)['tokens']
    return visible, reference, self.decoder(visible, info.ids_restore, reference)


@register('croco')
class CroCo(TwoViewMethod):
  class_tokens = ('none',)

  def __init__(self, config, facts):
    super().__init__(config, facts)
    if config.model.encoder.get('class_token', 'first') != 'none':
      raise ValueError("CroCo's encoder has no CLS token: set config.model.encoder.class_token='none' (and "
                       "config.eval.feature='pooled').")
    self.encoder = self.vit_encoder('CroCo encodes both views with one ViT')
    if self.encoder.rope == '1d':
      raise ValueError("CroCo's rotary positions are 2-D (rope='2d', v2) or none (v1); got rope='1d'.")
    self.setup_views(config)
    dec = config.model.decoder
    settings = self.module_settings()
    self.decoder = CroCoDecoder(width=int(dec.width), depth=int(dec.depth), num_heads=int(dec.num_heads),
                                out_dim=self.encoder.patch_size ** 2 * self.image_shape[-1], grid_hw=self.grid_hw,
                                mlp_ratio=float(dec.get('mlp_ratio', 4.0)), dtype=settings['dtype'],
                                attention_impl=settings['attention_impl'], rope=self.encoder.rope,
                                rope_base=self.encoder.resolved_rope_base)
    self.model = CroCoModel(self.encoder, self.decoder)

  def pair_defaults(self):
    """CroCo's pairs here: two random homographies of one image (their synthetic multi-view; real pairs are a
    download)."""
    c = pairs.default_pair_config()
    c.kind = 'homography'
    c.global_scale = (0.3, 1.0)
    return c
