"""Official torch parameter names <-> mim_jax parameter paths, by renaming rules (for the adapters whose models are
built from plain ``nn.Linear`` / ``nn.LayerNorm`` / ``nn.MultiheadAttention`` layers: CropMAE, CroCo).

A rule set is a list of ``(regex, replacement)`` applied in order to the dotted official name; the result's dots
become the path. Leaves: ``weight`` -> ``kernel`` (transposed) or, under a norm (a module named ``norm*`` or
``*_norm``), ``scale``; ``bias`` -> ``bias``; a patch embedding's conv weight -> our ``[p*p*C, D]`` kernel;
``in_proj_weight`` / ``in_proj_bias`` (torch's fused attention input projection, rows q, k, v) -> the ``q``, ``k``,
``v`` layers' kernels / biases. Anything else (tokens) is kept as is.
"""

from __future__ import annotations

import re

import numpy as np

from mim_jax.interop.official_mae import _conv_from_patch_kernel, _patch_kernel_from_conv


def paths(key: str, rules: list[tuple[str, str]]) -> list[tuple[tuple[str, ...], str]]:
  """``[(path, how)]`` for one official name; three entries (q, k, v rows) for a fused in-projection. ``how``:
  'T' (transpose), 'conv' (patch kernel) or ''."""
  name = key
  for pattern, repl in rules:
    name = re.sub(pattern, repl, name)
  *mods, leaf = name.split('.')
  if leaf in ('in_proj_weight', 'in_proj_bias'):
    part = 'kernel' if leaf == 'in_proj_weight' else 'bias'
    return [((*mods, p, part), 'T' if part == 'kernel' else '') for p in ('q', 'k', 'v')]
  if leaf == 'weight':
    if mods[-1] == 'patch_embed':
      return [((*mods, 'kernel'), 'conv')]
    if mods[-1].startswith('norm') or mods[-1].endswith('_norm'):
      return [((*mods, 'scale'), '')]
    return [((*mods, 'kernel'), 'T')]
  return [((*mods, leaf), '')]


def _set(tree: dict, path, value) -> None:
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  if path[-1] in tree:
    raise ValueError(f'two official parameters map to {"/".join(path)}')
  tree[path[-1]] = value


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return np.asarray(tree)


def tree_from_state(state: dict, rules) -> dict:
  """Official state dict -> mim_jax params."""
  params: dict = {}
  for key, value in state.items():
    entries = paths(key, rules)
    value = np.asarray(value, np.float32)
    chunks = np.split(value, 3, axis=0) if len(entries) == 3 else [value]
    for (path, how), chunk in zip(entries, chunks):
      _set(params, path, _patch_kernel_from_conv(chunk) if how == 'conv' else chunk.T if how == 'T' else chunk)
  return params


def state_from_tree(tree: dict, keys, rules, patch_size: int) -> dict[str, np.ndarray]:
  """mim_jax params (or gradients) under the official names ``keys``."""
  out = {}
  for key in keys:
    parts = []
    for path, how in paths(key, rules):
      v = _get(tree, path)
      parts.append(_conv_from_patch_kernel(v, patch_size) if how == 'conv' else v.T if how == 'T' else v)
    out[key] = np.concatenate(parts, axis=0) if len(parts) == 3 else parts[0]
  return out
