"""SparK (Tian et al., ICLR 2023, "Designing BERT for Convolutional Networks: Sparse and Hierarchical Masked
Modeling"): masked image modeling for ConvNets.

* Mask: cells of the encoder's coarsest grid (its downsample ratio: 32 for ImageNet stems, 8 for the 'small'
  ResNet stem); ``round(h * w * (1 - ratio))`` visible cells drawn uniformly (the ``random`` generator with
  SparK's rounding). The input keeps the visible cells' pixels and zeros the rest.
* Encoder: the ConvNet run **sparse** (``encoder(images, active=...)``, :mod:`mim_jax.models.convnets`): every
  conv / pool output is re-masked at its resolution and BatchNorm statistics come from active positions only, so
  masked pixels never reach a visible feature. It returns four hierarchical maps (``stages``).
* Densify, per scale from the smallest map up: sparse BatchNorm (ResNet) or LayerNorm (ConvNeXt), a learned mask
  token in the inactive positions, a projection to the decoder's width at that scale (1x1 conv at the smallest,
  identity when the widths already match; 3x3 conv otherwise; the decoder width halves per scale).
* Decoder (``LightDecoder``): ``log2(ratio)`` UNet blocks, each ``x += to_dec[i]`` (where there is a map), then a 4x4
  stride-2 transposed conv, 3x3 conv, BN, ReLU6, 3x3 conv, BN (channels halve per block); a 1x1 conv to pixels.
  Maps the decoder has no block for (a small stem's stride-1 map) are not densified.
* Loss: per-patch normalized pixels (patches of the ratio's size; mean and sqrt(unbiased var + 1e-6)), MSE per
  patch, averaged over the masked cells.

State: ``params = {'encoder', 'densify_{i}', 'decoder'}``, ``extras = {'batch_stats': {'encoder', 'densify_{i}',
'decoder'}}`` (BatchNorm running statistics, updated by every training forward). Evaluation reads the encoder with
its running statistics (``eval_params`` folds them in). Official code: keyu-tian/SparK ``pretrain/spark.py``,
``encoder.py``, ``decoder.py``; parity fixtures in tests/fixtures/official_spark/.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mim_jax import masking
from mim_jax.methods.base import Method, check_images, config_block, register, require_hidden_tokens
from mim_jax.models.convnets import (CONV, BatchNorm, ConvNeXtEncoder, ResNetEncoder, active_at, conv,
                                     kaiming_fan_out, remask, trunc_normal)
from mim_jax.models.encoders import build_encoder
from mim_jax.models.vit import layer_norm
from mim_jax.targets import normalize_patches, patchify, reconstruction_images

DENSIFY_NORMS = ('bn', 'ln', 'none')
# torch's default Conv2d init (kaiming_uniform with a = sqrt(5)): SparK leaves its densify projections at it.
torch_conv_default = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')
# SparK's mask tokens: trunc_normal_(std=.02, a=-.02, b=.02), i.e. cut at one standard deviation.
mask_token_init = nn.initializers.truncated_normal(0.02, lower=-1.0, upper=1.0)


def spark_defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      'decoder_width': 768,  # LightDecoder's width (SparK's default for every encoder)
      'densify_norm': 'auto',  # 'auto': 'bn' for ResNets, 'ln' for ConvNeXts (SparK's rule); 'bn' | 'ln' | 'none'
      'sparse': True,  # False: the naive dense baseline (zeroed pixels, dense encoder and norms), for comparison
  })


class Densify(nn.Module):
  """One scale of SparK's densify: sparse norm, mask token in the inactive positions, projection."""

  width: int | None  # the projection's output channels; None = no projection (the widths already match)
  kernel: int
  norm: str
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, train: bool, sparse: bool = True) -> jax.Array:
    """``mask`` ``[B, h, w, 1]`` (1 = active); ``sparse=False``: the norm is dense (the naive baseline)."""
    norm_mask = mask if sparse else None
    if self.norm == 'bn':
      x = BatchNorm(dtype=self.dtype, name='norm')(x, not train, norm_mask)
    elif self.norm == 'ln':
      x = remask(layer_norm(self.dtype, 'norm')(x).astype(self.dtype), norm_mask)
    token = self.param('mask_token', nn.with_logical_partitioning(mask_token_init, (None,)), (x.shape[-1],),
                       jnp.float32)
    x = jnp.where(mask > 0, x, token.astype(x.dtype))
    if self.width is None:
      return x
    return conv(self.width, self.kernel, 1, self.kernel // 2, CONV, self.dtype, 'proj', use_bias=True,
                init=torch_conv_default)(x)


# torch ConvTranspose2d(k=4, s=2, p=1): output row 2i + a reads input rows {i, i - 1} through kernel rows {1, 3}
# (a = 0) and rows {i + 1, i} through kernel rows {0, 2} (a = 1): per output phase, a 2-tap conv. (input offset ->
# kernel row) for each phase; the other offset of the 3 is a zero tap.
_PHASE_TAPS = ({-1: 3, 0: 1}, {0: 2, 1: 0})


class UpConv2x(nn.Module):
  """torch's ``ConvTranspose2d(c, c, kernel_size=4, stride=2, padding=1)`` computed as one 3x3 conv to the four
  output phases and a depth-to-space (the same sums; XLA's CPU transposed conv is ~4x slower). Params as flax's
  ``ConvTranspose(transpose_kernel=True)``: ``kernel`` ``[4, 4, out, in]`` (torch's weight ``[in, out, 4, 4]``
  transposed), ``bias``."""

  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c_in, c_out = x.shape[-1], self.features
    kernel = self.param('kernel', nn.with_logical_partitioning(kaiming_fan_out, (None, None, None, None)),
                        (4, 4, c_out, c_in), jnp.float32)
    bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, (None,)), (c_out,), jnp.float32)
    taps = jnp.zeros((3, 3, c_in, 2, 2, c_out), jnp.float32)
    for a, rows in enumerate(_PHASE_TAPS):
      for b, cols in enumerate(_PHASE_TAPS):
        for dy, ky in rows.items():
          for dx, kx in cols.items():
            taps = taps.at[dy + 1, dx + 1, :, a, b, :].set(kernel[ky, kx].T)
    y = jax.lax.conv_general_dilated(x.astype(self.dtype), taps.reshape(3, 3, c_in, 4 * c_out).astype(self.dtype),
                                     (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    bsz, h, w, _ = y.shape
    y = y.reshape(bsz, h, w, 2, 2, c_out).transpose(0, 1, 3, 2, 4, 5).reshape(bsz, 2 * h, 2 * w, c_out)
    return y + bias.astype(y.dtype)


class UNetBlock(nn.Module):
  """2x upsampling: 4x4 stride-2 transposed conv (torch's padding 1), then conv-BN-ReLU6-conv-BN."""

  out_channels: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    c = x.shape[-1]
    x = UpConv2x(c, self.dtype, name='up')(x)
    x = conv(c, 3, 1, 1, CONV, self.dtype, 'conv1', init=trunc_normal)(x)
    x = jnp.clip(BatchNorm(dtype=self.dtype, name='bn1')(x, not train), 0.0, 6.0)  # ReLU6
    x = conv(self.out_channels, 3, 1, 1, CONV, self.dtype, 'conv2', init=trunc_normal)(x)
    return BatchNorm(dtype=self.dtype, name='bn2')(x, not train)


class LightDecoder(nn.Module):
  """SparK's UNet-like decoder: ``num_blocks`` UNet blocks from ``width`` channels, halving each, then a 1x1
  conv to ``out_channels`` pixels."""

  width: int
  num_blocks: int
  out_channels: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, to_dec: list[jax.Array], train: bool) -> jax.Array:
    x = 0.0
    for i in range(self.num_blocks):
      if i < len(to_dec):
        x = x + to_dec[i]
      x = UNetBlock(self.width // 2 ** (i + 1), self.dtype, name=f'blocks_{i}')(x, train)
    return conv(self.out_channels, 1, 1, 0, CONV, self.dtype, 'proj', use_bias=True, init=trunc_normal)(x)


class SparKModel(nn.Module):
  encoder: nn.Module
  decoder_width: int
  densify_norm: str
  out_channels: int
  dtype: jnp.dtype = jnp.float32
  # False: the naive dense baseline SparK argues against: masked pixels zeroed, but a dense encoder (no
  # re-masking, BatchNorm statistics over every position) and dense densify norms.
  sparse: bool = True

  @nn.compact
  def __call__(self, images: jax.Array, active: jax.Array, train: bool) -> dict:
    """``active`` ``[B, h, w]`` (True = visible) on the encoder's coarsest grid. Returns the encoder's stage maps
    (masked; largest first), the densified maps (smallest first) and the reconstruction ``[B, H, W, C]``."""
    x = remask(images, active_at(active, images))
    stages = list(self.encoder(x, deterministic=not train, active=active if self.sparse else None)['stages'])
    num_blocks = round(math.log2(self.encoder.downsample_ratio))
    width, to_dec = self.decoder_width, []
    for i, fmap in enumerate(stages[::-1][:num_blocks]):  # from the smallest map up
      identity = i == 0 and fmap.shape[-1] == width
      to_dec.append(Densify(None if identity else width, 1 if i == 0 else 3, self.densify_norm, self.dtype,
                            name=f'densify_{i}')(fmap, active_at(active, fmap), train, self.sparse))
      width //= 2
    rec = LightDecoder(self.decoder_width, num_blocks, self.out_channels, self.dtype, name='decoder')(to_dec, train)
    return {'stages': stages, 'to_dec': to_dec, 'rec': rec}


def spark_loss(images: jax.Array, rec: jax.Array, active: jax.Array, patch: int) -> tuple[jax.Array, jax.Array]:
  """``(loss, per-cell MSE [B, L])``: MSE to the per-patch normalized pixels, averaged over the masked cells."""
  target = normalize_patches(patchify(images.astype(jnp.float32), patch))
  per_cell = jnp.mean(jnp.square(patchify(rec.astype(jnp.float32), patch) - target), axis=-1)
  masked = 1.0 - active.reshape(active.shape[0], -1).astype(jnp.float32)
  return jnp.sum(per_cell * masked) / (jnp.sum(masked) + 1e-8), per_cell


@register('spark')
class SparK(Method):
  class_tokens = ('none',)
  no_weight_decay = ('mask_token', 'gamma')  # SparK's nowd keys (plus biases and norms, as everywhere)

  def __init__(self, config, facts):
    super().__init__(config, facts)
    settings = self.module_settings()
    self.encoder = build_encoder(config.model.encoder, dtype=settings['dtype'])
    if not isinstance(self.encoder, (ResNetEncoder, ConvNeXtEncoder)):
      raise ValueError(f'spark pre-trains ConvNets (config.model.encoder.name resnet or convnext), got '
                       f'{type(self.encoder).__name__}.')
    self.cfg = config_block(config, 'spark', spark_defaults())
    norm = self.cfg.densify_norm
    if norm == 'auto':
      norm = 'bn' if isinstance(self.encoder, ResNetEncoder) else 'ln'
    if norm not in DENSIFY_NORMS:
      raise ValueError(f"config.spark.densify_norm must be 'auto' or one of {DENSIFY_NORMS}, got {norm!r}.")
    ratio = self.encoder.downsample_ratio
    h, w, c = self.image_shape
    if h % ratio or w % ratio or ratio & (ratio - 1):
      raise ValueError(f'spark masks cells of the encoder\'s downsample ratio ({ratio} px): the image size {h}x{w} '
                       f'must be a multiple of it (set data.image_size, or a smaller stem: stem=\'small\').')
    self.ratio, self.grid_hw = ratio, (h // ratio, w // ratio)
    decoder_width = int(self.cfg.decoder_width)
    if decoder_width % 2 ** round(math.log2(ratio)):
      raise ValueError(f'config.spark.decoder_width={decoder_width} must halve {round(math.log2(ratio))} times '
                       'into whole channels.')
    self.model = SparKModel(self.encoder, decoder_width, norm, c, settings['dtype'], bool(self.cfg.sparse))
    mask_cfg = {k: v for k, v in dict(config.mask).items() if k != 'name'}
    n = self.grid_hw[0] * self.grid_hw[1]
    if config.mask.name == 'random' and mask_cfg.get('num_visible') is None:
      # SparK's count: round(N * (1 - ratio)) visible (MAE truncates instead).
      mask_cfg = {**mask_cfg, 'num_visible': max(1, round(n * (1 - float(mask_cfg.get('ratio', 0.6)))))}
    self.masker = masking.build(config.mask.name, masking.Grid(*self.grid_hw), **mask_cfg)
    require_hidden_tokens(self.masker, self.name, config)

  # -- the objective --

  def draw_active(self, rng, batch_size: int) -> jax.Array:
    """``[B, h, w]`` bool, True = visible, from the configured mask generator."""
    mask = self.masker(rng, batch_size).mask
    return jnp.logical_not(mask.astype(bool)).reshape(batch_size, *self.grid_hw)

  def init(self, rng, batch):
    images = self.images(batch)
    active = self.draw_active(jax.random.key(0), images.shape[0])
    variables = self.model.init({'params': rng, 'dropout': rng}, images, active, False)
    return variables['params'], {'batch_stats': nn.meta.unbox(variables['batch_stats'])}

  def forward(self, params, batch_stats, images: jax.Array, active: jax.Array, train: bool = True,
              dropout_rng: jax.Array | None = None) -> dict:
    """The model's outputs, the loss, the per-cell MSE and (``train``) the updated running statistics."""
    check_images(images, self.image_shape)
    rngs = {'dropout': dropout_rng} if dropout_rng is not None else None
    variables = {'params': params, 'batch_stats': batch_stats}
    if train:
      out, updated = self.model.apply(variables, images, active, True, rngs=rngs, mutable=['batch_stats'])
      batch_stats = updated['batch_stats']
    else:
      out = self.model.apply(variables, images, active, False)
    loss, per_cell = spark_loss(images, out['rec'], active, self.ratio)
    return {**out, 'loss': loss, 'loss_per_cell': per_cell, 'batch_stats': batch_stats}

  def loss_fn(self, params, extras, batch, rng, step):
    images = self.images(batch)
    mask_rng, drop_rng = jax.random.split(rng)
    active = self.draw_active(mask_rng, images.shape[0])
    out = self.forward(params, extras['batch_stats'], images, active, True, drop_rng)
    return out['loss'], ({'loss': out['loss']}, {**extras, 'batch_stats': out['batch_stats']})

  # -- evaluation: the dense encoder with its running statistics --

  def eval_params(self, params, extras):
    return {**params, 'batch_stats': extras['batch_stats']}

  def encoder_variables(self, params) -> dict:
    return {'params': params['encoder'], 'batch_stats': params['batch_stats']['encoder']}

  def reconstruct(self, params, images, rng):
    """SparK's visualisation: the visible cells' pixels, and the reconstruction (de-normalized with each
    patch's own statistics) in the masked ones."""
    active = self.draw_active(rng, images.shape[0])
    out = self.forward({k: v for k, v in params.items() if k != 'batch_stats'}, params['batch_stats'], images,
                       active, train=False)
    masked = 1.0 - active.reshape(active.shape[0], -1).astype(jnp.float32)
    figures = reconstruction_images(patchify(out['rec'], self.ratio), masked, images, self.ratio, self.grid_hw,
                                    norm_pix=True)
    return {**figures, 'loss': out['loss']}
