"""Parity adapter for SparK (keyu-tian/SparK ``pretrain/spark.py``, ``encoder.py``, ``decoder.py``; fixtures by
tools/fixtures/official_spark.py): one training-mode forward and backward with a given mask.

Rebuilds :class:`~mim_jax.methods.spark.SparK` from the recorded config, imports the official state dict (the
ConvNet through :mod:`mim_jax.interop.timm_convnets`: SparK's ResNet is timm's, its ConvNeXt is renamed to timm's
names first; densify and decoder below), runs ``input/images`` with ``input/active_b1ff`` and compares the four
encoder maps (``feat{i}``, largest first), the densified decoder inputs (``to_dec{i}``, smallest first), the
reconstruction (``rec_bchw``), the loss, every updated BatchNorm running statistic (``after/<name>``) and every
gradient. Official layers the decoder never reads (``meta.unused_params``: a small-stem ResNet's stride-1 map,
which SparK densifies and drops) are not built in mim_jax and are skipped.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mim_jax.interop import parity, timm_convnets

ENCODER = 'sparse_encoder.sp_cnn.'
_BN = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'), 'running_mean': ('batch_stats', 'mean'),
       'running_var': ('batch_stats', 'var')}
_LN = {'weight': 'scale', 'bias': 'bias'}
_DECODER_CONV = {'0': 'conv1', '1': 'bn1', '3': 'conv2', '4': 'bn2'}


def convnext_to_timm_names(name: str) -> str:
  """SparK's own ConvNeXt names -> timm's (same tensors): ``downsample_layers.0`` is the stem, ``downsample_layers.i``
  stage i's downsample, ``stages.i.j.{dwconv, pwconv1, pwconv2}`` timm's ``stages.i.blocks.j.{conv_dw, mlp.fc1,
  mlp.fc2}``."""
  if m := re.match(r'^downsample_layers\.0\.(\d)\.(\w+)$', name):
    return f'stem.{m[1]}.{m[2]}'
  if m := re.match(r'^downsample_layers\.(\d+)\.(\d)\.(\w+)$', name):
    return f'stages.{m[1]}.downsample.{m[2]}.{m[3]}'
  if m := re.match(r'^stages\.(\d+)\.(\d+)\.(.+)$', name):
    part = {'dwconv': 'conv_dw', 'pwconv1': 'mlp.fc1', 'pwconv2': 'mlp.fc2'}
    head, _, rest = m[3].partition('.')
    return f'stages.{m[1]}.blocks.{m[2]}.{part.get(head, head)}' + (f'.{rest}' if rest else '')
  raise parity.FixtureError(f'unknown SparK ConvNeXt parameter {name!r}')


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _rules(name: str) -> tuple[str, tuple[str, ...], str] | None:
  """An official densify / decoder name -> (collection, mim_jax path, layout) with layout 'conv' | 'convT' |
  'token' | 'vector'; None for names that are not densify / decoder tensors."""
  if m := re.match(r'^mask_tokens\.(\d+)$', name):
    return 'params', (f'densify_{m[1]}', 'mask_token'), 'token'
  if m := re.match(r'^densify_norms\.(\d+)\.(\w+)$', name):
    collection, leaf = _BN.get(m[2], ('params', _LN.get(m[2])))
    return collection, (f'densify_{m[1]}', 'norm', leaf), 'vector'
  if m := re.match(r'^densify_projs\.(\d+)\.(weight|bias)$', name):
    return 'params', (f'densify_{m[1]}', 'proj', 'kernel' if m[2] == 'weight' else 'bias'), \
        'conv' if m[2] == 'weight' else 'vector'
  if m := re.match(r'^dense_decoder\.dec\.(\d+)\.up_sample\.(weight|bias)$', name):
    return 'params', ('decoder', f'blocks_{m[1]}', 'up', 'kernel' if m[2] == 'weight' else 'bias'), \
        'convT' if m[2] == 'weight' else 'vector'
  if m := re.match(r'^dense_decoder\.dec\.(\d+)\.conv\.(\d)\.(\w+)$', name):
    layer = _DECODER_CONV[m[2]]
    if layer.startswith('conv'):
      return 'params', ('decoder', f'blocks_{m[1]}', layer, 'kernel'), 'conv'
    collection, leaf = _BN[m[3]]
    return collection, ('decoder', f'blocks_{m[1]}', layer, leaf), 'vector'
  if m := re.match(r'^dense_decoder\.proj\.(weight|bias)$', name):
    return 'params', ('decoder', 'proj', 'kernel' if m[1] == 'weight' else 'bias'), \
        'conv' if m[1] == 'weight' else 'vector'
  return None


def _to_flax(value: np.ndarray, layout: str) -> np.ndarray:
  if layout == 'conv':
    return timm_convnets.conv_kernel(value)
  if layout == 'convT':  # ConvTranspose2d [in, out, k, k] -> [k, k, out, in] (flax's transpose_kernel layout)
    return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
  if layout == 'token':
    return value.reshape(-1)
  return value


def _from_flax(value: np.ndarray, layout: str, shape) -> np.ndarray:
  if layout == 'conv':
    return timm_convnets.torch_conv(value)
  if layout == 'convT':
    return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
  return value.reshape(shape)


def import_state(state: dict, encoder_name: str, unused: set[str]) -> tuple[dict, dict]:
  """``(params, batch_stats)`` of the SparK model from the official state dict."""
  encoder_state = {k[len(ENCODER):]: v for k, v in state.items() if k.startswith(ENCODER)}
  if encoder_name == 'resnet':
    weights = timm_convnets.resnet_from_timm(encoder_state, head=False)
  else:
    weights = timm_convnets.convnext_from_timm(
        {convnext_to_timm_names(k): v for k, v in encoder_state.items()}, head=False)
    # SparK's ConvNeXt has no head norm without a classifier; mim_jax's always builds one (for the pooled feature).
    # The loss never reads it: identity values, and no gradient to compare.
    last = max((k for k in weights.params if k.startswith('stages_')), key=lambda k: int(k[len('stages_'):]))
    width = weights.params[last]['blocks_0']['norm']['scale'].shape[0]
    weights.params['head_norm'] = {'scale': np.ones(width, np.float32), 'bias': np.zeros(width, np.float32)}
  params, stats = {'encoder': weights.params}, {'encoder': weights.batch_stats} if weights.batch_stats else {}
  for name, value in state.items():
    if name.startswith(ENCODER) or name in unused:
      continue
    rule = _rules(name)
    if rule is None:
      raise parity.FixtureError(f'unknown SparK parameter {name!r}')
    collection, path, layout = rule
    _set(params if collection == 'params' else stats, path, _to_flax(np.asarray(value, np.float32), layout))
  return params, stats


def _encoder_names(tree: dict, encoder_name: str, stats: dict | None = None) -> dict[str, np.ndarray]:
  """mim_jax encoder params (and running stats) under the official names."""
  if encoder_name == 'resnet':
    timm = timm_convnets.resnet_to_timm(tree, stats or {})
    return {ENCODER + k: v for k, v in timm.items() if not k.endswith('num_batches_tracked')}
  return timm_convnets.convnext_to_timm(tree)  # timm's names: _official_tensors maps them to SparK's


def check(fx: parity.Fixture) -> list[parity.Check]:
  from mim_jax.methods.base import Facts, build

  meta = fx.config()
  enc = dict(meta.model.encoder)
  unused = set(fx.meta.get('unused_params', []))
  images, active = fx.need('inputs', 'images', 'active_b1ff')
  b, c, s, _ = images.shape
  config = ml_collections.ConfigDict({
      'method': 'spark', 'model': {'encoder': enc}, 'mask': {'name': 'random', 'ratio': float(meta.mask_ratio)},
      'spark': {'decoder_width': int(meta.decoder_width), 'densify_norm': str(meta.densify_norm)}})
  method = build(config, Facts.for_images((s, s, c)))
  if method.ratio != int(meta.downsample_ratio):
    raise parity.FixtureError(f'{fx.path}: mim_jax\'s encoder has downsample ratio {method.ratio}, the official '
                              f'{meta.downsample_ratio}')
  params, stats = import_state(fx.params, enc['name'], unused)
  params, stats = jax.tree.map(jnp.asarray, (params, stats))
  x = jnp.asarray(images.transpose(0, 2, 3, 1))
  act = jnp.asarray(active[:, 0].astype(bool))

  def forward(p):
    out = method.forward(p, stats, x, act, train=True)
    return {'loss': out['loss'], 'stages': out['stages'], 'to_dec': out['to_dec'], 'rec': out['rec'],
            'batch_stats': out['batch_stats']}

  out, grads = parity.forward_and_grads(forward, params)
  nchw = lambda a: np.asarray(a).transpose(0, 3, 1, 2)  # noqa: E731
  ours = {'loss': np.asarray(out['loss']), 'rec_bchw': nchw(out['rec'])}
  ours.update({f'feat{i}': nchw(f) for i, f in enumerate(out['stages'])})
  ours.update({f'to_dec{i}': nchw(t) for i, t in enumerate(out['to_dec'])})
  ours.update(_official_tensors(params, jax.tree.map(np.asarray, out['batch_stats']), fx.params, enc['name'],
                                prefix='after/', only_stats=True))
  unused_layers = {u.rsplit('.', 1)[0] for u in unused}
  unused_maps = {f'to_dec{i}' for i in range(len(out['to_dec']), len(out['stages']))} if unused else set()
  checks = []
  for name, ref in sorted(fx.outputs.items()):
    if name == 'rec_or_inp' or name in unused_maps or name.removeprefix('after/').rsplit('.', 1)[0] in unused_layers:
      continue  # the official visualisation, and the layers mim_jax does not build
    if name not in ours:
      raise parity.FixtureError(f'{fx.path}: an output mim_jax does not compute: {name}')
    checks.append(parity.loss(name, ours[name], ref) if name == 'loss' else parity.activation(name, ours[name], ref))
  ours_grads = _official_tensors(jax.tree.map(np.asarray, grads), {}, fx.params, enc['name'])
  return checks + parity.gradients(ours_grads, {k: v for k, v in fx.grads.items() if k not in unused})


def _official_tensors(params: dict, stats: dict, reference: dict, encoder_name: str, prefix: str = '',
                      only_stats: bool = False) -> dict[str, np.ndarray]:
  """mim_jax params (or running stats) under official names, in the official shapes of ``reference``."""
  out = {}
  enc = _encoder_names(params['encoder'], encoder_name, stats.get('encoder'))
  if encoder_name == 'convnext':
    back = {convnext_to_timm_names(k[len(ENCODER):]): k for k in reference if k.startswith(ENCODER)}
    enc = {back[k]: v for k, v in enc.items() if k in back}
  out.update(enc)
  for name, ref in reference.items():
    rule = _rules(name)
    if rule is None:
      continue
    collection, path, layout = rule
    node = params if collection == 'params' else stats
    for key in path:
      node = node.get(key) if isinstance(node, dict) else None
      if node is None:
        break
    if node is not None:
      out[name] = _from_flax(np.asarray(node), layout, np.shape(ref))
  if only_stats:
    return {prefix + k: v for k, v in out.items() if k.endswith(('running_mean', 'running_var'))}
  return {prefix + k: v for k, v in out.items()}
