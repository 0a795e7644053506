"""timm ResNet / ConvNeXt state dicts <-> the parameters of :mod:`mim_jax.models.convnets`.

``resnet_from_timm`` / ``convnext_from_timm`` take a state dict (numpy arrays, or anything ``np.asarray`` reads,
keyed by timm's names) and return :class:`ConvNetWeights` ``(params, batch_stats, head)``: ``params`` and
``batch_stats`` are the encoder's variable collections (plain nested dicts, apply them as
``{'params': params, 'batch_stats': batch_stats}``), ``head`` the classifier (timm's ``fc`` / ``head.fc``) as a
Dense ``{'kernel': [C, classes], 'bias': [classes]}`` (``logits = pooled @ kernel + bias``), or None when the state
dict has none or ``head=False`` drops it. ``*_config_from_timm`` read the encoder's settings off the shapes, and
``*_to_timm`` go back (with ``num_batches_tracked`` = 0, so ``load_state_dict(strict=True)`` accepts the result).

Layouts: torch conv ``[out, in, kh, kw]`` -> flax ``[kh, kw, in, out]`` (a depthwise ``[C, 1, 7, 7]`` becomes the
grouped-conv kernel ``[7, 7, 1, C]`` by the same transpose); Linear ``[out, in]`` -> ``[in, out]`` (timm's
``conv_mlp=True`` models, e.g. ``convnext_atto``, store their MLP as 1x1 convs ``[out, in, 1, 1]``: same matrix);
BatchNorm ``weight`` / ``bias`` -> ``scale`` / ``bias`` (params), ``running_mean`` / ``running_var`` -> ``mean`` /
``var`` (batch_stats); ``num_batches_tracked`` is ignored (it only matters for torch's ``momentum=None``).
A key this module does not know is an error naming it (e.g. a deep stem, SE attention, ConvNeXt-V2's GRN).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

_BN = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'), 'running_mean': ('batch_stats', 'mean'),
       'running_var': ('batch_stats', 'var')}
_LN = {'weight': 'scale', 'bias': 'bias'}


@dataclasses.dataclass
class ConvNetWeights:
  params: dict
  batch_stats: dict
  head: dict | None

  @property
  def variables(self) -> dict:
    """``{'params': ..., 'batch_stats': ...}`` (no ``batch_stats`` entry for ConvNeXt), ready for ``apply``."""
    return {'params': self.params, **({'batch_stats': self.batch_stats} if self.batch_stats else {})}


def conv_kernel(w: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(w).transpose(2, 3, 1, 0))


def torch_conv(k: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(k).transpose(3, 2, 0, 1))


def linear_kernel(w: np.ndarray) -> np.ndarray:
  w = np.asarray(w)
  if w.ndim == 4:  # a 1x1 conv used as a Linear (timm conv_mlp=True)
    w = w[:, :, 0, 0]
  return np.ascontiguousarray(w.T)


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  if path[-1] in tree:
    raise ValueError(f'two state-dict entries map to {"/".join(path)}')
  tree[path[-1]] = value


def _flat(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _unknown(keys, what: str) -> ValueError:
  return ValueError(f'{len(keys)} state-dict key(s) are not part of a {what} that mim_jax can build: '
                    f'{sorted(keys)[:8]}{" ..." if len(keys) > 8 else ""}')


def _head(state: Mapping, prefix: str, keep: bool) -> dict | None:
  w, b = state.get(prefix + 'weight'), state.get(prefix + 'bias')
  if w is None or not keep:
    return None
  w = np.asarray(w, np.float32)
  return {'kernel': np.ascontiguousarray(w.T),
          'bias': np.zeros(w.shape[0], np.float32) if b is None else np.asarray(b, np.float32)}


# -- ResNet --

_RESNET_STEM = re.compile(r'^(conv1|bn1)\.(\w+)$')
_RESNET_BLOCK = re.compile(r'^layer(\d+)\.(\d+)\.(conv[123]|bn[123]|downsample\.0|downsample\.1)\.(\w+)$')


def resnet_from_timm(state: Mapping[str, Any], *, head: bool = True) -> ConvNetWeights:
  """A timm ``ResNet`` state dict (BasicBlock or Bottleneck, plain stem or our 3x3 'small' one) ->
  ``(params, batch_stats, head)`` for :class:`~mim_jax.models.convnets.ResNetEncoder`."""
  params: dict = {}
  stats: dict = {}
  unknown = []
  for key, value in state.items():
    if key.endswith('num_batches_tracked') or key in ('fc.weight', 'fc.bias'):
      continue
    value = np.asarray(value, np.float32)
    m = _RESNET_STEM.match(key)
    if m:
      scope, layer = ('stem_conv',) if m[1] == 'conv1' else ('stem_bn',), m[1]
    else:
      m = _RESNET_BLOCK.match(key)
      if not m:
        unknown.append(key)
        continue
      part = {'downsample.0': 'downsample_conv', 'downsample.1': 'downsample_bn'}.get(m[3], m[3])
      scope, layer = (f'stages_{int(m[1]) - 1}', f'blocks_{m[2]}', part), part
    field = m[m.lastindex]
    if layer.startswith('conv') or layer == 'downsample_conv':
      if field != 'weight':
        unknown.append(key)
        continue
      _set(params, scope + ('kernel',), conv_kernel(value))
    elif field in _BN:
      collection, name = _BN[field]
      _set(params if collection == 'params' else stats, scope + (name,), value)
    else:
      unknown.append(key)
  if unknown:
    raise _unknown(unknown, 'timm ResNet (plain stem, BasicBlock / Bottleneck, 1x1 conv downsample)')
  if 'stem_conv' not in params:
    raise ValueError('the state dict has no conv1.weight: is it a timm ResNet state dict?')
  return ConvNetWeights(params, stats, _head(state, 'fc.', head))


def resnet_config_from_timm(state: Mapping[str, Any]) -> dict[str, Any]:
  """The ResNetEncoder fields (block, depths, widths, stem, stem_width) of a timm ResNet state dict. A 3x3
  ``conv1`` is read as the 'small' stem (stride 1, no max pool), a 7x7 one as 'imagenet'."""
  depths: dict[int, int] = {}
  for key in state:
    m = _RESNET_BLOCK.match(key)
    if m:
      depths[int(m[1])] = max(depths.get(int(m[1]), 0), int(m[2]) + 1)
  if not depths or 'conv1.weight' not in state:
    raise ValueError('not a timm ResNet state dict (no conv1.weight / layerN.M.* keys)')
  stages = sorted(depths)
  bottleneck = 'layer1.0.conv3.weight' in state
  conv1 = np.shape(state['conv1.weight'])
  return {'block': 'bottleneck' if bottleneck else 'basic', 'depths': tuple(depths[s] for s in stages),
          'widths': tuple(int(np.shape(state[f'layer{s}.0.conv1.weight'])[0]) for s in stages),
          'stem': 'small' if conv1[-1] == 3 else 'imagenet', 'stem_width': int(conv1[0])}


def resnet_to_timm(params: Mapping, batch_stats: Mapping, head: Mapping | None = None) -> dict[str, np.ndarray]:
  """The inverse of :func:`resnet_from_timm` (timm names, torch layouts)."""
  out: dict[str, np.ndarray] = {}

  def prefix(path):
    if path[0] in ('stem_conv', 'stem_bn'):
      return {'stem_conv': 'conv1', 'stem_bn': 'bn1'}[path[0]]
    s, b, part = int(path[0].split('_')[1]), int(path[1].split('_')[1]), path[2]
    part = {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}.get(part, part)
    return f'layer{s + 1}.{b}.{part}'

  for path, v in _flat(params).items():
    v = np.asarray(v)
    if path[-1] == 'kernel':
      out[prefix(path) + '.weight'] = torch_conv(v)
    else:
      out[prefix(path) + ('.weight' if path[-1] == 'scale' else '.bias')] = v
  for path, v in _flat(batch_stats).items():
    out[prefix(path) + ('.running_mean' if path[-1] == 'mean' else '.running_var')] = np.asarray(v)
    out.setdefault(prefix(path) + '.num_batches_tracked', np.asarray(0, np.int64))
  if head is not None:
    out['fc.weight'], out['fc.bias'] = np.ascontiguousarray(np.asarray(head['kernel']).T), np.asarray(head['bias'])
  return out


# -- ConvNeXt --

_CONVNEXT_STEM = re.compile(r'^stem\.([01])\.(weight|bias)$')
_CONVNEXT_DOWN = re.compile(r'^stages\.(\d+)\.downsample\.([01])\.(weight|bias)$')
_CONVNEXT_BLOCK = re.compile(
    r'^stages\.(\d+)\.blocks\.(\d+)\.(conv_dw|norm|mlp\.fc1|mlp\.fc2|gamma)(?:\.(weight|bias))?$')


def convnext_from_timm(state: Mapping[str, Any], *, head: bool = True) -> ConvNetWeights:
  """A timm ``ConvNeXt`` state dict (patch stem, LayerNorm, ``head_norm_first=False``; ``conv_mlp`` either way)
  -> ``(params, {}, head)`` for :class:`~mim_jax.models.convnets.ConvNeXtEncoder`."""
  params: dict = {}
  unknown = []
  for key, value in state.items():
    if key in ('head.fc.weight', 'head.fc.bias'):
      continue
    value = np.asarray(value, np.float32)
    if m := _CONVNEXT_STEM.match(key):
      if m[1] == '0':
        _set(params, ('stem_conv', 'kernel' if m[2] == 'weight' else 'bias'),
             conv_kernel(value) if m[2] == 'weight' else value)
      else:
        _set(params, ('stem_norm', _LN[m[2]]), value)
    elif m := _CONVNEXT_DOWN.match(key):
      stage = f'stages_{m[1]}'
      if m[2] == '0':
        _set(params, (stage, 'downsample_norm', _LN[m[3]]), value)
      else:
        _set(params, (stage, 'downsample_conv', 'kernel' if m[3] == 'weight' else 'bias'),
             conv_kernel(value) if m[3] == 'weight' else value)
    elif m := _CONVNEXT_BLOCK.match(key):
      scope = (f'stages_{m[1]}', f'blocks_{m[2]}')
      part, field = m[3], m[4]
      if part == 'gamma' and field is None:
        _set(params, scope + ('gamma',), value)
      elif part == 'conv_dw' and field:
        _set(params, scope + ('conv_dw', 'kernel' if field == 'weight' else 'bias'),
             conv_kernel(value) if field == 'weight' else value)
      elif part == 'norm' and field:
        _set(params, scope + ('norm', _LN[field]), value)
      elif part.startswith('mlp.') and field:
        _set(params, scope + (part[4:], 'kernel' if field == 'weight' else 'bias'),
             linear_kernel(value) if field == 'weight' else value)
      else:
        unknown.append(key)
    elif key in ('head.norm.weight', 'head.norm.bias'):
      _set(params, ('head_norm', _LN[key.rsplit('.', 1)[1]]), value)
    else:
      unknown.append(key)
  if unknown:
    raise _unknown(unknown, "timm ConvNeXt (patch stem, LayerNorm, norm after pooling, no GRN)")
  if 'stem_conv' not in params:
    raise ValueError('the state dict has no stem.0.weight: is it a timm ConvNeXt state dict?')
  return ConvNetWeights(params, {}, _head(state, 'head.fc.', head))


def convnext_config_from_timm(state: Mapping[str, Any]) -> dict[str, Any]:
  """The ConvNeXtEncoder fields (depths, dims, patch_size, stage0_stride, layer_scale) of a timm ConvNeXt state
  dict. ``layer_scale`` is only whether there are gammas (1e-6, timm's init, when there are; their values are
  weights)."""
  depths: dict[int, int] = {}
  for key in state:
    if m := _CONVNEXT_BLOCK.match(key):
      depths[int(m[1])] = max(depths.get(int(m[1]), 0), int(m[2]) + 1)
  if not depths or 'stem.0.weight' not in state:
    raise ValueError('not a timm ConvNeXt state dict (no stem.0.weight / stages.N.blocks.M.* keys)')
  stages = sorted(depths)
  patch = int(np.shape(state['stem.0.weight'])[-1])
  timm_rule = 2 if patch == 2 else 1
  stage0 = 2 if 'stages.0.downsample.1.weight' in state else 1
  return {'depths': tuple(depths[s] for s in stages),
          'dims': tuple(int(np.shape(state[f'stages.{s}.blocks.0.conv_dw.weight'])[0]) for s in stages),
          'patch_size': patch, 'stage0_stride': 0 if stage0 == timm_rule else stage0,
          'layer_scale': 1e-6 if 'stages.0.blocks.0.gamma' in state else 0.0}


def convnext_to_timm(params: Mapping, head: Mapping | None = None, *, conv_mlp: bool = False
                     ) -> dict[str, np.ndarray]:
  """The inverse of :func:`convnext_from_timm`; ``conv_mlp=True`` writes the MLP as 1x1 convs (``convnext_atto``
  and the other ``conv_mlp`` models)."""
  out: dict[str, np.ndarray] = {}
  ln = {'scale': 'weight', 'bias': 'bias'}
  for path, v in _flat(params).items():
    v = np.asarray(v)
    leaf = path[-1]
    if path[0] == 'stem_conv':
      out[f'stem.0.{"weight" if leaf == "kernel" else "bias"}'] = torch_conv(v) if leaf == 'kernel' else v
    elif path[0] == 'stem_norm':
      out[f'stem.1.{ln[leaf]}'] = v
    elif path[0] == 'head_norm':
      out[f'head.norm.{ln[leaf]}'] = v
    elif path[1] == 'downsample_norm':
      out[f'stages.{path[0][7:]}.downsample.0.{ln[leaf]}'] = v
    elif path[1] == 'downsample_conv':
      out[f'stages.{path[0][7:]}.downsample.1.{"weight" if leaf == "kernel" else "bias"}'] = (
          torch_conv(v) if leaf == 'kernel' else v)
    else:
      block = f'stages.{path[0][7:]}.blocks.{path[1][7:]}'
      part = path[2]
      if part == 'gamma':
        out[f'{block}.gamma'] = v
      elif part == 'conv_dw':
        out[f'{block}.conv_dw.{"weight" if leaf == "kernel" else "bias"}'] = torch_conv(v) if leaf == 'kernel' else v
      elif part == 'norm':
        out[f'{block}.norm.{ln[leaf]}'] = v
      else:
        w = np.ascontiguousarray(v.T)
        out[f'{block}.mlp.{part}.{"weight" if leaf == "kernel" else "bias"}'] = (
            (w[:, :, None, None] if conv_mlp else w) if leaf == 'kernel' else v)
  if head is not None:
    out['head.fc.weight'] = np.ascontiguousarray(np.asarray(head['kernel']).T)
    out['head.fc.bias'] = np.asarray(head['bias'])
  return out


# -- whole checkpoints (mim_jax.interop.load / save with format 'timm') --


def is_timm_convnet(state: Mapping[str, Any]) -> bool:
  """Whether a state dict is a timm ResNet (``conv1`` + ``layerN``) or ConvNeXt (``stem.0`` + ``stages.N``)."""
  return ('conv1.weight' in state and any(k.startswith('layer1.') for k in state)) or (
      'stem.0.weight' in state and any(k.startswith('stages.') for k in state))


def checkpoint_from_timm(state: Mapping[str, Any], *, image_size: tuple[int, int] | None = None):
  """A :class:`~mim_jax.weights.spec.Checkpoint` of a timm ResNet / ConvNeXt state dict (encoder, BatchNorm
  statistics, head). ConvNets take any resolution; ``image_size`` (default 224, timm's) is what the spec records."""
  from mim_jax.models.convnets import ConvNeXtEncoder, ResNetEncoder
  from mim_jax.weights.spec import Checkpoint, ModelSpec

  if 'conv1.weight' in state:
    cls, config, weights, stem = ResNetEncoder, resnet_config_from_timm(state), resnet_from_timm(state), 'conv1'
  else:
    cls, config, weights, stem = ConvNeXtEncoder, convnext_config_from_timm(state), convnext_from_timm(state), \
        'stem.0'
  notes = []
  if image_size is None:
    image_size = (224, 224)
    notes.append('image size 224 recorded (timm ConvNets take any size; pass source_image_size to record another).')
  if cls is ConvNeXtEncoder and np.ndim(state['stages.0.blocks.0.mlp.fc1.weight']) == 4:
    notes.append("the MLPs were 1x1 convs (timm conv_mlp=True, e.g. convnext_atto): the same math; writing back "
                 'to timm gives Linear layers.')
  channels = int(np.shape(state[f'{stem}.weight'])[1])
  params = {'encoder': weights.params}
  if weights.batch_stats:
    params['encoder_batch_stats'] = weights.batch_stats
  if weights.head is not None:
    params['head'] = weights.head
  module = cls.from_config(config)
  spec = ModelSpec.for_encoder(module, (*image_size, channels),
                               num_classes=0 if weights.head is None else int(weights.head['bias'].shape[0]))
  return Checkpoint(params, spec, notes)


def checkpoint_to_timm(ckpt) -> dict[str, np.ndarray]:
  """timm's state dict of a ResNet / ConvNeXt :class:`~mim_jax.weights.spec.Checkpoint`."""
  head = ckpt.params.get('head')
  if ckpt.spec.encoder == 'resnet':
    return resnet_to_timm(ckpt.params['encoder'], ckpt.params.get('encoder_batch_stats', {}), head)
  if ckpt.spec.encoder == 'convnext':
    return convnext_to_timm(ckpt.params['encoder'], head)
  raise ValueError(f'timm ConvNet names exist for resnet and convnext encoders, not {ckpt.spec.encoder!r}.')
