"""What the two-view methods share (CropMAE, CroCo): a pair batch in training (``view1`` reconstructed, ``view2``
the reference; :mod:`mim_jax.data.pairs`), one image for the probes, the mask on view 1, and the pair figure."""

from __future__ import annotations

import jax
import ml_collections

from mim_jax import masking
from mim_jax.data import pairs
from mim_jax.methods.base import Method, check_images, config_block
from mim_jax.losses import masked_mean, mse_per_token
from mim_jax.targets import pixel_target, reconstruction_images


class TwoViewMethod(Method):
  """A subclass sets ``self.encoder`` and ``self.model``, a module called as ``model(view1, view2, info,
  deterministic)`` that returns ``(latent, reference, pred)``: view 1's encoded visible tokens, view 2 encoded,
  and the prediction of every patch of view 1; ``dropout`` > 0 when the model draws dropout in training. This
  class builds ``self.pairs``, ``self.grid_hw``, ``self.masker`` and ``self.norm_pix`` (``setup_views``), and the
  loss: norm-pix MSE on view 1's masked patches."""

  dropout: float = 0.0

  def pair_defaults(self) -> ml_collections.ConfigDict:
    return pairs.default_pair_config()

  def setup_views(self, config) -> None:
    self.pairs = config_block(config, 'pairs', self.pair_defaults())
    h, w, _ = self.image_shape
    self.grid_hw = self.encoder.grid((h, w))
    self.masker = masking.build(config.mask.name, masking.Grid(*self.grid_hw),
                                **{k: v for k, v in config.mask.items() if k != 'name'})
    if self.masker.len_keep >= self.grid_hw[0] * self.grid_hw[1]:
      raise ValueError(f'config.mask leaves no masked patch: {self.name} reconstructs the masked ones of view 1.')
    self.norm_pix = bool(config.get('norm_pix_loss', True))

  def batch_fields(self, train: bool = True):
    return pairs.pair_fields(self.image_shape) if train else super().batch_fields(train)

  def record_transform(self, data_cfg, source, train: bool):
    return pairs.pair_record_transform(self.pairs, data_cfg, source) if train else None

  def views(self, batch) -> tuple[jax.Array, jax.Array]:
    for key in ('view1', 'view2'):
      check_images(batch[key], self.image_shape)
    return batch['view1'], batch['view2']

  def init(self, rng, batch):
    view1, view2 = self.views(batch)
    info = self.masker(jax.random.key(0), view1.shape[0])
    return self.model.init(rng, view1, view2, info)['params'], {}

  def forward(self, params, view1: jax.Array, view2: jax.Array, info: masking.MaskInfo,
              rng: jax.Array | None = None) -> dict[str, jax.Array]:
    """``latent``, ``reference``, ``pred`` (the model's), ``target``, ``loss_per_token`` and ``loss`` (their
    masked mean). ``rng``: training mode (dropout) with that key; None: deterministic."""
    check_images(view1, self.image_shape)
    check_images(view2, self.image_shape)
    rngs = {'dropout': rng} if rng is not None else {}
    latent, reference, pred = self.model.apply({'params': params}, view1, view2, info, rng is None, rngs=rngs)
    target = pixel_target(view1, self.encoder.patch_size, self.norm_pix)
    per_token = mse_per_token(pred, target)
    return {'latent': latent, 'reference': reference, 'pred': pred, 'target': target, 'loss_per_token': per_token,
            'loss': masked_mean(per_token, info.mask)}

  def loss_fn(self, params, extras, batch, rng, step):
    view1, view2 = self.views(batch)
    mask_rng, drop_rng = jax.random.split(rng) if self.dropout else (rng, None)
    out = self.forward(params, view1, view2, self.masker(mask_rng, view1.shape[0]), drop_rng)
    return out['loss'], ({'loss': out['loss']}, extras)

  def reconstruct_pair(self, params, view1, view2, rng) -> dict[str, jax.Array]:
    """The figure's arrays: view 1's mask and its reconstruction from its visible patches and view 2."""
    info = self.masker(rng, view1.shape[0])
    out = self.forward(params, view1, view2, info)
    figures = reconstruction_images(out['pred'], info.mask, view1, self.encoder.patch_size, self.grid_hw,
                                    self.norm_pix)
    return {**figures, 'loss': out['loss']}
