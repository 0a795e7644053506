"""Selfie (Trinh, Luong and Le, 2019, "Selfie: Self-supervised Pretraining for Image Embedding"): masked patch
*selection* for ConvNets. There is no official code; this follows the paper's description.

* The image is cut into a grid of non-overlapping patches (``selfie.patch_size`` px; 8 at 32 px and 32 at 224 px
  in the paper). ``selfie.num_targets`` positions per image, drawn uniformly, are the targets; the rest are input.
* **Patch network** P: the first ``selfie.patch_stages`` stages of the configured ResNet (stem included) applied
  to every patch on its own, then global average pooling: one vector ``h_j`` per patch, for input and target
  patches alike (one pass over all patches; BatchNorm statistics over all of them).
* **Attention pooling** A: transformer blocks over ``[u0, h_vis + pos_vis]`` (``u0`` a learned query vector, the
  position embedding the sum of a learned row and a learned column embedding, the paper's 7 + 7 instead of 49);
  the output at ``u0``'s slot, after a LayerNorm, is ``u``, the summary of the visible context.
* **Selection**: for target position ``i``, ``v_i = u + pos_i``; the candidates are the P-vectors of the same image's
  targets (the correct one and the other targets as distractors); logits ``v_i . h_j``, cross-entropy to the
  correct one (CPC's loss with in-image negatives). ``selfie.negatives='batch'`` is the negative control: the
  distractors for image b are the next image's target patches (same count, so the same chance level 1/M).
* Fine-tuning reuses P's weights as the first stages of the full ResNet (``config.model.encoder``); the stages
  after them start from the fine-tune's own init (``Method.finetune_fresh``).

Frozen features (probes, export): P run on the whole image, pooled over its last map. State: ``params =
{'encoder' (P), 'pool', ...}``, ``extras = {'batch_stats': {'encoder': ...}}``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from mim_jax import masking
from mim_jax.methods.base import Method, config_block, register
from mim_jax.models.convnets import ResNetEncoder
from mim_jax.models.encoders import build_encoder
from mim_jax.models.vit import Block, layer_norm

NEGATIVES = ('image', 'batch')
pos_init = nn.initializers.normal(0.02)


def selfie_defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      'patch_size': 8,  # px; the image must be a whole grid of patches
      'num_targets': 4,  # masked (target) positions per image; the rest are the input
      'patch_stages': 3,  # ResNet stages in the patch network (the paper: the first 3 of ResNet-50's 4)
      'pool_depth': 3,  # transformer blocks in the attention pooling network
      'pool_heads': 0,  # 0: one head per 32 channels of the patch vector (at least 1)
      'mlp_ratio': 4.0,
      'negatives': 'image',  # 'image': distractors are the same image's targets (Selfie); 'batch': the next image's
  })


class AttentionPooling(nn.Module):
  """``u`` from the visible patch vectors (position embeddings added) and a learned query ``u0``."""

  depth: int
  num_heads: int
  mlp_ratio: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, visible: jax.Array, deterministic: bool) -> jax.Array:
    bsz, _, d = visible.shape
    query = self.param('query', pos_init, (d,), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(query.astype(visible.dtype), (bsz, 1, d)), visible], axis=1)
    for i in range(self.depth):
      x = Block(self.num_heads, self.mlp_ratio, dtype=self.dtype, name=f'blocks_{i}')(x, deterministic)
    return layer_norm(self.dtype, 'norm')(x[:, 0]).astype(jnp.float32)


class SelfieModel(nn.Module):
  encoder: nn.Module  # the patch network: a ResNet with the first stages only
  grid: tuple[int, int]
  patch: int
  pool_depth: int
  pool_heads: int
  mlp_ratio: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, ids_visible: jax.Array, ids_target: jax.Array, train: bool) -> dict:
    """``ids_visible`` ``[B, K]`` / ``ids_target`` ``[B, M]``: raster positions on the patch grid. Returns the
    queries ``v`` ``[B, M, D]`` and the target patches' vectors ``[B, M, D]``."""
    bsz, _, _, c = images.shape
    (gh, gw), p = self.grid, self.patch
    patches = images.reshape(bsz, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(bsz * gh * gw, p, p, c)
    h = self.encoder(patches, deterministic=not train)['pooled'].astype(jnp.float32)
    h = h.reshape(bsz, gh * gw, -1)
    d = h.shape[-1]
    rows = self.param('pos_row', pos_init, (gh, d), jnp.float32)
    cols = self.param('pos_col', pos_init, (gw, d), jnp.float32)
    pos = (rows[:, None, :] + cols[None, :, :]).reshape(gh * gw, d)
    take = lambda x, ids: jnp.take_along_axis(x, ids[:, :, None], axis=1)
    visible = (take(h, ids_visible) + pos[ids_visible]).astype(self.dtype)
    u = AttentionPooling(self.pool_depth, self.pool_heads, self.mlp_ratio, self.dtype, name='pool')(visible,
                                                                                                    not train)
    return {'queries': u[:, None, :] + pos[ids_target], 'targets': take(h, ids_target), 'patch_vectors': h}


def selection_logits(queries: jax.Array, targets: jax.Array, negatives: str = 'image') -> jax.Array:
  """``[B, M, M]``: entry ``(b, i, j)`` scores candidate ``j`` for target ``i`` of image ``b``; the correct
  candidate is ``j = i``. 'image': the candidates are image b's targets; 'batch': the correct one, with the
  distractors taken from image ``b + 1`` (mod B) at the other slots."""
  same = jnp.einsum('bmd,bnd->bmn', queries, targets)
  if negatives == 'image':
    return same
  other = jnp.einsum('bmd,bnd->bmn', queries, jnp.roll(targets, -1, axis=0))
  return jnp.where(jnp.eye(queries.shape[1], dtype=bool), same, other)


def selection_loss(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(mean cross-entropy, accuracy)`` of picking the diagonal candidate."""
  labels = jnp.broadcast_to(jnp.arange(logits.shape[-1]), logits.shape[:-1])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()
  accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
  return loss, accuracy


@register('selfie')
class Selfie(Method):
  class_tokens = ('none',)
  no_weight_decay = ('query', 'pos_row', 'pos_col')

  def __init__(self, config, facts):
    super().__init__(config, facts)
    settings = self.module_settings()
    self.cfg = config_block(config, 'selfie', selfie_defaults())
    self.full_encoder = build_encoder(config.model.encoder, dtype=settings['dtype'])
    if not isinstance(self.full_encoder, ResNetEncoder):
      raise ValueError(f'selfie pre-trains the first stages of a ResNet (config.model.encoder.name=resnet), got '
                       f'{type(self.full_encoder).__name__}.')
    stages = int(self.cfg.patch_stages)
    n_stages = len(self.full_encoder.depths)
    if not 1 <= stages <= n_stages:
      raise ValueError(f'config.selfie.patch_stages must be in [1, {n_stages}] (the ResNet has {n_stages} stages), '
                       f'got {stages}.')
    self.encoder = self.full_encoder.clone(depths=self.full_encoder.depths[:stages],
                                           widths=self.full_encoder.widths[:stages])
    h, w, _ = self.image_shape
    p = int(self.cfg.patch_size)
    if p <= 0 or h % p or w % p:
      raise ValueError(f'config.selfie.patch_size={p} must divide the image size {h}x{w} (set data.image_size or '
                       'the patch size).')
    self.grid_hw = (h // p, w // p)
    n = self.grid_hw[0] * self.grid_hw[1]
    m = int(self.cfg.num_targets)
    if not 2 <= m <= n - 1:
      raise ValueError(f'config.selfie.num_targets={m} must be in [2, {n - 1}]: at least one distractor and one '
                       f'visible patch on the {self.grid_hw[0]}x{self.grid_hw[1]} grid.')
    if self.cfg.negatives not in NEGATIVES:
      raise ValueError(f'config.selfie.negatives must be one of {NEGATIVES}, got {self.cfg.negatives!r}.')
    if config.mask.name != 'random':
      raise ValueError(f"selfie draws its targets uniformly (config.mask.name='random'), got {config.mask.name!r}.")
    self.masker = masking.build('random', masking.Grid(*self.grid_hw), num_visible=n - m)
    d = self.patch_dim
    heads = int(self.cfg.pool_heads) or max(1, d // 32)
    if d % heads:
      raise ValueError(f'config.selfie.pool_heads={heads} must divide the patch vector width {d}.')
    self.model = SelfieModel(self.encoder, self.grid_hw, p, int(self.cfg.pool_depth), heads,
                             float(self.cfg.mlp_ratio), settings['dtype'])

  @property
  def patch_dim(self) -> int:
    enc = self.encoder
    return enc.widths[-1] * (4 if enc.block == 'bottleneck' else 1)

  # -- the objective --

  def draw_targets(self, rng, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """``(ids_visible [B, N - M], ids_target [B, M])``: a uniform draw of M target positions per image."""
    info = self.masker(rng, batch_size)
    order = jnp.argsort(info.ids_restore, axis=1)  # the visible ids first, then the masked ones
    keep = info.ids_keep.shape[1]
    return order[:, :keep], order[:, keep:]

  def init(self, rng, batch):
    images = self.images(batch)
    ids_visible, ids_target = self.draw_targets(jax.random.key(0), images.shape[0])
    variables = self.model.init({'params': rng, 'dropout': rng}, images, ids_visible, ids_target, False)
    return variables['params'], {'batch_stats': nn.meta.unbox(variables['batch_stats'])}

  def forward(self, params, batch_stats, images, ids_visible, ids_target, train: bool = True,
              dropout_rng=None) -> dict:
    """The selection logits, loss and accuracy, and (``train``) the updated running statistics."""
    rngs = {'dropout': dropout_rng} if dropout_rng is not None else None
    variables = {'params': params, 'batch_stats': batch_stats}
    if train:
      out, updated = self.model.apply(variables, images, ids_visible, ids_target, True, rngs=rngs,
                                      mutable=['batch_stats'])
      batch_stats = updated['batch_stats']
    else:
      out = self.model.apply(variables, images, ids_visible, ids_target, False)
    logits = selection_logits(out['queries'], out['targets'], self.cfg.negatives)
    loss, accuracy = selection_loss(logits)
    return {**out, 'logits': logits, 'loss': loss, 'accuracy': accuracy, 'batch_stats': batch_stats}

  def loss_fn(self, params, extras, batch, rng, step):
    images = self.images(batch)
    mask_rng, drop_rng = jax.random.split(rng)
    ids_visible, ids_target = self.draw_targets(mask_rng, images.shape[0])
    out = self.forward(params, extras['batch_stats'], images, ids_visible, ids_target, True, drop_rng)
    metrics = {'loss': out['loss'], 'selection_accuracy': out['accuracy']}
    return out['loss'], (metrics, {**extras, 'batch_stats': out['batch_stats']})

  def selection_accuracy(self, params, images, rng) -> jax.Array:
    """Patch-selection accuracy on ``images`` with running statistics (``params`` from ``eval_params``)."""
    ids_visible, ids_target = self.draw_targets(rng, images.shape[0])
    stats = params['batch_stats']
    out = self.forward({k: v for k, v in params.items() if k != 'batch_stats'}, stats, self.images(
        {'image': images}), ids_visible, ids_target, train=False)
    return out['accuracy']

  # -- evaluation: the patch network on the whole image, with its running statistics --

  def eval_params(self, params, extras):
    return {**params, 'batch_stats': extras['batch_stats']}

  def encoder_variables(self, params) -> dict:
    return {'params': params['encoder'], 'batch_stats': params['batch_stats']['encoder']}

  # -- fine-tuning: the whole ResNet, its later stages fresh --

  def finetune_encoder(self, *, drop_path: float, pooled: bool, dtype, remat):
    return self.full_encoder.for_finetuning(drop_path=drop_path, pooled=pooled, dtype=dtype, remat=remat)

  def finetune_fresh(self) -> tuple[str, ...]:
    return tuple(f'stages_{s}' for s in range(len(self.encoder.depths), len(self.full_encoder.depths)))

  @property
  def num_layers(self) -> int:
    return self.full_encoder.num_layers

  def layer_id(self, names) -> int:
    return self.full_encoder.layer_id(names)
