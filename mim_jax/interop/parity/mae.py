"""Parity adapter for MAE (facebookresearch/mae, ``models_mae.MaskedAutoencoderViT``).

Replays ``draw/noise`` (what ``random_masking`` got from ``torch.rand``) and compares ``len_keep``, the mask, the
restore permutation, the encoder output ``latent`` (CLS, then the kept tokens in the official shuffled order),
``pred``, the loss and every gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.interop import parity
from mim_jax.interop.official_mae import from_official, to_official


def check(fx: parity.Fixture) -> list[parity.Check]:
  from mim_jax.methods import Facts, build

  (images_nchw,), (noise,) = fx.need('inputs', 'images'), fx.need('draws', 'noise')
  loss, pred, mask, ids_restore, latent, len_keep = fx.need('outputs', 'loss', 'pred', 'mask', 'ids_restore',
                                                            'latent', 'len_keep')
  cfg = fx.config()
  images = jnp.asarray(images_nchw.transpose(0, 2, 3, 1))  # NCHW -> NHWC
  method = build(cfg, Facts.for_images(images.shape[1:]))
  params = jax.tree.map(jnp.asarray, from_official(fx.params))
  info = method.masker.from_noise(jnp.asarray(noise))
  out, grads = parity.forward_and_grads(lambda p: method.forward(p, images, info), params)
  checks = [
      parity.exact('len_keep', info.len_keep, int(len_keep)),
      parity.exact('mask', info.mask, mask),
      parity.exact('ids_restore', info.ids_restore, ids_restore),
      parity.loss('loss', out['loss'], loss),
      parity.activation('latent', out['latent'], latent),
      parity.activation('pred', out['pred'], pred),
  ]
  ours = to_official(jax.tree.map(np.asarray, grads), patch_size=cfg.model.encoder.patch_size)
  return checks + parity.gradients(ours, fx.grads)
