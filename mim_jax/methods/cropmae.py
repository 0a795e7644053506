"""CropMAE (Eymaël et al., 2024, "Efficient Image Pre-Training with Siamese Cropped Masked Autoencoders").

Two crops of one image (:mod:`mim_jax.data.pairs`; by default the *global* view and a crop of it, the *local*
view, resized to full size). One siamese MAE encoder reads the global view whole and the local view through a
very high mask (the paper keeps 2 of 196 patches); the decoder reconstructs the local view from its few visible
tokens plus mask tokens, cross-attending to the global view's tokens. As in the authors' code
(alexandre-eymael/CropMAE ``models/SiamMAE.py``, ``models/components/DecoderBlock.py``,
``data/util/CropMAEStrategies.py``; read for semantics, nothing copied):

* both views through the same encoder (CLS first, fixed sin-cos positions, final norm);
* ``decoder_embed`` (one layer) on both; the masked view gets MAE's mask tokens, un-shuffle and the decoder's
  sin-cos positions, the reference view *no* extra positions (it keeps the encoder's);
* blocks of torch's ``TransformerDecoderLayer`` in post-norm, cross-attention first
  (:class:`mim_jax.models.decoders.SiamDecoderBlock`; feed-forward width 2048 whatever the decoder width, dropout
  0.1 in training);
* decoder norm -> linear to the patch pixels -> drop CLS; MAE's norm-pix MSE on the masked patches of the local
  view.

``config.mask``: the ``random`` generator; ``num_visible`` sets the visible count directly (``ratio=0.985`` keeps
``int(196 * 0.015) = 2`` at 224 px, and no patch at all on a 7x7 grid).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mim_jax import masking
from mim_jax.methods.base import config_block, register
from mim_jax.methods.two_view import TwoViewMethod
from mim_jax.models.decoders import SiamDecoderBlock, decoder_input
from mim_jax.models.vit import EMBED, MLP, ViTEncoder, dense, layer_norm, token_dense


def cropmae_defaults() -> ml_collections.ConfigDict:
  """``config.cropmae``: the decoder block's fixed feed-forward width and dropout (torch's defaults, which the
  authors keep)."""
  return ml_collections.ConfigDict(dict(ff_width=2048, dropout=0.1))


class CropMAEDecoder(nn.Module):
  width: int
  depth: int
  num_heads: int
  out_dim: int
  grid_hw: tuple[int, int]
  ff_width: int = 2048
  dropout: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, latent: jax.Array, ids_restore: jax.Array, reference: jax.Array,
               deterministic: bool = True) -> jax.Array:
    embed = dense(self.width, (EMBED, MLP), self.dtype, 'decoder_embed')
    x = decoder_input(self, latent, ids_restore, embed)
    mem = token_dense(embed, reference)  # no positions added: the encoder's are in it
    for i in range(self.depth):
      x = SiamDecoderBlock(self.num_heads, self.ff_width, self.dropout, self.dtype,
                           name=f'decoder_blocks_{i}')(x, mem, deterministic)
    x = layer_norm(self.dtype, 'decoder_norm')(x)
    return token_dense(dense(self.out_dim, (EMBED, 'pixels'), self.dtype, 'decoder_pred'), x)[:, 1:]


class CropMAEModel(nn.Module):
  encoder: ViTEncoder
  decoder: CropMAEDecoder

  def __call__(self, view1: jax.Array, view2: jax.Array, info: masking.MaskInfo,
               deterministic: bool = True) -> tuple[jax.Array, jax.Array, jax.Array]:
    reference = self.encoder(view2, deterministic=deterministic)['tokens']
    latent = self.encoder(view1, ids_keep=info.ids_keep, deterministic=deterministic)['tokens']
    return latent, reference, self.decoder(latent, info.ids_restore, reference, deterministic)


@register('cropmae')
class CropMAE(TwoViewMethod):

  def __init__(self, config, facts):
    super().__init__(config, facts)
    self.cropmae = c = config_block(config, 'cropmae', cropmae_defaults())
    self.dropout = float(c.dropout)
    self.encoder = self.vit_encoder('its decoder reads the visible tokens with CLS first')
    self.setup_views(config)
    dec = config.model.decoder
    self.decoder = CropMAEDecoder(width=int(dec.width), depth=int(dec.depth), num_heads=int(dec.num_heads),
                                  out_dim=self.encoder.patch_size ** 2 * self.image_shape[-1], grid_hw=self.grid_hw,
                                  ff_width=int(c.ff_width), dropout=float(c.dropout),
                                  dtype=self.module_settings()['dtype'])
    self.model = CropMAEModel(self.encoder, self.decoder)
