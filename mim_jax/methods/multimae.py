"""MultiMAE (Bachmann et al., ECCV 2022, "MultiMAE: Multi-modal Multi-task Masked Autoencoders"; official code
EPFL-VILAB/MultiMAE ``multimae/multimae.py``, ``criterion.py``, ``run_pretraining_multimae.py``).

* Inputs: RGB, depth and semantic maps of one scene (mim_jax.data.scenes25d: exact depth and classes). Depth is
  standardized per image as the official training loop does: the mean and (unbiased) variance of its middle 80%
  of values (sorted, the lowest and highest 10% cut), ``(d - mean) / sqrt(var + 1e-6)``. Semantics enter at
  ``1/semseg_stride`` of the image size (nearest).
* Mask (:func:`mim_jax.masking.multimodal.dirichlet_budget`): ``num_visible`` tokens in total, shared across the
  modalities by a Dirichlet draw per sample, the official rounding repair keeping the total exact.
* Model (:mod:`mim_jax.models.multimodal`): input adapters, the encoder on the visible tokens plus a global token,
  one cross-attention output adapter per output (``rgb``, ``depth``, ``semseg``, and ``norm_rgb`` with
  ``extra_norm_pix_loss``: a fourth adapter whose RGB target is normalized per patch).
* Losses (``loss_on_unmasked=False``): per modality on its hidden tokens only, each pixel's loss (MSE / L1 averaged
  over channels; cross-entropy for semantics, at their resolution) averaged over the hidden pixels of each sample,
  then over the samples that hide any (a sample that hides none of a modality does not count; none at all: 0), and
  the modalities summed with equal weights (the official ``NoWeightingStrategy``). The ``norm_rgb`` target:
  per-patch mean and unbiased variance, ``(x - mean) / sqrt(var + 1e-6)``.

Batch: ``image`` (RGB pixels), ``depth`` ``[H, W, 1]`` (metres), ``semseg`` ``[H/s, W/s]`` (class ids), ``label``.
Frozen features and fine-tuning read RGB alone (the registered encoder 'multivit').
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mim_jax.data.batch import Field
from mim_jax.masking.core import MaskInfo
from mim_jax.masking.multimodal import dirichlet_budget, split_mask
from mim_jax.methods.base import Method, config_block, register
from mim_jax.models.encoders import build_encoder
from mim_jax.models.multimodal import DENSE_MODALITIES, SEMSEG, MultiViTEncoder, SpatialOutputAdapter


def multimae_defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      'num_visible': 98,  # tokens the encoder sees, all modalities together (official: 98 of 588)
      'alpha': 1.0,  # the Dirichlet concentration
      'sample_tasks_uniformly': False,
      'outputs': ('rgb', 'depth', 'semseg'),
      'extra_norm_pix_loss': True,  # a fourth output adapter 'norm_rgb' with the per-patch normalized RGB target
      'standardize_depth': True,
      'decoder_width': 256,
      'decoder_depth': 2,
      'decoder_heads': 8,
  })


def depth_statistics(depth: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per image (``depth`` ``[B, H, W, 1]``), broadcastable ``[B, 1, 1, 1]``: the mean and ``sqrt(var + 1e-6)`` of the
  middle 80% of its values (unbiased variance), the official truncated statistics."""
  flat = jnp.sort(depth.reshape(depth.shape[0], -1), axis=1)
  n = flat.shape[1]
  mid = flat[:, int(0.1 * n):int(0.9 * n)]
  mean, var = mid.mean(axis=1), mid.var(axis=1, ddof=1)
  return mean[:, None, None, None], jnp.sqrt(var[:, None, None, None] + 1e-6)


def standardize_depth(depth: jax.Array) -> jax.Array:
  """The official truncated standardization, per image (``depth`` ``[B, H, W, 1]``)."""
  mean, std = depth_statistics(depth)
  return (depth - mean) / std


def _pixel_mask(token_mask: jax.Array, grid: tuple[int, int], shape: tuple[int, int]) -> jax.Array:
  """``[B, N]`` token mask -> ``[B, H, W]`` (nearest)."""
  m = token_mask.reshape(-1, *grid)
  return jnp.repeat(jnp.repeat(m, shape[0] // grid[0], axis=1), shape[1] // grid[1], axis=2)


def masked_mean(per_pixel: jax.Array, pixel_mask: jax.Array) -> jax.Array:
  """Per sample: the mean over its hidden pixels; then the mean over the samples that hide any (0 if none)."""
  count = pixel_mask.reshape(pixel_mask.shape[0], -1).sum(axis=1)
  total = (per_pixel * pixel_mask).reshape(per_pixel.shape[0], -1).sum(axis=1)
  valid = count > 0
  per_sample = jnp.where(valid, total / jnp.maximum(count, 1), 0.0)
  return per_sample.sum() / jnp.maximum(valid.sum(), 1)


def patch_normalize(x: jax.Array, patch: int) -> jax.Array:
  """``[B, H, W, C]`` with every ``patch x patch`` patch normalized by its own mean and unbiased variance."""
  b, h, w, c = x.shape
  p = x.reshape(b, h // patch, patch, w // patch, patch, c)
  mean = p.mean(axis=(2, 4, 5), keepdims=True)
  var = p.var(axis=(2, 4, 5), keepdims=True, ddof=1)
  return ((p - mean) / jnp.sqrt(var + 1e-6)).reshape(b, h, w, c)


class MultiMAEModel(nn.Module):
  encoder: MultiViTEncoder
  adapters: dict[str, SpatialOutputAdapter]

  def __call__(self, inputs: dict[str, jax.Array], ids_keep, ids_restore, tokens_per_task, grid,
               deterministic: bool = True) -> dict[str, jax.Array]:
    tokens = self.encoder.encode_visible(inputs, ids_keep, deterministic)
    return {name: a(tokens, ids_keep, ids_restore, tokens_per_task, grid, self.encoder.num_global_tokens,
                    deterministic) for name, a in self.adapters.items()}


@register('multimae')
class MultiMAE(Method):
  class_tokens = ('none',)
  no_weight_decay = ('global_tokens', 'mask_token', 'task_emb', 'class_emb')

  def __init__(self, config, facts):
    super().__init__(config, facts)
    self.cfg = config_block(config, 'multimae', multimae_defaults())
    settings = self.module_settings()
    self.encoder = build_encoder(config.model.encoder, dtype=settings['dtype'],
                                 attention_impl=settings['attention_impl'])
    if not isinstance(self.encoder, MultiViTEncoder):
      raise ValueError("multimae pre-trains the multi-modal ViT (config.model.encoder.name='multivit'), got "
                       f'{type(self.encoder).__name__}.')
    e = self.encoder
    h, w, _ = self.image_shape
    if h % e.patch_size or w % e.patch_size:
      raise ValueError(f'image size {h}x{w} is not a multiple of the patch size {e.patch_size}.')
    if SEMSEG in (*e.modalities, *self.cfg.outputs) and e.patch_size % e.semseg_stride:
      raise ValueError(f'the patch size {e.patch_size} must be a multiple of the semantic maps\' stride '
                       f'{e.semseg_stride}.')
    self.grid = (h // e.patch_size, w // e.patch_size)
    self.tokens_per_task = tuple(self.grid[0] * self.grid[1] for _ in e.modalities)
    total = sum(self.tokens_per_task)
    outputs = [*self.cfg.outputs] + (['norm_rgb'] if self.cfg.extra_norm_pix_loss else [])
    # An output the encoder does not read is predicted whole, so every input token may then be visible (RGB in,
    # depth out: supervised cross-modal prediction); otherwise some token must stay hidden.
    unread = [o for o in outputs if o not in e.modalities and not (o == 'norm_rgb' and 'rgb' in e.modalities)]
    most = total if unread else total - 1
    if not 0 < int(self.cfg.num_visible) <= most:
      why = ('' if unread else
             '; all of them visible would leave nothing to predict unless an output is not an input')
      raise ValueError(f'config.multimae.num_visible must be in [1, {most}] (of the {total} tokens of '
                       f'{len(e.modalities)} modalities{why}), got {self.cfg.num_visible}.')
    bad = [o for o in outputs if o not in (*DENSE_MODALITIES, SEMSEG, 'norm_rgb')]
    if bad:
      raise ValueError(f'config.multimae.outputs must be among {[*DENSE_MODALITIES, SEMSEG]}, got {bad}.')
    adapters = {}
    for name in outputs:
      task = 'rgb' if name == 'norm_rgb' else name
      channels = e.semseg_classes if task == SEMSEG else DENSE_MODALITIES[task]
      patch = e.patch_size // e.semseg_stride if task == SEMSEG else e.patch_size
      adapters[name] = SpatialOutputAdapter(task, tuple(e.modalities), channels, patch, int(self.cfg.decoder_width),
                                            int(self.cfg.decoder_depth), int(self.cfg.decoder_heads), e.mlp_ratio,
                                            settings['dtype'], settings['attention_impl'])  # params: adapters_{name}
    self.outputs = tuple(outputs)
    self.model = MultiMAEModel(e, adapters)

  # -- the encoder as probes, fine-tuning and export see it: RGB alone --

  def encoder_params(self, params):
    """The RGB path of the encoder (its RGB adapter, global token and blocks): what the frozen features, the
    fine-tune encoder and an exported checkpoint hold; the depth and semantic adapters serve pre-training only."""
    others = {f'{m}_adapter' for m in self.encoder.modalities if m != 'rgb'}
    return {k: v for k, v in params['encoder'].items() if k not in others}

  # -- the batch --

  def batch_fields(self, train: bool = True) -> dict[str, Field]:
    del train
    h, w, c = self.image_shape
    s = self.encoder.semseg_stride
    return {'image': Field((h, w, c), 'float32', pixels=True), 'depth': Field((h, w, 1), 'float32'),
            'semseg': Field((h // s, w // s), 'int32'), 'label': Field((), 'int32')}

  def record_transform(self, data_cfg, source, train: bool):
    from mim_jax.data.scenes25d import SceneRecord

    return SceneRecord(train, self.encoder.semseg_stride, bool(data_cfg.get('hflip', True)))

  def modalities(self, batch) -> dict[str, jax.Array]:
    """Every modality of the batch as the model reads and predicts it (depth standardized when configured)."""
    depth = batch['depth']
    if self.cfg.standardize_depth:
      depth = standardize_depth(depth)
    return {'rgb': self.images(batch), 'depth': depth, SEMSEG: batch['semseg']}

  def model_inputs(self, batch) -> dict[str, jax.Array]:
    """The modalities the encoder reads."""
    values = self.modalities(batch)
    return {m: values[m] for m in self.encoder.modalities}

  def draw_mask(self, rng, batch_size: int) -> MaskInfo:
    return dirichlet_budget(rng, batch_size, self.tokens_per_task, int(self.cfg.num_visible),
                            float(self.cfg.alpha), bool(self.cfg.sample_tasks_uniformly))

  def init(self, rng, batch):
    inputs = self.model_inputs(batch)
    info = self.draw_mask(jax.random.key(0), batch['image'].shape[0])
    params = self.model.init(rng, inputs, info.ids_keep, info.ids_restore, self.tokens_per_task, self.grid, True)
    return params['params'], {}

  # -- the objective --

  def losses(self, preds: dict[str, jax.Array], inputs: dict[str, jax.Array], mask: jax.Array) -> dict[str, Any]:
    masks = dict(zip(self.encoder.modalities, split_mask(mask, self.tokens_per_task)))
    out = {}
    for name, pred in preds.items():
      task = 'rgb' if name == 'norm_rgb' else name
      target = inputs[task]
      pix = _pixel_mask(masks[task], self.grid, pred.shape[1:3]) if task in masks else jnp.ones(pred.shape[:3])
      pred = pred.astype(jnp.float32)
      if task == SEMSEG:
        logp = jax.nn.log_softmax(pred, axis=-1)
        per_pixel = -jnp.take_along_axis(logp, target[..., None].astype(jnp.int32), axis=-1)[..., 0]
      elif task == 'depth':
        per_pixel = jnp.abs(pred - target).mean(axis=-1)
      else:
        if name == 'norm_rgb':
          target = patch_normalize(target, self.encoder.patch_size)
        per_pixel = jnp.square(pred - target).mean(axis=-1)
      out[name] = masked_mean(per_pixel, pix)
    return out

  def forward(self, params, batch, info: MaskInfo, dropout_rng=None, train: bool = True) -> dict[str, Any]:
    values = self.modalities(batch)
    inputs = {m: values[m] for m in self.encoder.modalities}
    rngs = {'dropout': dropout_rng} if dropout_rng is not None else None
    preds = self.model.apply({'params': params}, inputs, info.ids_keep, info.ids_restore, self.tokens_per_task,
                             self.grid, not train, rngs=rngs)
    losses = self.losses(preds, values, info.mask)  # an output the encoder does not read is predicted whole
    return {'preds': preds, 'losses': losses, 'loss': sum(losses.values()), 'inputs': inputs}

  def loss_fn(self, params, extras, batch, rng, step):
    mask_rng, drop_rng = jax.random.split(rng)
    out = self.forward(params, batch, self.draw_mask(mask_rng, batch['image'].shape[0]), drop_rng)
    metrics = {'loss': out['loss'], **{f'loss_{k}': v for k, v in out['losses'].items()}}
    return out['loss'], (metrics, extras)

  def predict_from_rgb(self, params, batch) -> dict[str, Any]:
    """Every output from RGB alone (all other modalities' tokens hidden): the cross-modal prediction."""
    b = batch['image'].shape[0]
    hidden = np.concatenate([np.full(n, m != 'rgb', np.float32)
                             for m, n in zip(self.encoder.modalities, self.tokens_per_task)])
    order = np.argsort(hidden, kind='stable').astype(np.int32)  # the RGB tokens first, in place order
    restore = np.argsort(order).astype(np.int32)
    visible = int((hidden == 0).sum())
    info = MaskInfo(jnp.broadcast_to(jnp.asarray(hidden), (b, hidden.size)),
                    jnp.broadcast_to(jnp.asarray(order[:visible]), (b, visible)),
                    jnp.broadcast_to(jnp.asarray(restore), (b, hidden.size)))
    return self.forward(params, batch, info, train=False)
