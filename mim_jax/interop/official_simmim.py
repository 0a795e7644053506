"""Official SimMIM ViT state dicts (``microsoft/SimMIM``: ``SimMIM(VisionTransformerForSimMIM, encoder_stride)``)
<-> mim_jax SimMIM params (``{'encoder': ..., 'decoder': {'pred': ...}}``).

What differs from the MAE layout (:mod:`mim_jax.interop.official_mae`):

* every encoder key has the ``encoder.`` prefix; ``encoder.pos_embed`` is a learned table ``[1, 1 + N, D]`` (the
  ``USE_APE`` option), so the mim_jax encoder must use ``pos_embed='learned'``; ``encoder.mask_token`` is the
  encoder's.
* the attention has no k bias (BEiT's ``q_bias`` / ``v_bias``; the projection adds ``[q_bias, 0, v_bias]``). mim_jax's
  fused ``qkv`` bias gets a zero k part. A k bias adds ``q . b`` to every logit of a query, which the softmax
  removes, so its gradient is zero and the k part stays zero under training without weight decay (the parity check
  verifies the zero gradient).
* the decoder is a 1x1 conv to ``p * p * 3`` channels followed by ``PixelShuffle(p)``: output channel
  ``c * p * p + i * p + j`` is pixel ``(i, j)`` of channel ``c``. mim_jax's linear head emits each patch in the
  ``(i, j, c)`` order of ``patchify``: the same linear map with its outputs permuted.

The official ViT's other options (layer scale ``INIT_VALUES``, relative position biases, mean pooling) have no
mim_jax counterpart yet; their keys are refused with the reason rather than dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from mim_jax.interop.official_mae import (
  _NORM_LEAF,
  _block_path,
  _conv_from_patch_kernel,
  _flatten,
  _patch_kernel_from_conv,
  _set,
)

_BLOCK = re.compile(r'^encoder\.blocks\.(\d+)\.(.+)$')
_UNSUPPORTED = (('gamma_', 'layer scale (MODEL.VIT.INIT_VALUES)'), ('relative_position', 'relative position bias'),
                ('rel_pos_bias', 'shared relative position bias'), ('fc_norm', 'mean pooling'),
                ('encoder.head', 'a classification head'))


def _shuffle_order(patch: int, channels: int) -> np.ndarray:
  """``order[k]``: the official output channel of mim_jax output ``k = (i * p + j) * C + c``."""
  i, j, c = np.meshgrid(np.arange(patch), np.arange(patch), np.arange(channels), indexing='ij')
  return (c * patch * patch + i * patch + j).reshape(-1)


def from_official(state: Mapping[str, Any]) -> dict:
  params: dict = {}
  q_bias: dict[int, np.ndarray] = {}
  v_bias: dict[int, np.ndarray] = {}
  for key, value in state.items():
    value = np.asarray(value, dtype=np.float32)
    for marker, what in _UNSUPPORTED:
      if marker in key:
        raise ValueError(f'{key}: the official model uses {what}, which the mim_jax ViT does not have yet; make '
                         'the fixture with that option off.')
    m = _BLOCK.match(key)
    if m:
      idx, rest = int(m.group(1)), m.group(2)
      if rest in ('attn.q_bias', 'attn.v_bias'):
        (q_bias if rest == 'attn.q_bias' else v_bias)[idx] = value
        continue
      sub, leaf = _block_path(rest)
      _set(params, ('encoder', f'blocks_{idx}', *sub, leaf), value.T if leaf == 'kernel' else value)
      continue
    if key == 'encoder.patch_embed.proj.weight':
      _set(params, ('encoder', 'patch_embed', 'kernel'), _patch_kernel_from_conv(value))
    elif key == 'encoder.patch_embed.proj.bias':
      _set(params, ('encoder', 'patch_embed', 'bias'), value)
    elif key in ('encoder.cls_token', 'encoder.mask_token', 'encoder.pos_embed'):
      _set(params, ('encoder', key.split('.')[1]), value)
    elif key in ('encoder.norm.weight', 'encoder.norm.bias'):
      _set(params, ('encoder', 'norm', _NORM_LEAF[key.rsplit('.', 1)[1]]), value)
    elif key in ('decoder.0.weight', 'decoder.0.bias'):
      out = value.shape[0]
      channels = out // _patch_from(state) ** 2
      order = _shuffle_order(_patch_from(state), channels)
      if key.endswith('weight'):
        _set(params, ('decoder', 'pred', 'kernel'), np.ascontiguousarray(value[order, :, 0, 0].T))
      else:
        _set(params, ('decoder', 'pred', 'bias'), value[order])
    else:
      raise ValueError(f'unknown official SimMIM (ViT) parameter {key!r}')
  for idx, block in params['encoder'].items():
    if not idx.startswith('blocks_'):
      continue
    i = int(idx.split('_')[1])
    if (i in q_bias) != (i in v_bias) or 'bias' in block['attn']['qkv']:
      raise ValueError(f'encoder.blocks.{i}: expected q_bias and v_bias (and no qkv.bias), got another layout')
    if i in q_bias:
      block['attn']['qkv']['bias'] = np.concatenate([q_bias[i], np.zeros_like(q_bias[i]), v_bias[i]])
  return params


def _patch_from(state: Mapping[str, Any]) -> int:
  return int(np.shape(state['encoder.patch_embed.proj.weight'])[-1])


def to_official(params: Mapping[str, Any], *, patch_size: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """mim_jax SimMIM params (or their gradients) -> official names. Also returns the k part of every fused qkv
  bias (``encoder.blocks.{i}.attn.k_bias``), which the official model does not have (zero for imported weights
  and for their gradients)."""
  out: dict[str, np.ndarray] = {}
  k_bias: dict[str, np.ndarray] = {}
  enc = params['encoder']
  out['encoder.patch_embed.proj.weight'] = _conv_from_patch_kernel(np.asarray(enc['patch_embed']['kernel']),
                                                                   patch_size)
  out['encoder.patch_embed.proj.bias'] = np.asarray(enc['patch_embed']['bias'])
  for name in ('cls_token', 'mask_token', 'pos_embed'):
    if name in enc:
      out[f'encoder.{name}'] = np.asarray(enc[name])
  for name, block in enc.items():
    m = re.match(r'^blocks_(\d+)$', name)
    if not m:
      continue
    i = m.group(1)
    for sub, leaf_value in _flatten(block):
      mods, leaf = '.'.join(sub[:-1]), sub[-1]
      arr = np.asarray(leaf_value)
      if mods == 'attn.qkv' and leaf == 'bias':
        d = arr.shape[0] // 3
        out[f'encoder.blocks.{i}.attn.q_bias'] = arr[:d]
        out[f'encoder.blocks.{i}.attn.v_bias'] = arr[2 * d:]
        k_bias[f'encoder.blocks.{i}.attn.k_bias'] = arr[d:2 * d]
        continue
      torch_leaf = 'weight' if leaf in ('kernel', 'scale') else 'bias'
      out[f'encoder.blocks.{i}.{mods}.{torch_leaf}'] = arr.T if leaf == 'kernel' else arr
  out['encoder.norm.weight'] = np.asarray(enc['norm']['scale'])
  out['encoder.norm.bias'] = np.asarray(enc['norm']['bias'])
  kernel = np.asarray(params['decoder']['pred']['kernel'])
  channels = kernel.shape[1] // patch_size**2
  inverse = np.argsort(_shuffle_order(patch_size, channels))
  out['decoder.0.weight'] = np.ascontiguousarray(kernel.T[inverse][:, :, None, None])
  out['decoder.0.bias'] = np.asarray(params['decoder']['pred']['bias'])[inverse]
  return out, k_bias

