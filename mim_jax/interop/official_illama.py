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


def checkpoint_from_official(state: Mapping[str, object], *, num_heads: int | None = None):
  """A :class:`~mim_jax.weights.spec.Checkpoint` (encoder + head) of an official iLLaMA state dict: the ViT with
  iLLaMA's options, its sizes read off the shapes. The weights do not record the head count: ``num_heads``
  defaults to width / 64 (every official size: tiny 3, small 6, base 12, large 16)."""
  from mim_jax.models.vit import ILLAMA_OPTIONS, swiglu_hidden
  from mim_jax.weights.spec import Checkpoint, ModelSpec

  if not is_official_illama(state):
    raise ValueError('not an official iLLaMA state dict (no blocks.N.mlp.fc3.weight, or LayerNorm biases).')
  params = from_official(state)
  patch_w = np.shape(state['patch_embed.proj.weight'])  # [D, C, p, p]
  width, channels, patch = int(patch_w[0]), int(patch_w[1]), int(patch_w[-1])
  depth = 1 + max(int(k.split('.')[1]) for k in state if k.startswith('blocks.'))
  hidden = int(np.shape(state['blocks.0.mlp.fc1.weight'])[0])
  n = int(np.shape(state['pos_embed'])[1]) - 1
  side = int(round(n ** 0.5))
  if side * side != n:
    raise ValueError(f'the position table has {n} patch rows, not a square grid.')
  options = dict(ILLAMA_OPTIONS)
  if swiglu_hidden(width, 4.0) != hidden:
    if hidden < swiglu_hidden(width, 4.0, 1):
      raise ValueError(f'SwiGLU hidden size {hidden} is below what mlp_ratio 4 gives for width {width}.')
    options['swiglu_multiple_of'] = hidden  # rounds 2/3 of 4 x width up to exactly this size
  if 'blocks.0.attn.qkv.bias' not in state:
    options['qkv_bias'] = 'none'
  notes = []
  heads = num_heads or max(1, width // 64)
  if not num_heads:
    notes.append(f'num_heads={heads} assumed from the width ({width}); pass num_heads if the model differs.')
  num_classes = int(np.shape(state['head.weight'])[0]) if 'head.weight' in state else 0
  spec = ModelSpec(patch_size=patch, width=width, depth=depth, num_heads=heads, mlp_ratio=4.0,
                   image_size=(side * patch, side * patch), channels=channels,
                   pos_embed=options.pop('pos_embed'), num_classes=num_classes, encoder_options=options)
  return Checkpoint(params, spec, notes)


def checkpoint_to_official(ckpt) -> dict[str, np.ndarray]:
  """The official state dict of a :class:`~mim_jax.weights.spec.Checkpoint` holding an iLLaMA-shaped ViT."""
  from mim_jax.models.vit import ILLAMA_OPTIONS

  spec = ckpt.spec
  wanted = {k: v for k, v in ILLAMA_OPTIONS.items() if k != 'pos_embed'}
  got = {k: spec.options.get(k) for k in wanted}
  if not spec.is_vit or spec.pos_embed != 'learned' or any(got[k] != v for k, v in wanted.items()
                                                            if k != 'qkv_bias'):
    raise ValueError(f'the official iLLaMA layout holds ViTs with iLLaMA\'s options {ILLAMA_OPTIONS}; this '
                     f'checkpoint is {spec.encoder!r} with {spec.options or "no block options"}.')
  return to_official({k: v for k, v in ckpt.params.items() if k in ('encoder', 'head')}, spec.patch_size)
