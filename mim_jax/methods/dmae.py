"""DMAE (Bai et al., 2022, "Masked Autoencoders Enable Efficient Knowledge Distillers").

MAE plus feature distillation from a frozen, pre-trained teacher on the same visible patches, as in the authors'
code (UCSC-VLAA/DMAE ``models_mae_distill.py``, ``engine_distill.py``; read for semantics, nothing copied):

* One mask per step (the teacher draws it in their code); teacher and student encode the same visible tokens
  (CLS + ``ids_keep``, in that order).
* Hidden states after chosen blocks (0-based; the residual stream before the final norm): teacher block
  ``teacher_layers[k]`` is matched with student block ``student_layers[k]`` through a linear projection head
  (``fc-1layer``: student width -> teacher width, with bias), one per pair.
* ``D_k = mean | l2norm(t_k) - l2norm(P_k s_k) |`` over every token and channel (L1; ``distance='l2'`` gives their
  MSE option), with ``l2norm(x) = x / max(|x|, 1e-12)`` (``F.normalize``) and no gradient into the teacher.
* Loss = MAE's (norm-pix) MSE on masked patches from the student's own decoder + ``weight`` x sum_k D_k.
* The teacher runs only up to its deepest used block ("only the first few layers" in the abstract); the authors'
  code also runs its remaining blocks and decoder, whose outputs the loss never reads.

The teacher (``config.dmae.teacher``) is a mim_jax pre-training workdir: its encoder is read from the latest
checkpoint, truncated, kept in ``extras['teacher']`` (an external extra: loaded after every init and restore, never
written into the student's checkpoints) and never trained. ``teacher_random=True`` keeps that architecture with
random weights (the ablation that shows a gain comes from what the teacher learned); with no workdir, a
random-init teacher of ``teacher_model`` (encoder fields; default the student's) serves plumbing tests.
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

DISTANCES = ('l1', 'l2')
NORMALIZE_EPS = 1e-12  # F.normalize's


def dmae_defaults() -> ml_collections.ConfigDict:
  """``config.dmae``: fields missing from a config take these values (the paper's: ViT-L block 17 -> ViT-B 8)."""
  return ml_collections.ConfigDict(dict(
      **teachers.TEACHER_FIELDS,
      teacher_layers=(17,),
      student_layers=(8,),
      distance='l1',
      normalize=True,
      weight=1.0,
  ))


def l2_normalize(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), NORMALIZE_EPS)


class ProjectionHeads(nn.Module):
  """One linear map per distilled pair, student width -> teacher width (the authors' ``fc-1layer``)."""

  out_dims: tuple[int, ...]
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    return tuple(token_dense(dense(d, (EMBED, 'teacher_embed'), self.dtype, f'head_{k}'), h)
                 for k, (d, h) in enumerate(zip(self.out_dims, hidden)))


class DMAEModel(nn.Module):
  encoder: ViTEncoder
  decoder: MAEDecoder
  heads: ProjectionHeads
  student_layers: tuple[int, ...]

  def __call__(self, images: jax.Array, info: masking.MaskInfo):
    out = self.encoder(images, ids_keep=info.ids_keep, hidden=self.student_layers)
    return out['tokens'], self.decoder(out['tokens'], info.ids_restore), self.heads(out['hidden'])


@register('dmae')
class DMAE(MAE):
  class_tokens = ('first',)  # its own heads index the tokens with CLS first
  external_extras = ('teacher',)

  def __init__(self, config, facts):
    super().__init__(config, facts)
    self.dmae = d = config_block(config, 'dmae', dmae_defaults())
    self.teacher_layers = tuple(int(i) for i in d.teacher_layers)
    self.student_layers = tuple(int(i) for i in d.student_layers)
    if not self.teacher_layers or len(self.teacher_layers) != len(self.student_layers):
      raise ValueError(f'config.dmae.teacher_layers {self.teacher_layers} and student_layers {self.student_layers} '
                       'must pair up one to one (at least one pair).')
    if d.distance not in DISTANCES:
      raise ValueError(f'config.dmae.distance={d.distance!r} is not one of {DISTANCES}.')
    bad = [i for i in self.student_layers if not 0 <= i < self.encoder.depth]
    if bad:
      raise ValueError(f'config.dmae.student_layers {bad} are outside the student\'s {self.encoder.depth} blocks '
                       '(0-based).')
    self.teacher = teachers.ViTTeacher(d, config.model.encoder, self.image_shape, self.encoder.patch_size, 'dmae')
    bad = [i for i in self.teacher_layers if not 0 <= i < self.teacher.encoder.depth]
    if bad:
      raise ValueError(f"config.dmae.teacher_layers {bad} are outside the teacher's {self.teacher.encoder.depth} "
                       'blocks (0-based).')
    # Truncated after the deepest distilled block; no final norm (the distilled states are before it).
    self.teacher_encoder = self.teacher.module(depth=max(self.teacher_layers) + 1, final_norm=False)
    self.heads = ProjectionHeads(out_dims=(self.teacher.encoder.width,) * len(self.teacher_layers),
                                 dtype=self.module_settings()['dtype'])
    self.model = DMAEModel(self.encoder, self.decoder, self.heads, self.student_layers)

  # -- the teacher --

  def load_external(self):
    return {'teacher': self.teacher.params(self.teacher_encoder)}

  def teacher_hidden(self, teacher_params, images: jax.Array, info: masking.MaskInfo) -> tuple[jax.Array, ...]:
    out = self.teacher_encoder.apply({'params': teacher_params}, images, ids_keep=info.ids_keep,
                                     hidden=self.teacher_layers)
    return tuple(jax.lax.stop_gradient(h.astype(jnp.float32)) for h in out['hidden'])

  # -- method API --

  def init(self, rng, batch):
    images = self.images(batch)
    info = self.masker(jax.random.key(0), images.shape[0])
    params = self.model.init(rng, images, info)['params']
    return params, {'teacher': self.teacher.random_params(self.teacher_encoder)}  # shapes; load_external fills them

  def forward(self, params, images: jax.Array, info: masking.MaskInfo, teacher_params=None) -> dict[str, jax.Array]:
    """MAE's outputs plus ``distill`` (the per-pair distances), ``pix_loss`` and the total ``loss``."""
    check_images(images, self.image_shape)
    latent, pred, projected = self.model.apply({'params': params}, images, info)
    target = pixel_target(images, self.encoder.patch_size, self.norm_pix)
    per_token = mse_per_token(pred, target)
    pix = masked_mean(per_token, info.mask)
    out = {'latent': latent, 'pred': pred, 'target': target, 'loss_per_token': per_token, 'pix_loss': pix}
    if teacher_params is None:
      return {**out, 'loss': pix}
    distances = []
    for t, s in zip(self.teacher_hidden(teacher_params, images, info), projected):
      s = s.astype(jnp.float32)
      if self.dmae.normalize:
        t, s = l2_normalize(t), l2_normalize(s)
      diff = t - s
      distances.append(jnp.mean(jnp.abs(diff)) if self.dmae.distance == 'l1' else jnp.mean(diff * diff))
    distill = jnp.stack(distances)
    return {**out, 'distill': distill, 'loss': pix + self.dmae.weight * jnp.sum(distill)}

  def loss_fn(self, params, extras, batch, rng, step):
    images = batch['image']
    info = self.masker(rng, images.shape[0])
    out = self.forward(params, images, info, extras['teacher'])
    metrics = {'loss': out['loss'], 'pix_loss': out['pix_loss'], 'distill_loss': jnp.sum(out['distill'])}
    return out['loss'], (metrics, extras)
