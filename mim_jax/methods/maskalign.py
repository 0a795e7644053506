"""MaskAlign (Xue et al., CVPR 2023, "Stare at What You See: Masked Image Modeling without Reconstruction").

No decoder and no reconstruction: the student encodes only the visible tokens, and its hidden states are aligned to
a frozen teacher's features of the whole image at the same (visible) positions. As in the authors' code
(OpenDriveLab/maskalign ``models_pretrain.py``; read for semantics, nothing copied):

* Student levels ``h_1..h_Ls``: the residual stream after every block (before the final norm), CLS + visible tokens.
  Teacher levels ``y_1..y_Lt``: its block outputs on the intact image, each normalized (``target_norm``: 'whiten' =
  a LayerNorm without affine, eps 1e-5; 'l2'; 'bn' = the whole tensor standardized, eps 1e-6; 'none'), then CLS +
  the patch tokens at the student's ``ids_keep``.
* Dynamic alignment (``fusion``): a learnable ``W [Lt, Ls]`` mixes every student level into each teacher level,
  ``s_a = sum_b W[a, b] h_b`` ('linear': ``W = I + 0.01`` at init, equal depths; 'sum': ``W = 1 / Ls``); 'simple'
  pairs ``s_a = h_a`` (no alignment matrix: the ablation). Then a linear head per level (student width -> teacher
  width).
* ``L = sum_a w_a * 2 * SmoothL1_(beta=1)(s_a, y_a)`` (mean over tokens and channels; 'l2' and 'l1' are the
  code's other options), ``w`` from ``loss_weights``: 'topK' = 1/K on the last K levels, 'mean', 'out' (last only),
  'midK' (level K only), 'linear_decay'.
* ``keep``: 'random' (MAE's uniform masking from ``config.mask``) or 'attention': the visible tokens drawn without
  replacement in proportion to the teacher's last-layer CLS attention averaged over heads (the code's
  ``torch.multinomial``; here the Gumbel-top-k draw of :func:`mim_jax.masking.mask_from_importance`, equal in
  distribution).

Only the levels with a non-zero weight get a head and a teacher target (the code builds heads for every level and
never trains the others); the teacher runs up to its deepest used level (every level with attention keep). The
teacher is configured as in DMAE (:class:`mim_jax.methods.teachers.ViTTeacher`) and kept in ``extras['teacher']``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mim_jax import masking
from mim_jax.methods import teachers
from mim_jax.methods.base import Method, check_images, config_block, register
from mim_jax.models.vit import EMBED, ViTEncoder, dense, token_dense

FUSIONS = ('linear', 'sum', 'simple')
TARGET_NORMS = ('whiten', 'l2', 'bn', 'none')
LOSSES = ('smoothl1', 'l2', 'l1')
KEEPS = ('random', 'attention')
WHITEN_EPS = 1e-5  # F.layer_norm's default
BN_EPS = 1e-6
L2_EPS = 1e-12  # F.normalize's


def maskalign_defaults() -> ml_collections.ConfigDict:
  """``config.maskalign``: fields missing from a config take these values (the paper's ViT-B recipe)."""
  return ml_collections.ConfigDict(dict(
      **teachers.TEACHER_FIELDS,
      fusion='linear',
      target_norm='whiten',
      loss='smoothl1',
      loss_weights='top5',
      keep='attention',
  ))


def level_weights(spec: str, levels: int) -> np.ndarray:
  """The per-level loss weights of the authors' ``loss_weights`` option for ``levels`` teacher levels."""
  try:
    if spec == 'mean':
      return np.full(levels, 1.0 / levels)
    if spec == 'out':
      return np.eye(levels)[-1]
    if spec == 'linear_decay' and levels > 1:
      return np.arange(levels) / (levels * (levels - 1) / 2)
    if spec.startswith('top'):
      k = int(spec[3:])
      if 1 <= k <= levels:
        return np.concatenate([np.zeros(levels - k), np.full(k, 1.0 / k)])
    if spec.startswith('mid'):
      k = int(spec[3:])
      if 0 <= k < levels:
        return np.eye(levels)[k]
  except ValueError:
    pass
  raise ValueError(f"config.maskalign.loss_weights={spec!r} is not one of 'mean', 'out', 'linear_decay' (2 levels or "
                   f"more), 'topK' (1 <= K <= {levels}) or 'midK' (0 <= K < {levels}) for a {levels}-level teacher.")


def normalize_target(y: jax.Array, how: str) -> jax.Array:
  if how == 'whiten':
    mean = jnp.mean(y, axis=-1, keepdims=True)
    return (y - mean) * jax.lax.rsqrt(jnp.var(y, axis=-1, keepdims=True) + WHITEN_EPS)
  if how == 'l2':
    return y / jnp.maximum(jnp.linalg.norm(y, axis=-1, keepdims=True), L2_EPS)
  if how == 'bn':  # one mean and one (unbiased, as torch's .var()) variance over the whole tensor
    return (y - jnp.mean(y)) * jax.lax.rsqrt(jnp.var(y, ddof=1) + BN_EPS)
  return y


def distance(s: jax.Array, y: jax.Array, how: str) -> jax.Array:
  d = s - y
  if how == 'smoothl1':  # F.smooth_l1_loss, beta 1, times 2 as in the code
    a = jnp.abs(d)
    return 2.0 * jnp.mean(jnp.where(a < 1.0, 0.5 * d * d, a - 0.5))
  if how == 'l2':
    return jnp.mean(d * d)
  return jnp.mean(jnp.abs(d))


class MaskAlignModel(nn.Module):
  """The student encoder, the dynamic-alignment matrix and one head per used teacher level."""

  encoder: ViTEncoder
  fusion: str
  levels: tuple[int, ...]  # teacher levels (0-based) with a non-zero loss weight
  teacher_depth: int
  teacher_width: int

  @nn.compact
  def __call__(self, images: jax.Array, ids_keep: jax.Array,
               deterministic: bool = True) -> tuple[dict, tuple[jax.Array, ...]]:
    depth = self.encoder.depth
    out = self.encoder(images, ids_keep=ids_keep, deterministic=deterministic, hidden=tuple(range(depth)))
    hidden = out['hidden']
    if self.fusion == 'simple':
      students = [hidden[a] for a in self.levels]
    else:
      init = ((lambda *_: jnp.eye(self.teacher_depth, depth) + 0.01) if self.fusion == 'linear'
              else (lambda *_: jnp.full((self.teacher_depth, depth), 1.0 / depth)))
      w = self.param('distill_weights', init, (self.teacher_depth, depth)).astype(hidden[0].dtype)
      stacked = jnp.stack(hidden)  # [Ls, B, T, D]
      students = [jnp.einsum('l,lbtd->btd', w[a], stacked) for a in self.levels]
    heads = tuple(token_dense(dense(self.teacher_width, (EMBED, 'teacher_embed'), s.dtype, f'distill_heads_{a}'), s)
                  for a, s in zip(self.levels, students))
    return out, heads


@register('maskalign')
class MaskAlign(Method):
  external_extras = ('teacher',)
  no_weight_decay = ('distill_weights',)  # the authors' skip list: decay would pull the mixing towards 0

  def __init__(self, config, facts):
    super().__init__(config, facts)
    self.maskalign = m = config_block(config, 'maskalign', maskalign_defaults())
    for field, value, allowed in (('fusion', m.fusion, FUSIONS), ('target_norm', m.target_norm, TARGET_NORMS),
                                  ('loss', m.loss, LOSSES), ('keep', m.keep, KEEPS)):
      if value not in allowed:
        raise ValueError(f'config.maskalign.{field}={value!r} is not one of {allowed}.')
    self.encoder = self.vit_encoder('it aligns the hidden states of a visible-only ViT')
    h, w, _ = self.image_shape
    self.grid_hw = self.encoder.grid((h, w))
    self.masker = masking.build(config.mask.name, masking.Grid(*self.grid_hw),
                                **{k: v for k, v in config.mask.items() if k != 'name'})
    if m.keep == 'attention' and config.mask.name != 'random':
      raise ValueError(f"config.maskalign.keep='attention' draws the visible tokens from the teacher's attention; "
                       f"config.mask.name must be 'random' (it sets the count), not {config.mask.name!r}.")
    self.teacher = teachers.ViTTeacher(m, config.model.encoder, self.image_shape, self.encoder.patch_size,
                                       'maskalign')
    t_depth, s_depth = self.teacher.encoder.depth, self.encoder.depth
    if m.fusion in ('linear', 'simple') and t_depth != s_depth:
      raise ValueError(f"config.maskalign.fusion={m.fusion!r} needs equal depths, but the teacher has {t_depth} "
                       f"blocks and the student {s_depth}: use fusion='sum' (every student level into each teacher "
                       'level, as the authors do for unequal depths).')
    self.weights = level_weights(m.loss_weights, t_depth)
    self.levels = tuple(int(a) for a in np.flatnonzero(self.weights))
    depth = t_depth if m.keep == 'attention' else max(self.levels) + 1
    self.teacher_encoder = self.teacher.module(depth=depth, final_norm=False)
    self.model = MaskAlignModel(self.encoder, m.fusion, self.levels, t_depth, self.teacher.encoder.width)

  # -- the teacher --

  def load_external(self):
    return {'teacher': self.teacher.params(self.teacher_encoder)}

  def teacher_targets(self, teacher_params, images: jax.Array) -> dict[str, jax.Array]:
    """The frozen teacher on the intact image: ``levels`` (the used levels, normalized, ``[B, 1 + N, Dt]``) and,
    with attention keep, ``cls_attention`` ``[B, N]``."""
    out = self.teacher_encoder.apply({'params': teacher_params}, images, hidden=self.levels,
                                     cls_attention=self.maskalign.keep == 'attention')
    levels = tuple(normalize_target(y.astype(jnp.float32), self.maskalign.target_norm) for y in out['hidden'])
    return jax.lax.stop_gradient({'levels': levels, 'cls_attention': out.get('cls_attention')})

  def mask(self, rng: jax.Array, batch_size: int, cls_attention: jax.Array | None) -> masking.MaskInfo:
    if self.maskalign.keep == 'attention':
      return masking.mask_from_importance(rng, cls_attention, self.masker.len_keep)
    return self.masker(rng, batch_size)

  # -- method API --

  def init(self, rng, batch):
    images = self.images(batch)
    info = self.masker(jax.random.key(0), images.shape[0])
    params = self.model.init(rng, images, info.ids_keep)['params']
    return params, {'teacher': self.teacher.random_params(self.teacher_encoder)}  # shapes; load_external fills them

  def forward(self, params, images: jax.Array, info: masking.MaskInfo, targets: dict,
              rng: jax.Array | None = None) -> dict[str, jax.Array]:
    """``student/a`` (the head outputs), ``target/a`` (the teacher's, at CLS + ``ids_keep``), ``distance``
    per used level and the weighted ``loss``; ``targets`` from :meth:`teacher_targets`. ``rng``: training mode
    (the encoder's drop path) with that key; None: deterministic."""
    check_images(images, self.image_shape)
    rngs = {'dropout': rng} if rng is not None else {}
    _, students = self.model.apply({'params': params}, images, info.ids_keep, rng is None, rngs=rngs)
    out, distances = {}, []
    for a, s, y in zip(self.levels, students, targets['levels']):
      y = jnp.concatenate([y[:, :1], jnp.take_along_axis(y[:, 1:], info.ids_keep[:, :, None], axis=1)], axis=1)
      s = s.astype(jnp.float32)
      out[f'student/{a}'], out[f'target/{a}'] = s, y
      distances.append(distance(s, y, self.maskalign.loss))
    distances = jnp.stack(distances)
    weights = jnp.asarray(self.weights[list(self.levels)], jnp.float32)
    return {**out, 'distance': distances, 'loss': jnp.sum(weights * distances)}

  def loss_fn(self, params, extras, batch, rng, step):
    images = self.images(batch)
    # The step's key draws the mask; with drop path a split of it also drives the encoder's stochastic depth.
    mask_rng, drop_rng = jax.random.split(rng) if self.encoder.drop_path else (rng, None)
    targets = self.teacher_targets(extras['teacher'], images)
    info = self.mask(mask_rng, images.shape[0], targets['cls_attention'])
    out = self.forward(params, images, info, targets, drop_rng)
    return out['loss'], ({'loss': out['loss']}, extras)
