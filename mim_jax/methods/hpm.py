"""HPM (Wang et al., CVPR 2023, "Hard Patches Mining for Masked Image Modeling").

MAE plus an auxiliary *loss predictor* that learns, per patch, how hard the patch is to reconstruct; the
masks are then chosen where the predicted difficulty is high. The mechanism, as pinned down from the paper
and the authors' released code (read for semantics; nothing is copied):

* Loss predictor: a second decoder branch, as in the authors' code (``models_mae_learn_loss.py``): it shares
  the reconstruction decoder's input (``decoder_embed``, the mask token and the sin-cos positions over the visible
  tokens + mask tokens) and has its own blocks (``decoder_blocks_losspred_{i}``, as many as the decoder's), norm and
  linear layer to ``p*p*C`` values, averaged into one score per patch. It learns each *masked* patch's loss from
  the visible context; its loss trains the shared input layer and the encoder too. (Before 2026-12-06 the
  predictor was a separate decoder with its own input layer and one output; docs/methods.md.)
* Relative objective: over every pair (i, j) of masked patches of the same image whose true losses
  differ, binary cross-entropy of ``sigmoid(p_j - p_i)`` against the hard label ``[l_j > l_i]``, where
  ``l`` is the stop-gradient per-patch reconstruction loss, with the authors' ``+1e-6`` inside each log; averaged
  over such pairs. Only the order of the losses is learned, not their values. :func:`relative_ranking_loss` also
  offers a margin-free hinge ``relu(-sign(l_j - l_i) (p_j - p_i))``, which is exactly zero when the predictions
  are ordered like the losses; the BCE only tends to zero as the ordered predictions spread apart.
* Easy-to-hard masks: at step t a fraction ``alpha_t`` of the masked patches are the patches with the
  highest predicted loss and the rest are drawn uniformly at random from the others;
  ``alpha_t = alpha_0 + (alpha_T - alpha_0) * (t + 1) / T`` grows linearly (0 -> 0.5 in the paper; the
  authors' code updates it once per epoch, here every step). The masked count stays static (jit once).
* Where the difficulty map comes from: an EMA teacher (a copy of all params; decay 0.999 rising linearly to
  0.9999 over the first 100 epochs, then fixed) runs the encoder and the loss predictor on the *whole*
  image (every token visible); that prediction, under stop-gradient, picks the mask for the student's step.
  ``teacher='online'`` uses the current params instead (no extra memory; not the authors' setting).
* Total loss = reconstruction loss (MAE's, on masked patches) + ``ranking_weight`` x relative loss (1.0).

The teacher lives in the train state (``extras['teacher']``) and the schedule is a function of ``step``
(also in the train state), so resuming reproduces both. The EMA moves after each optimizer update, towards
the updated params (``after_update``, inside the jitted step), as in the authors' code.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mim_jax import masking
from mim_jax.losses import masked_mean, mse_per_token
from mim_jax.methods.base import check_images, config_block, register
from mim_jax.methods.mae import MAE
from mim_jax.models.decoders import decoder_input, decoder_tower
from mim_jax.models.vit import EMBED, ViTEncoder, dense, layer_norm, token_dense
from mim_jax.targets import pixel_target

RANKING_KINDS = ('bce', 'hinge')
BCE_EPS = 1e-6  # inside the BCE's logs, as in the authors' forward_learning_loss
TEACHERS = ('ema', 'online')


def hpm_defaults() -> ml_collections.ConfigDict:
  """``config.hpm``: the paper's settings. Fields missing from a config take these values."""
  return ml_collections.ConfigDict(dict(
      alpha_start=0.0,  # fraction of the mask chosen by predicted difficulty at the start...
      alpha_end=0.5,  # ...and at the end of training (linear in between)
      ranking='bce',  # 'bce' (the paper's relative objective) | 'hinge' (margin-free, exactly 0 when ordered)
      ranking_weight=1.0,  # weight of the relative loss added to the reconstruction loss
      teacher='ema',  # 'ema' (the authors' code) | 'online' (current params, stop-gradient)
      ema_decay_start=0.999,
      ema_decay_end=0.9999,
      ema_ramp_fraction=0.125,  # the decay ramps over this fraction of training (100 of 800 epochs)
      predictor_depth=-1,  # loss-predictor blocks; -1 = the reconstruction decoder's depth
      total_steps=-1,  # schedule length; -1 = the run's own (from total_steps or epochs x steps per epoch)
  ))


def relative_ranking_loss(pred: jax.Array, target: jax.Array, valid: jax.Array, kind: str = 'bce') -> jax.Array:
  """HPM's relative objective over patch pairs of each image.

  ``pred``, ``target``: ``[B, N]`` predicted and true per-patch losses; ``valid``: ``[B, N]`` (1 = the patch
  takes part; HPM uses the masked patches). A pair (i, j) counts when both are valid and ``target`` differs;
  with ``s = sign(target_j - target_i)`` and ``z = s * (pred_j - pred_i)``:

  * ``'bce'``: about ``-log sigmoid(z)``, the binary cross-entropy of ``sigmoid(pred_j - pred_i)`` against the
    label ``[target_j > target_i]``, with the authors' ``+1e-6`` inside the log. It is below ``log 2`` for every
    correctly ordered pair and falls towards ``-log(1 + 1e-6)`` (about ``-1e-6``) as the correctly ordered
    predictions move apart.
  * ``'hinge'``: ``relu(-z)``: exactly 0 iff no counted pair is ordered against its target (ties in ``pred``
    cost nothing), positive otherwise.

  Returns the mean over counted pairs (0 when there are none).
  """
  if kind not in RANKING_KINDS:
    raise ValueError(f'ranking kind must be one of {RANKING_KINDS}, got {kind!r}.')
  pred = pred.astype(jnp.float32)
  target = jax.lax.stop_gradient(target.astype(jnp.float32))
  valid = valid.astype(jnp.float32)
  # [B, i, j]: differences "j minus i", like the authors' pred.unsqueeze(1) - pred.unsqueeze(2).
  dp = pred[:, None, :] - pred[:, :, None]
  sign = jnp.sign(target[:, None, :] - target[:, :, None])
  pairs = _pairs(valid, sign)
  if kind == 'bce':
    # The authors' expression, eps included: -[l_j > l_i] log(s + 1e-6) - [l_j < l_i] log(1 - s + 1e-6) with
    # s = sigmoid(p_j - p_i). The eps caps a pair's loss (at -log 1e-6 = 13.8) and its gradient.
    prob = jax.nn.sigmoid(dp)
    per_pair = jnp.where(sign > 0, -jnp.log(prob + BCE_EPS), -jnp.log(1.0 - prob + BCE_EPS))
  else:
    per_pair = jax.nn.relu(-sign * dp)
  return (per_pair * pairs).sum() / jnp.maximum(pairs.sum(), 1.0)


def pair_order_accuracy(pred: jax.Array, target: jax.Array, valid: jax.Array) -> jax.Array:
  """Fraction of counted pairs (as in :func:`relative_ranking_loss`) that ``pred`` orders like ``target``."""
  dp = pred[:, None, :] - pred[:, :, None]
  sign = jnp.sign(target[:, None, :] - target[:, :, None])
  pairs = _pairs(valid, sign)
  return ((sign * dp > 0) * pairs).sum() / jnp.maximum(pairs.sum(), 1.0)


def _pairs(valid: jax.Array, sign: jax.Array) -> jax.Array:
  """``[B, i, j]``: 1 for the counted pairs: both valid, different true losses, and ``i != j``. The diagonal is
  excluded explicitly: under jit, XLA may compute the two broadcast operands of ``target_j - target_i`` by
  differently fused reductions, so ``target_i - target_i`` can come out a rounding error away from zero and
  count a patch against itself (measured in the parity check: the loss off by 167x its tolerance)."""
  n = valid.shape[1]
  off_diagonal = 1.0 - jnp.eye(n, dtype=jnp.float32)
  return valid[:, :, None] * valid[:, None, :] * jnp.abs(sign) * off_diagonal


def hard_patch_mask(difficulty: jax.Array, len_keep: int, alpha: jax.Array, rng: jax.Array) -> masking.MaskInfo:
  """Easy-to-hard HPM mask: the ``floor(alpha * num_masked)`` patches with the highest ``difficulty`` are
  masked, and the rest of the ``num_masked = N - len_keep`` masked patches are uniformly random among the
  others. ``len_keep`` is static; ``alpha`` may be traced (it follows the step)."""
  noise = jax.random.uniform(rng, difficulty.shape)
  return hard_patch_mask_from_noise(difficulty, len_keep, alpha, noise)


def hard_patch_mask_from_noise(difficulty: jax.Array, len_keep: int, alpha: jax.Array,
                               noise: jax.Array) -> masking.MaskInfo:
  """:func:`hard_patch_mask` with its random draw given: ``noise`` ``[B, N]`` in ``[0, 1)``; among the patches that
  are not hard, the ``len_keep`` with the smallest noise stay visible. (The authors shuffle the non-hard patches
  with ``np.random.shuffle`` and keep the first ``len_keep``: noise ``i / N`` at the ``i``-th shuffled patch
  replays their draw.)"""
  n = difficulty.shape[1]
  num_masked = n - len_keep
  # float32, like the step's alpha; the authors compute int((L - len_keep) * keep_ratio) in float64.
  n_hard = jnp.floor(num_masked * jnp.clip(alpha, 0.0, 1.0)).astype(jnp.int32)
  # rank 0 = the highest predicted loss.
  rank = jnp.argsort(jnp.argsort(-difficulty.astype(jnp.float32), axis=1, stable=True), axis=1, stable=True)
  hard = rank < n_hard
  # mask_from_scores keeps the smallest scores: the hard patches score above every noise value.
  return masking.mask_from_scores(jnp.where(hard, 2.0, noise), len_keep)


class HPMDecoder(nn.Module):
  """The reconstruction decoder and the loss predictor on one shared input (see the module docstring)."""

  width: int
  depth: int
  num_heads: int
  out_dim: int
  grid_hw: tuple[int, int]
  predictor_depth: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  attention_impl: str = 'auto'
  remat: bool | str = False

  @nn.compact
  def __call__(self, latent: jax.Array, ids_restore: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(pred [B, N, out_dim], loss_pred [B, N])`` for every token in raster order."""
    x = decoder_input(self, latent, ids_restore)
    pred = decoder_tower(self, x, 'decoder_blocks', self.depth)
    pred = layer_norm(self.dtype, 'decoder_norm')(pred)
    pred = token_dense(dense(self.out_dim, (EMBED, 'pixels'), self.dtype, 'decoder_pred'), pred)
    loss_pred = decoder_tower(self, x, 'decoder_blocks_losspred', self.predictor_depth)
    loss_pred = layer_norm(self.dtype, 'decoder_norm_losspred')(loss_pred)
    loss_pred = token_dense(dense(self.out_dim, (EMBED, 'pixels'), self.dtype, 'decoder_pred_losspred'), loss_pred)
    return pred[:, 1:], jnp.mean(loss_pred[:, 1:].astype(jnp.float32), axis=-1)


class HPMModel(nn.Module):
  encoder: ViTEncoder
  decoder: HPMDecoder

  def __call__(self, images: jax.Array, info: masking.MaskInfo) -> tuple[jax.Array, jax.Array, jax.Array]:
    latent = self.encoder(images, ids_keep=info.ids_keep)['tokens']
    return latent, *self.decoder(latent, info.ids_restore)

  def predict_difficulty(self, images: jax.Array) -> jax.Array:
    """Predicted per-patch loss ``[B, N]`` with every token visible (how the teacher picks the mask)."""
    gh, gw = self.encoder.grid(images.shape[1:3])
    everything = jnp.broadcast_to(jnp.arange(gh * gw, dtype=jnp.int32), (images.shape[0], gh * gw))
    latent = self.encoder(images, ids_keep=everything)['tokens']
    return self.decoder(latent, everything)[1]


@register('hpm')
class HPM(MAE):
  class_tokens = ('first',)  # its own heads index the tokens with CLS first

  def __init__(self, config, facts):
    super().__init__(config, facts)
    self.hpm = h = config_block(config, 'hpm', hpm_defaults())
    if h.ranking not in RANKING_KINDS:
      raise ValueError(f'config.hpm.ranking={h.ranking!r} is not one of {RANKING_KINDS}.')
    if h.teacher not in TEACHERS:
      raise ValueError(f'config.hpm.teacher={h.teacher!r} is not one of {TEACHERS}.')
    if not 0.0 <= h.alpha_start <= 1.0 or not 0.0 <= h.alpha_end <= 1.0:
      raise ValueError(f'config.hpm.alpha_start/alpha_end must be in [0, 1], got {h.alpha_start}, {h.alpha_end}.')
    if config.mask.name != 'random':
      raise ValueError(f"HPM draws its own masks (hard patches + uniform random): set config.mask.name='random' "
                       f'(with the ratio), got {config.mask.name!r}.')
    m = config.model
    p, c = self.encoder.patch_size, self.image_shape[-1]
    self.decoder = HPMDecoder(width=m.decoder.width, depth=m.decoder.depth, num_heads=m.decoder.num_heads,
                              out_dim=p * p * c, grid_hw=self.grid_hw,
                              predictor_depth=h.predictor_depth if h.predictor_depth > 0 else m.decoder.depth,
                              mlp_ratio=m.decoder.get('mlp_ratio', 4.0), **self.module_settings())
    self.model = HPMModel(self.encoder, self.decoder)
    self._total_steps = h.total_steps if h.total_steps > 0 else facts.total_steps

  # -- schedules (functions of the step, which lives in the train state) --

  @property
  def total_steps(self) -> int:
    if self._total_steps is None:
      raise ValueError("HPM's alpha and EMA schedules need the run's length: build the method with "
                       'Facts(total_steps=...) (the trainer does) or set config.hpm.total_steps.')
    return self._total_steps

  def alpha(self, step) -> jax.Array:
    """Fraction of the masked patches chosen by predicted difficulty at ``step`` (0-based)."""
    h = self.hpm
    progress = jnp.clip((jnp.asarray(step, jnp.float32) + 1.0) / self.total_steps, 0.0, 1.0)
    return h.alpha_start + (h.alpha_end - h.alpha_start) * progress

  def ema_decay(self, step) -> jax.Array:
    h = self.hpm
    ramp = max(1.0, h.ema_ramp_fraction * self.total_steps)
    progress = jnp.clip(jnp.asarray(step, jnp.float32) / ramp, 0.0, 1.0)
    return h.ema_decay_start + (h.ema_decay_end - h.ema_decay_start) * progress

  # -- method API --

  def init(self, rng, batch):
    images = self.images(batch)
    info = self.masker(jax.random.key(0), images.shape[0])
    params = self.model.init(rng, images, info)['params']
    # The teacher starts as a copy of the student (its own buffers: the train state is donated).
    extras = {'teacher': jax.tree.map(jnp.copy, params)} if self.hpm.teacher == 'ema' else {}
    return params, extras

  def forward(self, params, images: jax.Array, info: masking.MaskInfo) -> dict[str, jax.Array]:
    """MAE's outputs plus ``loss_pred`` (predicted per-patch loss), ``rank_loss`` and ``recon_loss``;
    ``loss`` is the total."""
    check_images(images, self.image_shape)
    latent, pred, loss_pred = self.model.apply({'params': params}, images, info)
    target = pixel_target(images, self.encoder.patch_size, self.norm_pix)
    per_token = mse_per_token(pred, target)
    recon = masked_mean(per_token, info.mask)
    rank = relative_ranking_loss(loss_pred, per_token, info.mask, self.hpm.ranking)
    return {'latent': latent, 'pred': pred, 'target': target, 'loss_per_token': per_token, 'loss_pred': loss_pred,
            'recon_loss': recon, 'rank_loss': rank, 'loss': recon + self.hpm.ranking_weight * rank}

  def teacher_params(self, params, extras):
    return extras['teacher'] if self.hpm.teacher == 'ema' else params

  def predicted_difficulty(self, teacher_params, images: jax.Array) -> jax.Array:
    out = self.model.apply({'params': teacher_params}, images, method=HPMModel.predict_difficulty)
    return jax.lax.stop_gradient(out.astype(jnp.float32))

  def mask_for_step(self, params, extras, images: jax.Array, rng: jax.Array, step) -> tuple[masking.MaskInfo, dict]:
    """The step's mask from the teacher's predicted difficulty and ``alpha(step)``."""
    difficulty = self.predicted_difficulty(self.teacher_params(params, extras), images)
    alpha = self.alpha(step)
    info = hard_patch_mask(difficulty, self.masker.len_keep, alpha, rng)
    return info, {'difficulty': difficulty, 'alpha': alpha}

  def loss_fn(self, params, extras, batch, rng, step):
    images = batch['image']
    info, aux = self.mask_for_step(params, extras, images, rng, step)
    out = self.forward(params, images, info)
    metrics = {'loss': out['loss'], 'recon_loss': out['recon_loss'], 'rank_loss': out['rank_loss'],
               'hpm_alpha': aux['alpha'],
               'rank_pair_acc': pair_order_accuracy(out['loss_pred'], out['loss_per_token'], info.mask)}
    if self.hpm.teacher == 'ema':
      metrics['ema_decay'] = self.ema_decay(step)
    return out['loss'], (metrics, extras)

  def after_update(self, params, extras, step):
    """The EMA teacher moves towards the params this step's update produced."""
    if self.hpm.teacher != 'ema':
      return extras
    decay = self.ema_decay(step)
    teacher = jax.tree.map(lambda t, s: decay * t + (1.0 - decay) * s.astype(t.dtype), extras['teacher'], params)
    return {**extras, 'teacher': teacher}
