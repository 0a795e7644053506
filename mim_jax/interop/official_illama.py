"""Official iLLaMA state dicts (techmonsterwang/iLLaMA ``models/illama.py``) <-> mim_jax's ViT with iLLaMA's options.

Names: ``patch_embed.proj`` (a stride-p conv) -> ``encoder/patch_embed`` (the Dense kernel over flattened patches),
``blocks.{i}.{norm1,norm2}.weight`` (RMSNorm) -> ``.../scale``, ``blocks.{i}.attn.{qkv,proj}`` and
``blocks.{i}.mlp.{fc1,fc2,fc3}`` (Linear, transposed), ``cls_token``, ``pos_embed`` (``[1, N + 1, D]``, the CLS row
last, as the encoder keeps it), ``norm.weight`` -> ``encoder/norm/scale``, ``head`` -> ``head`` (a classifier).
The official ``freqs_cis`` is a buffer the encoder recomputes (RoPE-1D, base 10000).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mim_jax.interop.parity import torch_names

RULES = [
    (r'^patch_embed\.proj\.', 'encoder.patch_embed.'),
    (r'^blocks\.(\d+)\.', r'encoder.blocks_\1.'),
    (r'^(norm|cls_token|pos_embed)', r'encoder.\1'),
]
_BUFFERS = ('freqs_cis',)


def is_official_illama(state: Mapping[str, object]) -> bool:
  """Whether a state dict has iLLaMA's layout (SwiGLU's third matrix, no LayerNorm biases)."""
  return any(k.endswith('.mlp.fc3.weight') for k in state) and not any(k.endswith('norm1.bias') for k in state)


def from_official(state: Mapping[str, object], *, head: bool = True) -> dict:
  """``{'encoder': ..., ['head': ...]}`` float32 host arrays from an official iLLaMA state dict."""
  state = {k: np.asarray(v, np.float32) for k, v in state.items() if k not in _BUFFERS}
  if not head:
    state = {k: v for k, v in state.items() if not k.startswith('head.')}
  return torch_names.tree_from_state(state, RULES)


def to_official(params: Mapping, patch_size: int) -> dict[str, np.ndarray]:
  """The official state dict (without the ``freqs_cis`` buffer) of mim_jax params ``{'encoder', ['head']}``."""
  from mim_jax.weights.spec import flatten

  keys = []
  for path in flatten(params):
    *mods, leaf = path.split('/')
    if mods[0] == 'encoder':
      mods = mods[1:]
      if mods and mods[0].startswith('blocks_'):
        mods = ['blocks', mods[0][len('blocks_'):], *mods[1:]]
      if mods and mods[0] == 'patch_embed':
        mods = ['patch_embed', 'proj']
    name = '.'.join([*mods, {'kernel': 'weight', 'scale': 'weight'}.get(leaf, leaf)])
    keys.append(name)
  return torch_names.state_from_tree(params, keys, RULES, patch_size)
