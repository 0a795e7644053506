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
raw features), ``weight`` 1. Two teachers as in the paper (which distils CLIP and DINO together): ``teacher`` and
``second_teacher`` (e.g. a self-supervised and a fine-tuned workdir), each with its own linear head,
``L = L_rec + weight * sum over teachers of L_mim``. ``keep``: 'random' (MAE's uniform masks) or 'attention', the
paper's "focused mimicking" as we read it: the visible tokens drawn without replacement in proportion to the
first teacher's last-layer CLS attention (MaskAlign's sampler, :func:`mim_jax.masking.mask_from_importance`); the
paper's exact selection rule is not verified.

Each teacher is configured as in DMAE (:class:`mim_jax.methods.teachers.ViTTeacher`: a pre-training or fine-tuning
workdir, ``teacher_random`` as the control, ``teacher_model`` / ``second_teacher_model`` for plumbing tests) and held
in ``extras['teacher']`` / ``extras['teacher2']`` (external extras: loaded after every init and restore, never
checkpointed, never trained).
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
HEAD_NAMES = ('mimic_head', 'mimic_head_2')
EXTRAS = ('teacher', 'teacher2')
KEEPS = ('random', 'attention')


def mrmae_defaults() -> ml_collections.ConfigDict:
  """``config.mrmae``: fields missing from a config take these values."""
  return ml_collections.ConfigDict(dict(
      **teachers.TEACHER_FIELDS, target_norm='layernorm', weight=1.0, keep='random',
      second_teacher='',  # a second workdir ('' = one teacher); teacher_random applies to both
      second_teacher_step=-1,
      second_teacher_model={},  # with second_teacher='': a random-init second teacher (plumbing tests)
  ))


def second_teacher_fields(m: ml_collections.ConfigDict) -> ml_collections.ConfigDict | None:
  """The second teacher's fields in :data:`teachers.TEACHER_FIELDS` form, or None with one teacher."""
  if not m.second_teacher and not m.second_teacher_model:
    return None
  return ml_collections.ConfigDict(dict(teacher=m.second_teacher, teacher_step=m.second_teacher_step,
                                        teacher_random=m.teacher_random, teacher_model=m.second_teacher_model,
                                        teacher_seed=m.teacher_seed + 1))


def standardize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Each token standardized over its channels (a LayerNorm without scale and bias)."""
  mean = jnp.mean(x, axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(jnp.var(x, axis=-1, keepdims=True) + eps)


class MRMAEModel(nn.Module):
  encoder: ViTEncoder
  decoder: MAEDecoder
  teacher_widths: tuple[int, ...]

  @nn.compact
  def __call__(self, images: jax.Array, info: masking.MaskInfo):
    latent = self.encoder(images, ids_keep=info.ids_keep)['tokens']
    mimic = tuple(token_dense(dense(w, (EMBED, 'teacher_embed'), latent.dtype, HEAD_NAMES[k]), latent[:, 1:])
                  for k, w in enumerate(self.teacher_widths))
    return latent, self.decoder(latent, info.ids_restore), mimic


@register('mrmae')
class MRMAE(MAE):
  class_tokens = ('first',)  # its own heads index the tokens with CLS first

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
    fields = [m] + [f for f in (second_teacher_fields(m),) if f is not None]
    self.teachers = [teachers.ViTTeacher(f, config.model.encoder, self.image_shape, self.encoder.patch_size,
                                         'mrmae' if k == 0 else 'mrmae (second teacher)')
                     for k, f in enumerate(fields)]
    self.teacher = self.teachers[0]
    # the whole teachers: their last layer's tokens are the targets
    self.teacher_encoders = [t.module() for t in self.teachers]
    self.teacher_encoder = self.teacher_encoders[0]
    self.external_extras = EXTRAS[:len(self.teachers)]
    self.model = MRMAEModel(self.encoder, self.decoder, tuple(t.encoder.width for t in self.teachers))

  def load_external(self):
    return {key: t.params(e) for key, t, e in zip(self.external_extras, self.teachers, self.teacher_encoders)}

  def init(self, rng, batch):
    images = self.images(batch)
    info = self.masker(jax.random.key(0), images.shape[0])
    params = self.model.init(rng, images, info)['params']
    # shapes only; load_external fills them
    return params, {key: t.random_params(e) for key, t, e in zip(self.external_extras, self.teachers,
                                                                 self.teacher_encoders)}

  def teacher_tokens(self, teacher_params, images: jax.Array, cls_attention: bool = False, which: int = 0):
    """Teacher ``which``'s last-layer patch tokens of the whole image ``[B, N, Dt]``, normalized as configured
    (and with ``cls_attention``, its last layer's CLS attention ``[B, N]`` too)."""
    out = self.teacher_encoders[which].apply({'params': teacher_params}, images, cls_attention=cls_attention)
    tokens = out['patch_tokens'].astype(jnp.float32)
    tokens = standardize(tokens) if self.mrmae.target_norm == 'layernorm' else tokens
    if cls_attention:
      return jax.lax.stop_gradient((tokens, out['cls_attention']))
    return jax.lax.stop_gradient(tokens)

  def forward(self, params, images: jax.Array, info: masking.MaskInfo,
              teacher_tokens: jax.Array | tuple[jax.Array, ...] | None = None) -> dict[str, jax.Array]:
    """MAE's outputs plus ``mimic_loss`` (on the visible tokens, summed over the teachers) and ``rec_loss``;
    ``teacher_tokens`` are :meth:`teacher_tokens` of each teacher (one array with one teacher; all N positions,
    only the visible ones are read)."""
    check_images(images, self.image_shape)
    latent, pred, mimics = self.model.apply({'params': params}, images, info)
    target = pixel_target(images, self.encoder.patch_size, self.norm_pix)
    per_token = mse_per_token(pred, target)
    rec = masked_mean(per_token, info.mask)
    out = {'latent': latent, 'pred': pred, 'target': target, 'loss_per_token': per_token, 'rec_loss': rec}
    if teacher_tokens is None:
      return {**out, 'loss': rec}
    if not isinstance(teacher_tokens, (tuple, list)):
      teacher_tokens = (teacher_tokens,)
    if len(teacher_tokens) != len(mimics):
      raise ValueError(f'{len(teacher_tokens)} teachers\' tokens given for {len(mimics)} mimic heads.')
    mims = [jnp.mean(jnp.square(mimic.astype(jnp.float32) -
                                jnp.take_along_axis(tokens, info.ids_keep[:, :, None], axis=1)))
            for mimic, tokens in zip(mimics, teacher_tokens)]
    mim = sum(mims[1:], mims[0])
    return {**out, 'mimic_loss': mim, 'mimic_losses': jnp.stack(mims), 'loss': rec + self.mrmae.weight * mim}

  def loss_fn(self, params, extras, batch, rng, step):
    images = batch['image']
    if self.mrmae.keep == 'attention':  # focused mimicking: keep what the (first) teacher attends to
      first, attention = self.teacher_tokens(extras['teacher'], images, cls_attention=True)
      info = masking.mask_from_importance(rng, attention, self.masker.len_keep)
    else:
      first = self.teacher_tokens(extras['teacher'], images)
      info = self.masker(rng, images.shape[0])
    tokens = (first, *(self.teacher_tokens(extras[key], images, which=k)
                       for k, key in enumerate(self.external_extras) if k > 0))
    out = self.forward(params, images, info, tokens)
    return out['loss'], ({'loss': out['loss'], 'rec_loss': out['rec_loss'], 'mimic_loss': out['mimic_loss']},
                         extras)
