"""SimMIM (Xie et al., CVPR 2022, "SimMIM: A Simple Framework for Masked Image Modeling").

* Mask: random masking of coarse cells (32 px mask patches over 16 px tokens, ratio 0.6): the ``coarse``
  generator. Any other generator works too: only ``MaskInfo.mask`` is used.
* Encoder (E2): every token goes through the ViT; masked tokens' patch embeddings are replaced by one
  learned mask token (``ViTEncoder(use_mask_token=True)(images, mask=...)``), so the same recipe would
  apply to hierarchical backbones.
* Head: a linear layer from each token to its patch's ``p*p*C`` pixels (``LinearPixelHead``); SimMIM's
  1x1 conv + pixel shuffle is exactly this per-token linear map.
* Loss: L1 between prediction and the (dataset-normalized) pixels, averaged over the pixels and channels
  of masked patches only; no per-patch normalization (``norm_pix_loss=False`` in SimMIM's configs).

Param tree: ``{'encoder': ..., 'decoder': {'pred': ...}}``.

Known differences from the reference ViT-B (see docs/methods.md): positions are the fixed sin-cos table
(the reference uses a shared relative position bias and layer scale 0.1); CLS and mask tokens are
weight-decayed like MAE's (the reference exempts ``cls_token``).
"""

from __future__ import annotations

import flax.linen as nn
import jax

from mim_jax import masking
from mim_jax.losses import l1_per_token, masked_mean
from mim_jax.methods.base import Method, check_images, register, require_hidden_tokens
from mim_jax.models.decoders import LinearPixelHead
from mim_jax.models.vit import ViTEncoder
from mim_jax.targets import pixel_target, reconstruction_images


class SimMIMModel(nn.Module):
  encoder: ViTEncoder
  decoder: LinearPixelHead

  def __call__(self, images: jax.Array, mask: jax.Array, deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
    out = self.encoder(images, mask=mask, deterministic=deterministic)
    return out['tokens'], self.decoder(out['patch_tokens'])  # one prediction per patch token


def build_mask_generator(mask_cfg, grid_hw: tuple[int, int], patch_size: int):
  """The configured generator on the token grid. ``coarse`` needs the model's token size to turn its
  pixel ``mask_patch_size`` into tokens: it is taken from the encoder unless the config sets ``scale``, and
  a ``token_patch_size`` that disagrees with the encoder is an error rather than a silently wrong mask."""
  settings = {k: v for k, v in mask_cfg.items() if k != 'name'}
  if mask_cfg.name == 'coarse' and settings.get('scale') is None:
    given = settings.get('token_patch_size')
    if given is not None and given != patch_size:
      raise ValueError(f'config.mask.token_patch_size={given} but the encoder uses {patch_size}-pixel patches; '
                       'drop mask.token_patch_size (it defaults to the encoder patch size) or set mask.scale.')
    settings['token_patch_size'] = patch_size
  return masking.build(mask_cfg.name, masking.Grid(*grid_hw), **settings)


@register('simmim')
class SimMIM(Method):
  class_tokens = ('first', 'last', 'none')  # its head reads the feature contract's patch tokens

  def __init__(self, config, facts):
    super().__init__(config, facts)
    self.encoder = self.vit_encoder('a mask token in place of each masked patch token', use_mask_token=True)
    h, w, c = self.image_shape
    self.grid_hw = self.encoder.grid((h, w))
    p = self.encoder.patch_size
    self.decoder = LinearPixelHead(out_dim=p * p * c, dtype=self.module_settings()['dtype'])
    self.model = SimMIMModel(self.encoder, self.decoder)
    self.masker = build_mask_generator(config.mask, self.grid_hw, p)
    require_hidden_tokens(self.masker, self.name, config)
    self.norm_pix = bool(config.get('norm_pix_loss', False))

  def init(self, rng, batch):
    images = self.images(batch)
    info = self.masker(jax.random.key(0), images.shape[0])
    return self.model.init(rng, images, info.mask)['params'], {}

  def forward(self, params, images: jax.Array, mask: jax.Array, dropout_rng: jax.Array | None = None) -> dict:
    """Tokens, per-patch prediction, target, per-token L1 and the loss (mean over masked patches).

    ``dropout_rng`` enables the encoder's drop path (SimMIM pre-trains ViT-B with 0.1); None = deterministic."""
    check_images(images, self.image_shape)
    deterministic = dropout_rng is None or self.encoder.drop_path == 0.0
    rngs = None if deterministic else {'dropout': dropout_rng}
    tokens, pred = self.model.apply({'params': params}, images, mask, deterministic, rngs=rngs)
    target = pixel_target(images, self.encoder.patch_size, self.norm_pix)
    per_token = l1_per_token(pred, target)
    return {'tokens': tokens, 'pred': pred, 'target': target, 'loss_per_token': per_token,
            'loss': masked_mean(per_token, mask)}

  def loss_fn(self, params, extras, batch, rng, step):
    images = batch['image']
    mask_rng, drop_rng = jax.random.split(rng)
    info = self.masker(mask_rng, images.shape[0])
    out = self.forward(params, images, info.mask, drop_rng)
    return out['loss'], ({'loss': out['loss']}, extras)

  def reconstruct(self, params, images, rng):
    info = self.masker(rng, images.shape[0])
    out = self.forward(params, images, info.mask)
    figures = reconstruction_images(out['pred'], info.mask, images, self.encoder.patch_size, self.grid_hw,
                                    self.norm_pix)
    return {**figures, 'loss': out['loss']}
