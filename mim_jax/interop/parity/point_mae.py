"""Parity adapter for Point-MAE (Pang-Yatian/Point-MAE ``models/Point_MAE.py`` with the pure-PyTorch stand-ins of
tools/fixtures/pointmae_standins.py for its CUDA FPS, kNN and Chamfer kernels; fixtures by
tools/fixtures/official_pointmae.py): one training-mode forward and backward with the recorded mask.

Rebuilds :class:`~mim_jax.methods.point_mae.PointMAE` from the recorded config, imports the official state dict
(names below), and compares the groups (centres and neighbourhoods, from mim_jax's own FPS and kNN), the encoder's
output on the visible groups, the reconstructed points, the Chamfer loss, the updated BatchNorm running statistics
and every gradient.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.interop import parity

_CONVS = {'first_conv.0': 'conv1', 'first_conv.3': 'conv2', 'second_conv.0': 'conv3', 'second_conv.3': 'conv4'}
_BNS = {'first_conv.1': 'bn1', 'second_conv.1': 'bn2'}
_BN_LEAVES = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'), 'running_mean': ('batch_stats', 'mean'),
              'running_var': ('batch_stats', 'var')}


def _path(name: str) -> tuple[str, tuple[str, ...], str]:
  """(collection, mim_jax path, layout) of an official tensor; layout 'T' (Linear / k=1 Conv1d weight) or ''."""
  if m := re.match(r'^MAE_encoder\.encoder\.(\w+\.\d)\.(\w+)$', name):
    if m[1] in _BNS:
      collection, leaf = _BN_LEAVES[m[2]]
      return collection, ('encoder', 'group_encoder', _BNS[m[1]], leaf), ''
    return 'params', ('encoder', 'group_encoder', _CONVS[m[1]], 'kernel' if m[2] == 'weight' else 'bias'), 'T'
  rules = ((r'^MAE_encoder\.blocks\.blocks\.(\d+)\.', r'encoder.blocks_\1.'),
           (r'^MAE_decoder\.blocks\.(\d+)\.', r'decoder.blocks_\1.'),
           (r'^MAE_encoder\.pos_embed\.0\.', 'encoder.pos_embed.fc1.'),
           (r'^MAE_encoder\.pos_embed\.2\.', 'encoder.pos_embed.fc2.'),
           (r'^decoder_pos_embed\.0\.', 'decoder.pos_embed.fc1.'),
           (r'^decoder_pos_embed\.2\.', 'decoder.pos_embed.fc2.'),
           (r'^MAE_encoder\.norm\.', 'encoder.norm.'), (r'^MAE_decoder\.norm\.', 'decoder.norm.'),
           (r'^increase_dim\.0\.', 'decoder.head.'), (r'^mask_token$', 'decoder.mask_token'))
  for pattern, repl in rules:
    name = re.sub(pattern, repl, name)
  *mods, leaf = name.split('.')
  if leaf == 'weight':
    is_norm = mods[-1].startswith('norm')
    return 'params', (*mods, 'scale' if is_norm else 'kernel'), '' if is_norm else 'T'
  return 'params', (*mods, leaf), ''


def _to_ours(value: np.ndarray, layout: str) -> np.ndarray:
  if layout == 'T':
    return (value[..., 0] if value.ndim == 3 else value).T
  return value


def from_official(state: dict[str, np.ndarray]) -> tuple[dict, dict]:
  trees: dict = {'params': {}, 'batch_stats': {}}
  for name, value in state.items():
    collection, path, layout = _path(name)
    tree = trees[collection]
    for key in path[:-1]:
      tree = tree.setdefault(key, {})
    tree[path[-1]] = _to_ours(np.asarray(value, np.float32), layout)
  return trees['params'], trees['batch_stats']


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return np.asarray(tree)


def check(fx: parity.Fixture) -> list[parity.Check]:
  from mim_jax import masking
  from mim_jax.methods import Facts, build

  (points,), cfg = fx.need('inputs', 'points'), fx.config()
  center, neighborhood, mask, x_vis, rebuild, loss = fx.need('outputs', 'center', 'neighborhood', 'mask', 'x_vis',
                                                             'rebuild', 'loss')
  method = build(cfg, Facts.for_images((1, 1, 1)))
  params, stats = from_official(fx.params)
  params, stats = jax.tree.map(jnp.asarray, (params, stats))
  info = masking.mask_from_boolean(jnp.asarray(mask), int((~mask[0]).sum()))
  pts = jnp.asarray(points)
  out, grads = parity.forward_and_grads(lambda p: method.forward(p, stats, pts, info, train=True), params)
  checks = [
      parity.exact('masked groups', method.masker.num_masked, int(mask[0].sum())),
      parity.activation('center (FPS)', out['center'], center),
      parity.activation('neighborhood (kNN)', out['neighborhood'], neighborhood),
      parity.activation('x_vis', out['latent'], x_vis),
      parity.activation('rebuild', out['pred'].reshape(rebuild.shape), rebuild),
      parity.loss('loss', out['loss'], loss),
  ]
  for name, ref in fx.outputs.items():
    if name.startswith('after/'):
      _, path, _ = _path(name[len('after/'):])
      checks.append(parity.activation(name, _get(out['batch_stats'], path), ref))
  ours = {}
  host = jax.tree.map(np.asarray, grads)
  for name, ref in fx.grads.items():
    _, path, layout = _path(name)
    g = _get(host, path)
    ours[name] = g.T.reshape(ref.shape) if layout == 'T' else g.reshape(ref.shape)
  # A bias right before a BatchNorm that normalizes with batch statistics has no gradient in exact arithmetic (the
  # normalization subtracts it again): both codes return float noise there, so check that both are ~0 relative to
  # the gradient of the weight beside it instead of comparing the two noises.
  zero = [k for k in fx.grads if re.match(r'^MAE_encoder\.encoder\.(first|second)_conv\.0\.bias$', k)]
  for k in zero:
    scale = float(np.max(np.abs(fx.grads[k.replace('.bias', '.weight')])))
    checks.append(parity.Check(f'grad/{k} (zero: bias before a batch-statistics BatchNorm)',
                               max(float(np.max(np.abs(ours[k]))), float(np.max(np.abs(fx.grads[k])))), 1e-3 * scale))
  rest = {k: v for k, v in fx.grads.items() if k not in zero}
  return checks + parity.gradients({k: ours[k] for k in rest}, rest)
