"""R-MAE, radial masking for LiDAR (Tayebati et al., "Sense Less, Generate More: Pre-training LiDAR Perception with
Masked Autoencoders"; official code sinatayebati/Radial_MAE ``pcdet/models/backbones_3d/radial_mae.py``).

* Input: a voxel occupancy grid ``voxels`` ``[Z, Y, X]`` centred on the sensor (mim_jax.data.lidar; the official
  code reads OpenPCDet's MeanVFE features of KITTI voxels: at our resolution occupancy is the feature).
* Mask (``config.mask``: ``name='radial'``, ``sector_deg``, ``ratio``, ``mode``; :mod:`mim_jax.masking.radial`):
  azimuth sectors of ``sector_deg``; ``int((1 - ratio) * S)`` of the ``S`` non-empty sectors are kept, the rest
  hidden. ``mode='sensor'`` (default: sensor-centred angles, per sample) or ``'official'`` (index-space angles, one
  choice per batch, the 10% random-voxel fallback).
* Encoder (:mod:`mim_jax.models.voxel_cnn`): the official sparse 3-D ConvNet's layout run densely with re-masking
  (the documented deviation from spconv) on the kept voxels only.
* Decoder: three transposed 3-D convolutions (128 -> 32 -> 8 -> 1; BatchNorm and ReLU after the first two, no
  biases) back to the voxel grid (each doubles every axis here; the official strides fit KITTI's grid).
* Loss: binary cross-entropy with logits of the predicted occupancy against the occupancy of **every** voxel of the
  unmasked sweep, over the whole dense grid (visible and hidden, occupied and empty), as the official criterion
  ``BCEWithLogitsLoss()``; ``radial_mae.pos_weight`` > 1 weights occupied voxels (not official).

Batch: ``voxels`` float32 ``[Z, Y, X]`` (0/1) and ``label``. State: ``params = {'encoder', 'decoder'}``, ``extras =
{'batch_stats': {'encoder', 'decoder'}}``. Frozen features: the encoder on every occupied voxel, the BEV map's
cells (``pooled`` = their mean).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mim_jax.data.batch import Field
from mim_jax.masking.radial import MODES, RADIAL, RadialMask, radial_keep
from mim_jax.methods.base import Method, config_block, register
from mim_jax.models.convnets import BatchNorm
from mim_jax.models.encoders import build_encoder
from mim_jax.models.voxel_cnn import VoxelEncoder


def radial_mae_defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      'pos_weight': 1.0,  # 1: the official unweighted BCE
      'decoder_widths': (32, 8),
  })


class OccupancyDecoder(nn.Module):
  """The encoder's dense output -> occupancy logits ``[B, Z, Y, X]``: transposed convs (kernel 3, stride 2, no
  bias), BatchNorm + ReLU between them. ``dims=3``: ``[B, z, y, x, C]`` -> ``[B, 8z, 8y, 8x]``; ``dims=2`` (the
  bird's-eye-view encoder): ``[B, y, x, C]`` -> ``[B, 8y, 8x, Z]``, the last layer's channels being the z-cells."""

  widths: tuple[int, int] = (32, 8)
  dims: int = 3
  z_cells: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    kernel, strides = (3,) * self.dims, (2,) * self.dims
    for i, width in enumerate(self.widths):
      x = nn.ConvTranspose(width, kernel, strides, padding='SAME', use_bias=False, dtype=self.dtype,
                           param_dtype=jnp.float32, name=f'deconv{i + 1}')(x)
      x = nn.relu(BatchNorm(momentum=0.9, epsilon=1e-5, dtype=self.dtype, name=f'bn{i + 1}')(x, deterministic))
    out = 1 if self.dims == 3 else self.z_cells
    x = nn.ConvTranspose(out, kernel, strides, padding='SAME', use_bias=False, dtype=self.dtype,
                         param_dtype=jnp.float32, name=f'deconv{len(self.widths) + 1}')(x)
    return x[..., 0] if self.dims == 3 else x.transpose(0, 3, 1, 2)


class RadialMAEModel(nn.Module):
  encoder: VoxelEncoder
  decoder: OccupancyDecoder

  def __call__(self, voxels: jax.Array, keep: jax.Array, deterministic: bool) -> jax.Array:
    out = self.encoder(voxels * keep.astype(voxels.dtype), deterministic, keep)
    return self.decoder(out['dense'], deterministic)


def occupancy_bce(logits: jax.Array, target: jax.Array, pos_weight: float = 1.0) -> jax.Array:
  """Mean binary cross-entropy with logits over every voxel; ``pos_weight`` multiplies the occupied voxels' term."""
  logits = logits.astype(jnp.float32)
  log_p, log_not_p = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
  return -jnp.mean(pos_weight * target * log_p + (1.0 - target) * log_not_p)


def hidden_iou(logits: jax.Array, target: jax.Array, hidden_columns: jax.Array) -> jax.Array:
  """Occupancy IoU (prediction: logit > 0) over the voxels of the hidden sectors, pooled over the batch."""
  region = jnp.broadcast_to(hidden_columns[:, None], target.shape)
  pred, true = (logits > 0) & region, (target > 0) & region
  return jnp.sum(pred & true) / jnp.maximum(jnp.sum(pred | true), 1)


@register('radial_mae')
class RadialMAE(Method):
  class_tokens = ('none',)

  def __init__(self, config, facts):
    super().__init__(config, facts)
    self.cfg = config_block(config, 'radial_mae', radial_mae_defaults())
    settings = self.module_settings()
    self.encoder = build_encoder(config.model.encoder, dtype=settings['dtype'])
    if not isinstance(self.encoder, VoxelEncoder):
      raise ValueError("radial_mae pre-trains the voxel ConvNet (config.model.encoder.name='voxel_cnn'), got "
                       f'{type(self.encoder).__name__}.')
    mask = dict(config.mask)
    if mask.get('name') != RADIAL:
      raise ValueError(f"radial_mae draws its own data-dependent mask: set config.mask.name='{RADIAL}' (with ratio, "
                       f"sector_deg, mode), got {mask.get('name')!r}.")
    unknown = sorted(set(mask) - {'name', 'ratio', 'sector_deg', 'mode'})
    if unknown:
      raise ValueError(f'config.mask has settings the radial mask does not take: {unknown}; it takes ratio, '
                       'sector_deg and mode.')
    self.mask_mode = mask.get('mode', 'sensor')
    self.mask_ratio, self.sector_deg = float(mask.get('ratio', 0.8)), float(mask.get('sector_deg', 5.0))
    if self.mask_mode not in MODES:
      raise ValueError(f'config.mask.mode must be one of {MODES}, got {self.mask_mode!r}.')
    if not 0.0 < self.mask_ratio < 1.0:
      raise ValueError(f'config.mask.ratio must be in (0, 1), got {self.mask_ratio}: 0 hides nothing, so there is '
                       'nothing to generate.')
    sectors = int(np.ceil(360.0 / self.sector_deg))
    if self.mask_mode == 'sensor' and int((1.0 - self.mask_ratio) * sectors) < 1:
      raise ValueError(f'config.mask keeps no sector: int((1 - {self.mask_ratio}) x {sectors} sectors of '
                       f'{self.sector_deg} degrees) = 0, so the encoder would see nothing. Use narrower sectors or a '
                       'lower ratio.')
    from mim_jax.data import lidar

    self.grid = tuple(int(v) for v in config.data.get('voxel_grid', lidar.GRID))
    self.decoder = OccupancyDecoder(tuple(int(v) for v in self.cfg.decoder_widths), self.encoder.dims, self.grid[0],
                                    settings['dtype'])
    self.model = RadialMAEModel(self.encoder, self.decoder)

  def batch_fields(self, train: bool = True) -> dict[str, Field]:
    del train
    return {'voxels': Field(self.grid, 'float32'), 'label': Field((), 'int32')}

  def record_transform(self, data_cfg, source, train: bool):
    from mim_jax.data.lidar import VoxelRecord

    return VoxelRecord(train, source.image_key, source.label_key, bool(data_cfg.get('voxel_augment', True)))

  def voxels(self, batch) -> jax.Array:
    v = batch['voxels']
    if v.ndim != 4 or tuple(v.shape[1:]) != self.grid:
      raise ValueError(f'expected voxel grids of shape [batch, {", ".join(map(str, self.grid))}], got '
                       f'{tuple(v.shape)}; check data.voxel_grid.')
    return v

  def encoder_inputs(self, batch):
    return batch['voxels']

  def draw_mask(self, rng, voxels: jax.Array) -> RadialMask:
    return radial_keep(rng, voxels > 0, sector_deg=self.sector_deg, ratio=self.mask_ratio, mode=self.mask_mode)

  def init(self, rng, batch):
    v = self.voxels(batch)
    variables = self.model.init(rng, v, v > 0, True)
    return variables['params'], {'batch_stats': nn.meta.unbox(variables['batch_stats'])}

  def forward(self, params, batch_stats, voxels, mask: RadialMask, train: bool = True) -> dict:
    variables = {'params': params, 'batch_stats': batch_stats}
    if train:
      logits, updated = self.model.apply(variables, voxels, mask.keep, False, mutable=['batch_stats'])
      batch_stats = updated['batch_stats']
    else:
      logits = self.model.apply(variables, voxels, mask.keep, True)
    target = (voxels > 0).astype(jnp.float32)
    loss = occupancy_bce(logits, target, float(self.cfg.pos_weight))
    return {'logits': logits, 'loss': loss, 'batch_stats': batch_stats,
            'hidden_iou': hidden_iou(logits, target, mask.hidden_columns),
            'kept_fraction': mask.keep.sum() / jnp.maximum((voxels > 0).sum(), 1)}

  def loss_fn(self, params, extras, batch, rng, step):
    v = self.voxels(batch)
    out = self.forward(params, extras['batch_stats'], v, self.draw_mask(rng, v), True)
    metrics = {'loss': out['loss'], 'hidden_iou': out['hidden_iou'], 'kept_fraction': out['kept_fraction']}
    return out['loss'], (metrics, {**extras, 'batch_stats': out['batch_stats']})

  # -- evaluation: the encoder on every occupied voxel, its running statistics --

  def eval_params(self, params, extras):
    return {**params, 'batch_stats': extras['batch_stats']}

  def encoder_variables(self, params) -> dict:
    return {'params': params['encoder'], 'batch_stats': params['batch_stats']['encoder']}

  def generate(self, params, voxels: jax.Array, rng) -> dict[str, jax.Array]:
    """The masked sweep's input, the predicted occupancy logits and the mask, with running statistics."""
    mask = self.draw_mask(rng, voxels)
    out = self.forward({k: v for k, v in params.items() if k != 'batch_stats'}, params['batch_stats'], voxels, mask,
                       train=False)
    return {'logits': out['logits'], 'keep': mask.keep, 'hidden_columns': mask.hidden_columns,
            'loss': out['loss'], 'hidden_iou': out['hidden_iou']}


def mirrored_baseline(occupied: np.ndarray, keep: np.ndarray, hidden_columns: np.ndarray) -> np.ndarray:
  """The "copy the mirrored visible sector" baseline: a hidden column takes the occupancy of its mirror image
  across the street's axis (y -> -y) where that column is visible, else across the sensor's cross axis (x -> -x)
  where that one is, else stays empty. ``occupied``/``keep`` ``[B, Z, Y, X]``, ``hidden_columns`` ``[B, Y, X]``;
  the grid is centred on the sensor, so mirroring is a flip of the axis."""
  visible = keep.astype(bool)
  hidden = hidden_columns.astype(bool)
  guess = np.zeros_like(visible)
  decided = np.zeros_like(hidden)
  for axis in (2, 3):  # y, then x
    fill = hidden & np.flip(~hidden, axis - 1) & ~decided  # the mirror column was visible: copy it, empty or not
    guess |= np.flip(visible, axis) & fill[:, None]
    decided |= fill
  return guess
