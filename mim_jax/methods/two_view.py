"""What the two-view methods share (CropMAE, CroCo): a pair batch in training (``view1`` reconstructed, ``view2``
the reference; :mod:`mim_jax.data.pairs`), one image for the probes, the mask on view 1, and the pair figure."""

from __future__ import annotations

import jax
import ml_collections

from mim_jax import masking
from mim_jax.data import pairs
from mim_jax.methods.base import Method, check_images, config_block
from mim_jax.targets import reconstruction_images


class TwoViewMethod(Method):
  """A subclass sets ``self.encoder``, ``self.model`` (called as ``model(view1, view2, info, ...)``) and
  ``forward(params, view1, view2, info)`` returning at least ``pred`` and ``loss``; this class builds
  ``self.pairs``, ``self.grid_hw``, ``self.masker`` and ``self.norm_pix``."""

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

  def reconstruct_pair(self, params, view1, view2, rng) -> dict[str, jax.Array]:
    """The figure's arrays: view 1's mask and its reconstruction from its visible patches and view 2."""
    info = self.masker(rng, view1.shape[0])
    out = self.forward(params, view1, view2, info)
    figures = reconstruction_images(out['pred'], info.mask, view1, self.encoder.patch_size, self.grid_hw,
                                    self.norm_pix)
    return {**figures, 'loss': out['loss']}
