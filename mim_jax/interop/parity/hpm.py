"""Parity adapter for HPM (Haochen-Wang409/HPM, ``models_mae_learn_loss.py`` and ``engine_pretrain.py``).

One training step's forward and backward at a fixed step (``meta['step']``, the authors' epoch) with the teacher
equal to the student (the EMA teacher at the start of training):

1. the teacher's predicted loss with every patch visible (``teacher_loss_pred``);
2. the easy-to-hard mask from that prediction and ``alpha(step)``, with the authors' ``np.random.shuffle`` of the
   other patches replayed (``draw/shuffled_rest``): once from the official prediction (checks the selection rule
   alone) and once from mim_jax's own (checks the whole path);
3. on that mask: the latent (CLS, then the visible patches in raster order, as the authors gather them), the
   reconstruction ``pix_pred`` and the loss predictor's ``loss_pred`` (both in the authors' decoder order: visible
   patches, then masked ones, each in raster order), the reconstruction loss, the relative (ranking) loss, their
   sum, and every gradient of the sum.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax import masking
from mim_jax.interop import parity
from mim_jax.interop.official_mae import from_official, to_official


def noise_from_shuffle(shuffled_rest: np.ndarray, num_tokens: int) -> np.ndarray:
  """Noise in ``[0, 1)`` whose ascending order over the non-hard patches is the authors' shuffled order."""
  noise = np.ones((shuffled_rest.shape[0], num_tokens), np.float32)  # hard patches: overridden by the selection
  for row, order in zip(noise, shuffled_rest):
    row[order] = np.arange(len(order), dtype=np.float32) / num_tokens
  return noise


def check(fx: parity.Fixture) -> list[parity.Check]:
  from mim_jax.methods import Facts, build
  from mim_jax.methods.hpm import hard_patch_mask_from_noise

  (images_nchw,), (shuffled_rest,) = fx.need('inputs', 'images'), fx.need('draws', 'shuffled_rest')
  names = ('teacher_loss_pred', 'mask', 'latent', 'pix_pred', 'loss_pred', 'recon_loss', 'rank_loss', 'loss')
  teacher_lp, mask, latent, pix_pred, loss_pred, recon, rank, loss = fx.need('outputs', *names)
  cfg = fx.config()
  step = int(fx.meta['step'])
  images = jnp.asarray(images_nchw.transpose(0, 2, 3, 1))
  method = build(cfg, Facts.for_images(images.shape[1:], total_steps=int(cfg.hpm.total_steps)))
  params = jax.tree.map(jnp.asarray, from_official(fx.params))
  len_keep, n = method.masker.len_keep, int(mask.shape[1])
  noise = jnp.asarray(noise_from_shuffle(shuffled_rest, n))
  alpha = method.alpha(step)
  with jax.default_matmul_precision('highest'):
    difficulty = jax.jit(method.predicted_difficulty)(params, images)
  from_official_prediction = hard_patch_mask_from_noise(jnp.asarray(teacher_lp), len_keep, alpha, noise)
  from_ours = hard_patch_mask_from_noise(difficulty, len_keep, alpha, noise)
  # The authors' token order: visible patches then masked ones, each in raster order (a stable sort of the mask).
  info = masking.mask_from_boolean(jnp.asarray(mask) > 0.5, len_keep)
  out, grads = parity.forward_and_grads(lambda p: method.forward(p, images, info), params)
  order = np.argsort(np.asarray(info.ids_restore), axis=1)  # official position -> raster index

  def official_order(x):
    x = np.asarray(x)
    return np.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), axis=1)

  checks = [
      parity.activation('teacher_loss_pred', difficulty, teacher_lp),
      parity.exact('mask', from_official_prediction.mask, mask),
      parity.exact('mask (from mim_jax\'s own teacher prediction)', from_ours.mask, mask),
      parity.activation('latent', out['latent'], latent),
      parity.activation('pix_pred', official_order(out['pred']), pix_pred),
      parity.activation('loss_pred', official_order(out['loss_pred']), loss_pred),
      parity.loss('recon_loss', out['recon_loss'], recon),
      parity.loss('rank_loss', out['rank_loss'], rank),
      parity.loss('loss', out['loss'], loss),
  ]
  ours = to_official(jax.tree.map(np.asarray, grads), patch_size=cfg.model.encoder.patch_size)
  return checks + parity.gradients(ours, fx.grads)
