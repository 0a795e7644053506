"""ConvNet encoders: ResNet and ConvNeXt with timm's math, NHWC (``config.model.encoder.name`` 'resnet' /
'convnext'; the feature contract is in :mod:`mim_jax.models.encoders`).

Both return ``cls=None``, ``feature_map`` (the last stage ``[B, h, w, C]``), ``patch_tokens`` / ``tokens`` (that map
as ``[B, h*w, C]``, raster order), ``pooled`` (the spatial mean ``[B, C]``; for ConvNeXt after timm's head
LayerNorm, i.e. timm's ``forward_head(pre_logits=True)``) and ``stages`` (the four stage outputs, strides 4/8/16/32
with the default stems).

**ResNet** (``timm.models.resnet.ResNet``): stem ``'imagenet'`` = 7x7 stride-2 conv (pad 3), BN, ReLU, 3x3
stride-2 max pool (pad 1); ``'small'`` = 3x3 stride-1 conv (pad 1), BN, ReLU, no pool (CIFAR style, for 28-64 px
images; timm has no such stem, its parity is checked on a timm ResNet whose ``conv1`` / ``maxpool`` were
swapped). Stage ``s`` has ``widths[s]`` planes (timm's ``channels``; a Bottleneck outputs 4x that) and stride 2 from
stage 1 on, on the first block's 3x3 conv (Bottleneck: its second conv, timm's default); the first block of a
stage projects its shortcut (1x1 conv with the stride, then BN) when the stride or the width changes. The stem is
``stem_width`` channels wide (64; timm's plain stem is always 64). The last BN of every residual branch starts at
gamma 0 (timm's ``zero_init_last=True``); convs start kaiming-normal (fan out, ReLU gain).

**ConvNeXt** (``timm.models.convnext.ConvNeXt``): stem = ``patch_size`` x ``patch_size`` conv with that stride,
then LayerNorm; a stage downsamples with LayerNorm then a 2x2 stride-2 conv when its stride is 2 (stages > 0, and
stage 0 too when ``patch_size`` is 2: timm's rule); blocks: depthwise 7x7 conv (pad 3) -> LayerNorm -> Linear 4x
-> GELU (exact) -> Linear -> LayerScale (gamma, init 1e-6) -> drop path -> + input. Every LayerNorm has eps 1e-6.
Small images: ``patch_size=2`` is timm's ``ConvNeXt(patch_size=2)`` (stride 2 stem, then stage 0 downsamples
too, so 32 px images give maps of 8, 4, 2, 1 px); ``patch_size=2, stage0_stride=1`` (no stage-0 downsample; timm's
model with ``stages[0].downsample`` removed) takes 28 px images to maps of 14, 7, 3, 1 px. The default stem
(stride 4) leaves no pixel for the last stage of a 28 px image and is refused.
timm's ``convnext_atto`` sets ``conv_mlp=True`` (its Linear layers are 1x1 convs and its norms channels-first): the
same math, so the same module here.

**BatchNorm** (ResNet) follows ``torch.nn.BatchNorm2d``: eps 1e-5, running averages updated with torch momentum
0.1 (``momentum=0.9`` in flax's convention) and the *unbiased* batch variance, as torch does (flax's
``nn.BatchNorm`` uses the biased one). Its parameters are ``scale`` / ``bias`` in ``params``; its running
statistics ``mean`` / ``var`` live in the ``batch_stats`` collection, never in ``params``: ``init`` returns both
collections, an eval forward (``deterministic=True``) reads ``batch_stats``, and a training forward normalizes by
the batch's statistics and must be applied with ``mutable=['batch_stats']`` to get the updated averages.

Layer-wise decay: ``layer_id`` is 0 for the stem, ``s + 1`` inside stage ``s`` and ``num_layers`` (stages + 1)
for what follows (ConvNeXt's head norm, classifier heads). Parameters carry logical axis names from
:mod:`mim_jax.models.vit` (at most one axis each maps to a mesh axis under the default rules: a conv kernel's input
channels, or its output channels when the input is the image).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.models.encoders import register_encoder
from mim_jax.models.vit import EMBED, MLP, DropPath, _param_init, gelu_exact, layer_norm, token_dense

Dtype = Any

ones = nn.initializers.ones
zeros = nn.initializers.zeros
kaiming_fan_out = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')  # torch kaiming_normal_(fan_out, relu)
trunc_normal = nn.initializers.truncated_normal(stddev=0.02)

# Kernel axis names: an image-reading conv shards its output channels (3 input channels do not split).
IMAGE_CONV = (None, None, None, EMBED)
CONV = (None, None, EMBED, MLP)
DEPTHWISE = (None, None, None, EMBED)

RESNET_VARIANTS: dict[str, tuple[str, tuple[int, ...]]] = {
    '18': ('basic', (2, 2, 2, 2)),
    '34': ('basic', (3, 4, 6, 3)),
    '50': ('bottleneck', (3, 4, 6, 3)),
    '101': ('bottleneck', (3, 4, 23, 3)),
    '152': ('bottleneck', (3, 8, 36, 3)),
}
RESNET_WIDTHS = (64, 128, 256, 512)
CONVNEXT_VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    'atto': ((2, 2, 6, 2), (40, 80, 160, 320)),
    'femto': ((2, 2, 6, 2), (48, 96, 192, 384)),
    'pico': ((2, 2, 6, 2), (64, 128, 256, 512)),
    'nano': ((2, 2, 8, 2), (80, 160, 320, 640)),
    'tiny': ((3, 3, 9, 3), (96, 192, 384, 768)),
    'small': ((3, 3, 27, 3), (96, 192, 384, 768)),
    'base': ((3, 3, 27, 3), (128, 256, 512, 1024)),
}


def conv(features: int, kernel: int, stride: int, padding: int, names: tuple, dtype: Dtype, name: str, *,
         use_bias: bool = False, groups: int = 1, init: Callable = kaiming_fan_out) -> nn.Conv:
  """A square conv with torch's explicit symmetric padding; kernel ``[k, k, in / groups, out]``."""
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((padding, padding),) * 2,
                 feature_group_count=groups, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=_param_init(init, names), bias_init=_param_init(zeros, (names[-1],)), name=name)


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
  return (size + 2 * padding - kernel) // stride + 1


class BatchNorm(nn.Module):
  """``torch.nn.BatchNorm2d`` over the last axis (see the module docstring): ``params`` scale / bias,
  ``batch_stats`` mean / var; statistics in float32 whatever the compute dtype."""

  momentum: float = 0.9  # flax's convention: running = momentum * running + (1 - momentum) * batch
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  zero_scale: bool = False  # gamma starts at 0 (the last BN of a residual branch, timm's zero_init_last)

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool, mask: jax.Array | None = None) -> jax.Array:
    """``mask`` ``[B, H, W, 1]`` (1 = active): SparK's sparse BatchNorm: statistics over the active positions only
    (what ``BatchNorm1d`` over the gathered active features computes) and zeros elsewhere."""
    c = x.shape[-1]
    scale = self.param('scale', _param_init(zeros if self.zero_scale else ones, (EMBED,)), (c,), jnp.float32)
    bias = self.param('bias', _param_init(zeros, (EMBED,)), (c,), jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # float32 statistics for bfloat16 compute
    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      if mask is None:
        n = x.size // c
        mean = xf.mean(axes)
        var = jnp.square(xf - mean).mean(axes)  # two passes, biased: what normalizes (torch too)
      else:
        m = mask.astype(jnp.float32)
        # active positions (the mask broadcasts over channels); at least 1, so that a sample set with no active
        # position (everything masked) normalizes by zeros instead of dividing by zero
        n = jnp.maximum(jnp.sum(m) * (x.size // (c * m.size)), 1.0)
        mean = jnp.sum(xf * m, axes) / n
        var = jnp.sum(jnp.square((xf - mean) * m), axes) / n
      if not self.is_initializing():
        unbiased = var * (n / jnp.maximum(n - 1, 1))
        mom = self.momentum
        ra_mean.value = mom * ra_mean.value + (1 - mom) * jax.lax.stop_gradient(mean)
        ra_var.value = mom * ra_var.value + (1 - mom) * jax.lax.stop_gradient(unbiased)
    y = (xf - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias
    if mask is not None:
      y = y * mask.astype(y.dtype)
    return y.astype(self.dtype)


def active_at(active: jax.Array | None, x: jax.Array) -> jax.Array | None:
  """SparK's active map ``[B, h, w]`` (True = visible, on the encoder's coarsest grid) at ``x``'s resolution,
  ``[B, H, W, 1]`` float (each cell repeated ``H / h`` times); None stays None (a dense forward)."""
  if active is None:
    return None
  (h, w), (hh, ww) = active.shape[1:3], x.shape[1:3]
  if hh % h or ww % w:
    raise ValueError(f'a {hh}x{ww} feature map is not a whole number of {h}x{w} mask cells: the image size must be '
                     'a multiple of the encoder\'s downsample ratio.')
  m = jnp.repeat(jnp.repeat(active.astype(x.dtype), hh // h, axis=1), ww // w, axis=2)
  return m[..., None]


def remask(x: jax.Array, mask: jax.Array | None) -> jax.Array:
  """``x`` with the inactive positions zeroed (SparK's sparse conv / pool: the dense op, then the mask)."""
  return x if mask is None else x * mask.astype(x.dtype)


def _check_images(images: jax.Array, sizes: list[tuple[int, int]], what: str) -> None:
  if images.ndim != 4:
    raise ValueError(f'images must be [batch, height, width, channels], got shape {images.shape}.')
  if min(min(s) for s in sizes) < 1:
    raise ValueError(f'images of {images.shape[1]}x{images.shape[2]} px are too small for this {what}: its '
                     f'feature maps would be {sizes}; use larger images or a smaller stem stride.')


def _outputs(stages: list[jax.Array], pooled: jax.Array) -> dict[str, Any]:
  last = stages[-1]
  tokens = last.reshape(last.shape[0], -1, last.shape[-1])
  return {'cls': None, 'feature_map': last, 'patch_tokens': tokens, 'tokens': tokens, 'pooled': pooled,
          'stages': tuple(stages)}


def _stage_layer_id(names, num_stages: int) -> int:
  for name in names:
    if name.startswith('stem'):
      return 0
    if name.startswith('stages_') and name[len('stages_'):].isdigit():
      s = int(name[len('stages_'):])
      if s >= num_stages:
        raise ValueError(f'parameter under {name!r} but the encoder has {num_stages} stages')
      return s + 1
  return num_stages + 1


def _from_config(cls, cfg, variants: dict, expand: Callable, overrides: dict, what: str):
  """Fields from ``variant`` (if given) overridden by the explicit non-None ones; unknown fields are an error."""
  fields = {k: v for k, v in dict(cfg or {}).items() if v is not None}
  variant = fields.pop('variant', None)
  if variant is not None:
    key = str(variant)
    if key not in variants:
      raise ValueError(f'unknown {what} variant {variant!r}; known: {sorted(variants)} (or set the sizes '
                       f'explicitly).')
    fields = {**expand(variants[key]), **fields}
  fields.update(overrides)
  known = {f.name for f in dataclasses.fields(cls)} - {'parent', 'name'}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f'unknown encoder setting(s) {unknown} for the {what}; known: {sorted(known | {"variant"})}.')
  for k in ('depths', 'widths', 'dims'):
    if k in fields:
      fields[k] = tuple(int(v) for v in fields[k])
  return cls(**fields)


# -- ResNet --


class BasicBlock(nn.Module):
  planes: int
  stride: int = 1
  project: bool = False  # the shortcut is a 1x1 conv + BN
  drop_path: float = 0.0
  zero_init_last: bool = True
  dtype: Dtype = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool, active: jax.Array | None = None) -> jax.Array:
    bn = lambda name, zero=False: BatchNorm(dtype=self.dtype, zero_scale=zero, name=name)
    y = conv(self.planes, 3, self.stride, 1, CONV, self.dtype, 'conv1')(x)
    m = active_at(active, y)  # a conv feeding a sparse BatchNorm needs no mask of its own: the BN applies it
    y = nn.relu(bn('bn1')(y, deterministic, m))
    y = conv(self.planes, 3, 1, 1, CONV, self.dtype, 'conv2')(y)
    y = bn('bn2', self.zero_init_last)(y, deterministic, m)
    return nn.relu(DropPath(self.drop_path, name='drop_path')(y, deterministic)
                   + _shortcut(self, x, deterministic, m))


class Bottleneck(nn.Module):
  planes: int
  stride: int = 1
  project: bool = False
  drop_path: float = 0.0
  zero_init_last: bool = True
  dtype: Dtype = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool, active: jax.Array | None = None) -> jax.Array:
    bn = lambda name, zero=False: BatchNorm(dtype=self.dtype, zero_scale=zero, name=name)
    y = conv(self.planes, 1, 1, 0, CONV, self.dtype, 'conv1')(x)
    y = nn.relu(bn('bn1')(y, deterministic, active_at(active, y)))
    y = conv(self.planes, 3, self.stride, 1, CONV, self.dtype, 'conv2')(y)  # stride on the 3x3 (timm)
    m = active_at(active, y)
    y = nn.relu(bn('bn2')(y, deterministic, m))
    y = conv(self.planes * 4, 1, 1, 0, CONV, self.dtype, 'conv3')(y)
    y = bn('bn3', self.zero_init_last)(y, deterministic, m)
    return nn.relu(DropPath(self.drop_path, name='drop_path')(y, deterministic)
                   + _shortcut(self, x, deterministic, m))


def _shortcut(block, x: jax.Array, deterministic: bool, mask: jax.Array | None) -> jax.Array:
  if not block.project:
    return x
  out = block.planes * block.expansion
  y = conv(out, 1, block.stride, 0, CONV, block.dtype, 'downsample_conv')(x)
  return BatchNorm(dtype=block.dtype, name='downsample_bn')(y, deterministic, mask)


RESNET_BLOCKS = {'basic': BasicBlock, 'bottleneck': Bottleneck}


class ResNetStage(nn.Module):
  """``depth`` blocks (``blocks_{b}``); the first has the stride and, when the stride or width changes, the
  projected shortcut."""

  block: str
  planes: int
  depth: int
  stride: int
  in_channels: int
  drop_path: tuple[float, ...]
  zero_init_last: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool, active: jax.Array | None = None) -> jax.Array:
    block = RESNET_BLOCKS[self.block]
    out = self.planes * block.expansion
    for b in range(self.depth):
      stride = self.stride if b == 0 else 1
      project = b == 0 and (stride != 1 or self.in_channels != out)
      x = block(self.planes, stride, project, self.drop_path[b], self.zero_init_last, self.dtype,
                name=f'blocks_{b}')(x, deterministic, active)
    return x


class StagedConvNet:
  """What ResNet and ConvNeXt share of the encoder contract (a mixin of the flax modules below): the config
  reader, stage-wise layer ids and the fine-tune clone. A subclass sets ``variants``, ``family`` and
  ``expand_variant`` (a variant's value -> fields)."""

  variants: dict = {}
  family = ''
  # A classifier reads ``pooled`` as timm's head does: no extra norm (ConvNeXt's pooled feature is already after
  # its head norm).
  fc_norm_default = False

  @classmethod
  def from_config(cls, cfg, *, dtype: Dtype = jnp.float32, attention_impl: str | None = None,
                  remat: Any = None, **overrides):
    """From a ``config.model.encoder`` block (``variant`` and/or explicit fields); ``attention_impl`` and
    ``remat`` apply to ViTs only and are ignored."""
    del attention_impl, remat
    return _from_config(cls, cfg, cls.variants, cls.expand_variant, {'dtype': dtype, **overrides}, cls.family)

  @property
  def num_layers(self) -> int:
    return len(self.depths) + 1

  def layer_id(self, names) -> int:
    """0 for the stem (``stem_*``), ``s + 1`` inside ``stages_{s}`` (a ConvNeXt stage's downsample included, as
    timm groups it), ``num_layers`` for the rest (``head_norm``, classifier heads)."""
    return _stage_layer_id(names, len(self.depths))

  def for_finetuning(self, *, drop_path: float, pooled: bool, dtype: Dtype, remat):
    """The same network with this drop path and compute dtype; ``pooled`` changes nothing (a ConvNet's pooled
    feature goes to the head as it is), ``remat`` is for ViTs."""
    del pooled, remat
    return self.clone(drop_path=float(drop_path), dtype=dtype)


@register_encoder('resnet')
class ResNetEncoder(StagedConvNet, nn.Module):
  """ResNet (timm's ``ResNet``) on images ``[B, H, W, C]``; see the module docstring.

  ``block``: 'basic' (ResNet-18/34) or 'bottleneck' (50/101/152); ``depths``: blocks per stage (timm's
  ``layers``); ``widths``: planes per stage (timm's ``channels``; Bottleneck stages output 4x); ``stem``:
  'imagenet' or 'small'; ``drop_path``: timm's ``drop_path_rate`` (block ``i`` of ``n`` drops with
  ``rate * i / (n - 1)``). Config ``variant``: '18', '34', '50', '101', '152' (explicit fields override it).
  """

  block: str = 'basic'
  depths: tuple[int, ...] = (2, 2, 2, 2)
  widths: tuple[int, ...] = RESNET_WIDTHS
  stem: str = 'imagenet'
  stem_width: int = 64
  drop_path: float = 0.0
  zero_init_last: bool = True
  dtype: Dtype = jnp.float32
  variants = RESNET_VARIANTS
  family = 'ResNet'
  expand_variant = staticmethod(lambda v: {'block': v[0], 'depths': v[1]})

  def feature_sizes(self, h: int, w: int) -> list[tuple[int, int]]:
    """The spatial size after the stem and after each stage."""
    def stem(s):
      return s if self.stem == 'small' else conv_out(conv_out(s, 7, 2, 3), 3, 2, 1)
    sizes = [(stem(h), stem(w))]
    for i in range(len(self.depths)):
      s = 1 if i == 0 else 2
      sizes.append((conv_out(sizes[-1][0], 3, s, 1), conv_out(sizes[-1][1], 3, s, 1)))
    return sizes

  @property
  def downsample_ratio(self) -> int:
    """The total stride of the last stage (32; 8 with the 'small' stem and four stages)."""
    return (1 if self.stem == 'small' else 4) * 2 ** (len(self.depths) - 1)

  @nn.compact
  def __call__(self, images: jax.Array, deterministic: bool = True,
               active: jax.Array | None = None) -> dict[str, Any]:
    """``deterministic=False``: batch statistics (apply with ``mutable=['batch_stats']``) and drop path (the
    ``dropout`` rng). ``active`` ``[B, h, w]`` (True = visible) on the last stage's grid: SparK's sparse forward
    (every conv / pool output re-masked, BatchNorm statistics over active positions; see ``active_at``)."""
    if self.block not in RESNET_BLOCKS:
      raise ValueError(f"ResNet block must be 'basic' or 'bottleneck', got {self.block!r}.")
    if len(self.depths) != len(self.widths):
      raise ValueError(f'ResNet depths {self.depths} and widths {self.widths} need one entry per stage.')
    if self.stem not in ('imagenet', 'small'):
      raise ValueError(f"ResNet stem must be 'imagenet' (7x7 s2 conv + max pool) or 'small' (3x3 s1 conv), got "
                       f'{self.stem!r}.')
    _check_images(images, self.feature_sizes(*images.shape[1:3]), 'ResNet')
    x = images.astype(self.dtype)
    if self.stem == 'imagenet':
      x = conv(self.stem_width, 7, 2, 3, IMAGE_CONV, self.dtype, 'stem_conv')(x)
    else:
      x = conv(self.stem_width, 3, 1, 1, IMAGE_CONV, self.dtype, 'stem_conv')(x)
    x = nn.relu(BatchNorm(dtype=self.dtype, name='stem_bn')(x, deterministic, active_at(active, x)))
    if self.stem == 'imagenet':
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
      x = remask(x, active_at(active, x))
    block = RESNET_BLOCKS[self.block]
    total = sum(self.depths)
    rates = [self.drop_path * k / (total - 1) if total > 1 else 0.0 for k in range(total)]
    channels, first = self.stem_width, 0
    stages = []
    for s, (depth, planes) in enumerate(zip(self.depths, self.widths)):
      x = ResNetStage(self.block, planes, depth, 1 if s == 0 else 2, channels, tuple(rates[first:first + depth]),
                      self.zero_init_last, self.dtype, name=f'stages_{s}')(x, deterministic, active)
      channels, first = planes * block.expansion, first + depth
      stages.append(x)
    return _outputs(stages, x.astype(jnp.float32).mean(axis=(1, 2)).astype(self.dtype))


# -- ConvNeXt --


class ConvNeXtBlock(nn.Module):
  drop_path: float = 0.0
  layer_scale: float = 1e-6  # gamma's initial value; 0 = no LayerScale
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool, active: jax.Array | None = None) -> jax.Array:
    c = x.shape[-1]
    m = active_at(active, x)
    y = conv(c, 7, 1, 3, DEPTHWISE, self.dtype, 'conv_dw', use_bias=True, groups=c, init=trunc_normal)(x)
    # Sparse: a LayerNorm is per position, so SparK's LayerNorm over the active positions is this one re-masked
    # (which also covers the depthwise conv's mask).
    y = remask(layer_norm(self.dtype, 'norm')(y).astype(self.dtype), m)
    y = token_dense(_dense(int(self.mlp_ratio * c), (EMBED, MLP), self.dtype, 'fc1'), y)
    y = token_dense(_dense(c, (MLP, EMBED), self.dtype, 'fc2'), gelu_exact(y))
    if self.layer_scale:
      gamma = self.param('gamma', _param_init(lambda _, shape: jnp.full(shape, self.layer_scale, jnp.float32),
                                              (EMBED,)), (c,))
      y = y * gamma.astype(y.dtype)
    return x + DropPath(self.drop_path, name='drop_path')(remask(y, m), deterministic)


def _dense(features: int, names: tuple[str, str], dtype: Dtype, name: str) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=_param_init(trunc_normal, names),
                  bias_init=_param_init(zeros, (names[1],)), name=name)


class ConvNeXtStage(nn.Module):
  """``downsample_norm`` + ``downsample_conv`` (2x2 stride 2) when ``stride`` is 2, then ``blocks_{b}``."""

  dim: int
  depth: int
  stride: int
  drop_path: tuple[float, ...]
  layer_scale: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool, active: jax.Array | None = None) -> jax.Array:
    if self.stride > 1 or x.shape[-1] != self.dim:
      k = 2 if self.stride > 1 else 1
      x = remask(layer_norm(self.dtype, 'downsample_norm')(x).astype(self.dtype), active_at(active, x))
      x = conv(self.dim, k, self.stride, 0, CONV, self.dtype, 'downsample_conv', use_bias=True,
               init=trunc_normal)(x)
      x = remask(x, active_at(active, x))
    for b in range(self.depth):
      x = ConvNeXtBlock(self.drop_path[b], self.layer_scale, dtype=self.dtype, name=f'blocks_{b}')(
          x, deterministic, active)
    return x


@register_encoder('convnext')
class ConvNeXtEncoder(StagedConvNet, nn.Module):
  """ConvNeXt (timm's ``ConvNeXt``) on images ``[B, H, W, C]``; see the module docstring.

  ``depths`` / ``dims``: blocks and channels per stage; ``patch_size``: the stem's kernel and stride (4);
  ``stage0_stride``: 0 = timm's rule (stage 0 downsamples by 2 when ``patch_size`` is 2), or 1 / 2 explicitly
  (``patch_size=2, stage0_stride=1``: maps of 14, 7, 3, 1 px from 28 px images); ``layer_scale``: LayerScale's initial
  gamma (timm's ``ls_init_value``); ``drop_path``: timm's ``drop_path_rate`` (rising linearly from 0 over all
  blocks). Config ``variant``: 'atto', 'femto', 'pico', 'nano', 'tiny', 'small', 'base'.
  """

  depths: tuple[int, ...] = (3, 3, 9, 3)
  dims: tuple[int, ...] = (96, 192, 384, 768)
  patch_size: int = 4
  # 0: timm's rule (2 when patch_size is 2, else 1); 1 with patch_size=2: a stride-2 stem only, for 28 px images
  stage0_stride: int = 0
  layer_scale: float = 1e-6
  drop_path: float = 0.0
  dtype: Dtype = jnp.float32
  variants = CONVNEXT_VARIANTS
  family = 'ConvNeXt'
  expand_variant = staticmethod(lambda v: {'depths': v[0], 'dims': v[1]})

  def stage_strides(self) -> list[int]:
    """Stage 0: ``stage0_stride``, or by timm's rule (0) 2 when the stem's stride is 2; later stages 2."""
    if self.stage0_stride not in (0, 1, 2):
      raise ValueError(f"ConvNeXt stage0_stride must be 0 (timm's rule), 1 or 2, got {self.stage0_stride!r}.")
    first = self.stage0_stride or (2 if self.patch_size == 2 else 1)
    return [first] + [2] * (len(self.depths) - 1)

  def feature_sizes(self, h: int, w: int) -> list[tuple[int, int]]:
    """The spatial size after the stem and after each stage."""
    p = self.patch_size
    sizes = [(conv_out(h, p, p, 0), conv_out(w, p, p, 0))]
    for s in self.stage_strides():
      k = 2 if s > 1 else 1
      sizes.append((conv_out(sizes[-1][0], k, s, 0), conv_out(sizes[-1][1], k, s, 0)))
    return sizes

  @property
  def downsample_ratio(self) -> int:
    """The total stride of the last stage (the stem's, times each stage's)."""
    return self.patch_size * int(np.prod(self.stage_strides()))

  @nn.compact
  def __call__(self, images: jax.Array, deterministic: bool = True,
               active: jax.Array | None = None) -> dict[str, Any]:
    """``deterministic=False``: drop path (the ``dropout`` rng). ``active``: SparK's sparse forward, as for
    :class:`ResNetEncoder` (LayerNorms and convs re-masked, each block's branch re-masked before the residual)."""
    if len(self.depths) != len(self.dims):
      raise ValueError(f'ConvNeXt depths {self.depths} and dims {self.dims} need one entry per stage.')
    _check_images(images, self.feature_sizes(*images.shape[1:3]), 'ConvNeXt')
    p = self.patch_size
    x = conv(self.dims[0], p, p, 0, IMAGE_CONV, self.dtype, 'stem_conv', use_bias=True,
             init=trunc_normal)(images.astype(self.dtype))
    x = remask(layer_norm(self.dtype, 'stem_norm')(x).astype(self.dtype), active_at(active, x))
    total = sum(self.depths)
    rates = np.linspace(0.0, self.drop_path, total) if total > 1 else [self.drop_path] * total
    first = 0
    stages = []
    for s, (depth, dim, stride) in enumerate(zip(self.depths, self.dims, self.stage_strides())):
      x = ConvNeXtStage(dim, depth, stride, tuple(float(r) for r in rates[first:first + depth]), self.layer_scale,
                        self.dtype, name=f'stages_{s}')(x, deterministic, active)
      first += depth
      stages.append(x)
    pooled = layer_norm(self.dtype, 'head_norm')(x.astype(jnp.float32).mean(axis=(1, 2))).astype(self.dtype)
    return _outputs(stages, pooled)
