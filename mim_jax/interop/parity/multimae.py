"""Parity adapter for MultiMAE (EPFL-VILAB/MultiMAE ``multimae/``; fixtures by tools/fixtures/official_multimae.py):
one training-mode forward and backward with the official mask draw replayed.

Rebuilds :class:`~mim_jax.methods.multimae.MultiMAE` from the recorded config, imports the official state dict
(names below; the fixed sin-cos tables are compared with ours, not imported), and compares every output
adapter's prediction, each modality's loss, the total and every gradient.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.interop import parity


def _path(name: str) -> tuple[tuple[str, ...], str] | None:
  """(mim_jax path, layout) of an official parameter; layout 'T' (Linear), 'conv' (Conv2d) or ''; None for the
  fixed position tables."""
  if name.endswith('pos_emb'):
    return None
  if name == 'global_tokens':
    return ('encoder', 'global_tokens'), ''
  if m := re.match(r'^input_adapters\.(\w+)\.(.+)$', name):
    task, rest = m[1], m[2]
    if rest == 'class_emb.weight':
      return ('encoder', f'{task}_adapter', 'class_emb', 'embedding'), ''
    leaf = 'kernel' if rest.endswith('weight') else 'bias'
    return ('encoder', f'{task}_adapter', 'proj', leaf), 'conv' if leaf == 'kernel' else ''
  rules = ((r'^encoder\.(\d+)\.', r'encoder.blocks_\1.'),
           (r'^output_adapters\.(\w+)\.decoder_transformer\.(\d+)\.', r'adapters_\1.blocks_\2.'),
           (r'^output_adapters\.(\w+)\.task_embeddings\.(\w+)$', r'adapters_\1.task_emb_\2'),
           (r'^output_adapters\.(\w+)\.mlp\.fc(\d)\.', r'adapters_\1.mlp_fc\2.'),
           (r'^output_adapters\.(\w+)\.', r'adapters_\1.'))
  for pattern, repl in rules:
    name = re.sub(pattern, repl, name)
  *mods, leaf = name.split('.')
  if leaf == 'weight':
    is_norm = 'norm' in mods[-1]
    return (*mods, 'scale' if is_norm else 'kernel'), '' if is_norm else 'T'
  return (*mods, leaf), ''


def _to_ours(value: np.ndarray, layout: str) -> np.ndarray:
  if layout == 'T':
    return value.T
  if layout == 'conv':
    return value.transpose(2, 3, 1, 0)
  return value


def from_official(state: dict[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
  """(mim_jax params, the official fixed position tables by name)."""
  tree: dict = {}
  tables = {}
  for name, value in state.items():
    found = _path(name)
    if found is None:
      tables[name] = np.asarray(value, np.float32)
      continue
    path, layout = found
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = _to_ours(np.asarray(value, np.float32), layout)
  return tree, tables


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return np.asarray(tree)


def check(fx: parity.Fixture) -> list[parity.Check]:
  from mim_jax.masking.core import MaskInfo
  from mim_jax.methods import Facts, build
  from mim_jax.models.multimodal import sincos_table

  cfg = fx.config()
  rgb, depth, semseg = fx.need('inputs', 'rgb', 'depth', 'semseg')
  ids_keep, ids_restore = fx.need('draws', 'ids_keep', 'ids_restore')
  size = int(cfg.data.image_size)
  method = build(cfg, Facts.for_images((size, size, 3)))
  params, tables = from_official(fx.params)
  params = jax.tree.map(jnp.asarray, params)
  tasks = list(cfg.model.encoder.modalities)
  mask = np.concatenate([fx.draws[f'mask/{t}'] for t in tasks], axis=1).astype(np.float32)
  info = MaskInfo(jnp.asarray(mask), jnp.asarray(ids_keep, jnp.int32), jnp.asarray(ids_restore, jnp.int32))
  batch = {'image': jnp.asarray(rgb.transpose(0, 2, 3, 1)), 'depth': jnp.asarray(depth.transpose(0, 2, 3, 1)),
           'semseg': jnp.asarray(semseg, jnp.int32)}
  out, grads = parity.forward_and_grads(lambda p: method.forward(p, batch, info), params)
  checks = [parity.exact('visible tokens', int((mask == 0).sum()), int(ids_keep.size))]
  for name, table in tables.items():  # [1, D, h, w] -> [h * w, D], against ours
    d, h, w = table.shape[1:]
    checks.append(parity.activation(name, np.asarray(sincos_table(d, (h, w)))[0],
                                    table[0].reshape(d, h * w).T))
  for name, pred in out['preds'].items():
    checks.append(parity.activation(f'pred/{name}', np.asarray(pred).transpose(0, 3, 1, 2),
                                    fx.outputs[f'pred/{name}']))
    checks.append(parity.loss(f'loss/{name}', out['losses'][name], fx.outputs[f'loss/{name}']))
  checks.append(parity.loss('loss', out['loss'], fx.outputs['loss']))
  host = jax.tree.map(np.asarray, grads)
  ours = {}
  for name, ref in fx.grads.items():
    path, layout = _path(name)
    g = _get(host, path)
    ours[name] = {'T': lambda x: x.T, 'conv': lambda x: x.transpose(3, 2, 0, 1)}.get(layout, lambda x: x)(g)
    ours[name] = ours[name].reshape(ref.shape)
  return checks + parity.gradients(ours, fx.grads)
