"""MAE (He et al., 2022): visible-only ViT encoder, light transformer decoder, pixel (norm-pix) MSE on
masked patches only."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax import masking
from mim_jax.losses import masked_mean, mse_per_token
from mim_jax.methods.base import Method, check_images, register, require_hidden_tokens
from mim_jax.models.decoders import MAEDecoder
from mim_jax.models.vit import ViTEncoder, cls_first_tokens
from mim_jax.targets import pixel_target, reconstruction_images


LOSS_ON = ('masked', 'all')


class MAEModel(nn.Module):
  encoder: ViTEncoder
  decoder: MAEDecoder

  def __call__(self, images: jax.Array, info: masking.MaskInfo,
               query_ids: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    latent = cls_first_tokens(self.encoder(images, ids_keep=info.ids_keep), self.encoder.class_token)
    return latent, self.decoder(latent, info.ids_restore, query_ids)


@register('mae')
class MAE(Method):
  class_tokens = ('first', 'last')  # the decoder gets CLS first either way (cls_first_tokens)

  def __init__(self, config, facts):
    super().__init__(config, facts)
    m = config.model
    self.encoder = self.vit_encoder('its decoder reads the visible tokens with CLS first')
    h, w, c = self.image_shape
    self.grid_hw = self.encoder.grid((h, w))
    p = self.encoder.patch_size
    self.decoder = MAEDecoder(width=m.decoder.width, depth=m.decoder.depth, num_heads=m.decoder.num_heads,
                              mlp_ratio=m.decoder.get('mlp_ratio', 4.0), out_dim=p * p * c,
                              grid_hw=self.grid_hw, **self.module_settings())
    self.model = MAEModel(self.encoder, self.decoder)
    self.masker = masking.build(config.mask.name, masking.Grid(*self.grid_hw),
                                **{k: v for k, v in config.mask.items() if k != 'name'})
    self.norm_pix = bool(config.get('norm_pix_loss', True))
    # MAE computes the loss on the masked patches only; 'all' is the paper's ablation (Sec. 4.1: the loss on every
    # patch, visible ones included, costs accuracy).
    self.loss_on = config.get('loss_on', 'masked')
    if self.loss_on not in LOSS_ON:
      raise ValueError(f'config.loss_on={self.loss_on!r} is not one of {LOSS_ON}.')
    if self.loss_on == 'masked':
      require_hidden_tokens(self.masker, self.name, config)

  def init(self, rng, batch):
    images = self.images(batch)
    info = self.masker(jax.random.key(0), images.shape[0])
    return self.model.init(rng, images, info)['params'], {}

  def forward(self, params, images: jax.Array, info: masking.MaskInfo) -> dict[str, jax.Array]:
    """Everything the reference's forward returns: latent, pred, per-token loss, loss (masked mean)."""
    check_images(images, self.image_shape)
    latent, pred = self.model.apply({'params': params}, images, info)
    target = pixel_target(images, self.encoder.patch_size, self.norm_pix)
    per_token = mse_per_token(pred, target)
    return {'latent': latent, 'pred': pred, 'target': target, 'loss_per_token': per_token,
            'loss': masked_mean(per_token, info.mask)}

  def masked_loss(self, params, images: jax.Array, info: masking.MaskInfo) -> jax.Array:
    """``forward(...)['loss']`` computed the way training needs it: the decoder predicts only the masked
    tokens, so its last block skips the queries, MLP and head of the visible ones (the loss never reads them;
    about 3% of ViT-Tiny/4's FLOPs). Equal to ``forward``'s loss up to float summation order (tests)."""
    check_images(images, self.image_shape)
    ids_masked = info.ids_masked
    if ids_masked.shape[1] == 0:  # mask ratio 0: nothing to predict; forward's masked mean handles it
      return self.forward(params, images, info)['loss']
    _, pred = self.model.apply({'params': params}, images, info, ids_masked)
    target = pixel_target(images, self.encoder.patch_size, self.norm_pix)
    target = jnp.take_along_axis(target, ids_masked[:, :, None], axis=1)
    return jnp.mean(mse_per_token(pred, target))

  def loss_fn(self, params, extras, batch, rng, step):
    images = batch['image']
    info = self.masker(rng, images.shape[0])
    if self.loss_on == 'all':
      loss = jnp.mean(self.forward(params, images, info)['loss_per_token'])
    else:
      loss = self.masked_loss(params, images, info)
    return loss, ({'loss': loss}, extras)

  def reconstruct(self, params, images, rng, noise: jax.Array | None = None):
    info = self.masker.from_noise(noise) if noise is not None else self.masker(rng, images.shape[0])
    out = self.forward(params, images, info)
    figures = reconstruction_images(out['pred'], info.mask, images, self.encoder.patch_size, self.grid_hw,
                                    self.norm_pix)
    return {**figures, 'loss': out['loss']}
