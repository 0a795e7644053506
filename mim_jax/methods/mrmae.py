"""MR-MAE (Gao et al., 2023, "Mimic before Reconstruct: Enhancing Masked Autoencoders with Feature Mimicking").

MAE plus a *mimic* loss on the visible tokens at the encoder output, from a frozen teacher that sees the whole
image: the visible and the masked tokens get different targets (features for what the encoder sees, pixels for what
the decoder predicts), so the two objectives do not compete for the same tokens.

* ``L_mim = mean over visible tokens i and channels of (W z_i - norm(y_i))^2``: ``z`` the student's encoder output
  (after its final norm) at the visible tokens, ``W`` a linear head to the teacher's width, ``y`` the teacher's
  last-layer patch tokens of the full image at the same positions.
* ``L = L_rec + weight * L_mim``, ``L_rec`` MAE's norm-pix MSE on the masked patches.

There is no official MR-MAE code (the paper points to Alpha-VL/ConvMAE, which holds no MR-MAE file), so these are
read from the paper and marked as choices where it is silent (docs/methods.md): the target normalization
(``target_norm='layernorm'``: each teacher token standardized over its channels, without affine; ``'none'`` keeps
raw features), ``weight`` 1, one teacher (the paper distils CLIP and DINO together: a second teacher is not
implemented yet). ``keep``: 'random' (MAE's uniform masks) or 'attention', the paper's "focused mimicking" as we
read it: the visible tokens drawn without replacement in proportion to the teacher's last-layer CLS attention
(MaskAlign's sampler, :func:`mim_jax.masking.mask_from_importance`); the paper's exact selection rule is not
verified.

The teacher is configured as in DMAE (:class:`mim_jax.methods.teachers.ViTTeacher`: a pre-training workdir,
``teacher_random`` as the control, ``teacher_model`` for plumbing tests) and held in ``extras['teacher']`` (an
external extra: loaded after every init and restore, never checkpointed, never trained).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mim_jax import masking
from mim_jax.losses import masked_mean, mse_per_token
from mim_jax.methods import teachers
from mim_jax.methods.base import check_images, config_block, register
from mim_jax.methods.mae import MAE
from mim_jax.models.decoders import MAEDecoder
from mim_jax.models.vit import EMBED, ViTEncoder, dense, token_dense
from mim_jax.targets import pixel_target

TARGET_NORMS = ('layernorm', 'none')
KEEPS = ('random', 'attention')


def mrmae_defaults() -> ml_collections.ConfigDict:
  """``config.mrmae``: fields missing from a config take these values."""
  return ml_collections.ConfigDict(dict(**teachers.TEACHER_FIELDS, target_norm='layernorm', weight=1.0,
                                        keep='random'))


def standardize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Each token standardized over its channels (a LayerNorm without scale and bias)."""
  mean = jnp.mean(x, axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(jnp.var(x, axis=-1, keepdims=True) + eps)


class MRMAEModel(nn.Module):
  encoder: ViTEncoder
  decoder: MAEDecoder
  teacher_width: int

  @nn.compact
  def __call__(self, images: jax.Array, info: masking.MaskInfo):
    latent = self.encoder(images, ids_keep=info.ids_keep)['tokens']
    mimic = token_dense(dense(self.teacher_width, (EMBED, 'teacher_embed'), latent.dtype, 'mimic_head'),
                        latent[:, 1:])
    return latent, self.decoder(latent, info.ids_restore), mimic


@register('mrmae')
class MRMAE(MAE):
  external_extras = ('teacher',)

  def __init__(self, config, facts):
    super().__init__(config, facts)
    m = config_block(config, 'mrmae', mrmae_defaults())
    if m.target_norm not in TARGET_NORMS:
      raise ValueError(f'config.mrmae.target_norm={m.target_norm!r} is not one of {TARGET_NORMS}.')
    if m.keep not in KEEPS:
      raise ValueError(f'config.mrmae.keep={m.keep!r} is not one of {KEEPS}.')
    if m.keep == 'attention' and config.mask.name != 'random':
      raise ValueError(f"config.mrmae.keep='attention' draws the visible tokens from the teacher's attention; "
                       f"config.mask.name must be 'random' (it sets the count), not {config.mask.name!r}.")
    self.mrmae = m
    self.teacher = teachers.ViTTeacher(m, config.model.encoder, self.image_shape, self.encoder.patch_size, 'mrmae')
    self.teacher_encoder = self.teacher.module()  # the whole teacher: its last layer's tokens are the targets
    self.model = MRMAEModel(self.encoder, self.decoder, self.teacher.encoder.width)

  def load_external(self):
    return {'teacher': self.teacher.params(self.teacher_encoder)}

  def init(self, rng, batch):
    images = self.images(batch)
    info = self.masker(jax.random.key(0), images.shape[0])
    params = self.model.init(rng, images, info)['params']
    return params, {'teacher': self.teacher.random_params(self.teacher_encoder)}  # shapes; load_external fills them

  def teacher_tokens(self, teacher_params, images: jax.Array, cls_attention: bool = False):
    """The frozen teacher's last-layer patch tokens of the whole image ``[B, N, Dt]``, normalized as configured
    (and with ``cls_attention``, its last layer's CLS attention ``[B, N]`` too)."""
    out = self.teacher_encoder.apply({'params': teacher_params}, images, cls_attention=cls_attention)
    tokens = out['patch_tokens'].astype(jnp.float32)
    tokens = standardize(tokens) if self.mrmae.target_norm == 'layernorm' else tokens
    if cls_attention:
      return jax.lax.stop_gradient((tokens, out['cls_attention']))
    return jax.lax.stop_gradient(tokens)

  def forward(self, params, images: jax.Array, info: masking.MaskInfo,
              teacher_tokens: jax.Array | None = None) -> dict[str, jax.Array]:
    """MAE's outputs plus ``mimic_loss`` (on the visible tokens) and ``rec_loss``; ``teacher_tokens`` are
    :meth:`teacher_tokens` (all N positions; only the visible ones are read)."""
    check_images(images, self.image_shape)
    latent, pred, mimic = self.model.apply({'params': params}, images, info)
    target = pixel_target(images, self.encoder.patch_size, self.norm_pix)
    per_token = mse_per_token(pred, target)
    rec = masked_mean(per_token, info.mask)
    out = {'latent': latent, 'pred': pred, 'target': target, 'loss_per_token': per_token, 'rec_loss': rec}
    if teacher_tokens is None:
      return {**out, 'loss': rec}
    visible = jnp.take_along_axis(teacher_tokens, info.ids_keep[:, :, None], axis=1)
    mim = jnp.mean(jnp.square(mimic.astype(jnp.float32) - visible))
    return {**out, 'mimic_loss': mim, 'loss': rec + self.mrmae.weight * mim}

  def loss_fn(self, params, extras, batch, rng, step):
    images = batch['image']
    if self.mrmae.keep == 'attention':  # focused mimicking: keep what the teacher attends to
      tokens, attention = self.teacher_tokens(extras['teacher'], images, cls_attention=True)
      info = masking.mask_from_importance(rng, attention, self.masker.len_keep)
    else:
      tokens = self.teacher_tokens(extras['teacher'], images)
      info = self.masker(rng, images.shape[0])
    out = self.forward(params, images, info, tokens)
    return out['loss'], ({'loss': out['loss'], 'rec_loss': out['rec_loss'], 'mimic_loss': out['mimic_loss']},
                         extras)
