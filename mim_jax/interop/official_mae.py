"""Official-MAE state dicts (``facebookresearch/mae`` key names, a dict of numpy arrays) <-> mim_jax params.

The official layout: torch ``Linear`` weights are ``[out, in]`` (ours: Dense kernels ``[in, out]``); the patch
embedding is a ``Conv2d`` weight ``[D, C, p, p]`` (ours: a Dense kernel over the flattened ``(p, q, c)`` patch,
``[p*p*C, D]``); LayerNorm ``weight`` is our ``scale``. ``pos_embed`` / ``decoder_pos_embed`` are fixed sin-cos
tables: we compute them, and on import check that the file's tables match ours.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from mim_jax.models.vit import sincos_2d_table

# HPM's loss predictor (models_mae_learn_loss.py) adds decoder_blocks_losspred.* / decoder_{norm,pred}_losspred.*.
_BLOCK = re.compile(r'^(decoder_blocks_losspred|decoder_blocks|blocks)\.(\d+)\.(.+)$')
_LEAF = {'weight': 'kernel', 'bias': 'bias'}
_NORM_LEAF = {'weight': 'scale', 'bias': 'bias'}


def _set(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  if path[-1] in tree:
    raise ValueError(f'duplicate parameter {"/".join(path)}')
  tree[path[-1]] = value


def _patch_kernel_from_conv(w: np.ndarray) -> np.ndarray:
  d, c, p, q = w.shape
  return np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(p * q * c, d))


def _conv_from_patch_kernel(k: np.ndarray, patch: int) -> np.ndarray:
  pqc, d = k.shape
  c = pqc // (patch * patch)
  return np.ascontiguousarray(k.reshape(patch, patch, c, d).transpose(3, 2, 0, 1))


def _block_path(rest: str) -> tuple[tuple[str, ...], str]:
  """'attn.qkv.weight' -> (('attn', 'qkv'), 'kernel'); 'norm1.weight' -> (('norm1',), 'scale')."""
  *mods, leaf = rest.split('.')
  is_norm = mods[-1].startswith('norm')
  table = _NORM_LEAF if is_norm else _LEAF
  if leaf not in table:
    raise ValueError(f'unexpected parameter leaf {leaf!r} in {rest!r}')
  return tuple(mods), table[leaf]


def from_official(state: Mapping[str, Any], *, check_pos_embed: bool = True) -> dict:
  """Official MAE state dict -> ``{'encoder': ..., 'decoder': ...}`` (decoder omitted if absent)."""
  params: dict = {}
  for key, value in state.items():
    value = np.asarray(value, dtype=np.float32)
    if key in ('pos_embed', 'decoder_pos_embed'):
      if check_pos_embed:
        _check_pos_embed(key, value)
      continue
    m = _BLOCK.match(key)
    if m:
      kind, idx, rest = m.groups()
      sub, leaf = _block_path(rest)
      root = 'encoder' if kind == 'blocks' else 'decoder'
      path = (root, f'{kind}_{idx}', *sub, leaf)
      _set(params, path, value.T if leaf == 'kernel' else value)
      continue
    if key == 'patch_embed.proj.weight':
      _set(params, ('encoder', 'patch_embed', 'kernel'), _patch_kernel_from_conv(value))
    elif key == 'patch_embed.proj.bias':
      _set(params, ('encoder', 'patch_embed', 'bias'), value)
    elif key == 'cls_token':
      _set(params, ('encoder', 'cls_token'), value)
    elif key in ('norm.weight', 'norm.bias'):
      _set(params, ('encoder', 'norm', _NORM_LEAF[key.split('.')[1]]), value)
    elif key == 'mask_token':
      _set(params, ('decoder', 'mask_token'), value)
    elif key.split('.')[0] in ('decoder_norm', 'decoder_norm_losspred') and key.count('.') == 1:
      mod, leaf = key.split('.')
      _set(params, ('decoder', mod, _NORM_LEAF[leaf]), value)
    elif key.split('.')[0] in ('decoder_embed', 'decoder_pred', 'decoder_pred_losspred') and key.count('.') == 1:
      mod, leaf = key.split('.')
      _set(params, ('decoder', mod, _LEAF[leaf]), value.T if leaf == 'weight' else value)
    else:
      raise ValueError(f'unknown official-MAE parameter {key!r}; is this an MAE pre-training checkpoint? '
                       '(fine-tuned classifiers have head/fc_norm keys: convert with mim_jax.convert).')
  return params


def to_official(params: Mapping[str, Any], *, patch_size: int,
                grid_hw: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
  """mim_jax MAE params -> official key names. ``grid_hw`` also writes the fixed pos-embed tables."""
  out: dict[str, np.ndarray] = {}
  enc = params['encoder']
  k = np.asarray(enc['patch_embed']['kernel'])
  d = k.shape[1]
  if k.shape[0] % (patch_size * patch_size):
    raise ValueError(f'a patch_embed kernel of shape {k.shape} does not fit patch size {patch_size}.')
  patch = patch_size
  out['patch_embed.proj.weight'] = _conv_from_patch_kernel(k, patch)
  out['patch_embed.proj.bias'] = np.asarray(enc['patch_embed']['bias'])
  out['cls_token'] = np.asarray(enc['cls_token'])

  def emit_blocks(tree, prefix):
    for name, block in tree.items():
      m = re.match(rf'^{prefix}_(\d+)$', name)
      if not m:
        continue
      for sub, leaves in _flatten(block):
        mods = '.'.join(sub[:-1])
        leaf = sub[-1]
        torch_leaf = 'weight' if leaf in ('kernel', 'scale') else 'bias'
        arr = np.asarray(leaves)
        out[f'{prefix}.{m.group(1)}.{mods}.{torch_leaf}'] = arr.T if leaf == 'kernel' else arr

  emit_blocks(enc, 'blocks')
  out['norm.weight'] = np.asarray(enc['norm']['scale'])
  out['norm.bias'] = np.asarray(enc['norm']['bias'])
  if grid_hw is not None:
    out['pos_embed'] = _with_cls_row(sincos_2d_table(d, *grid_hw))
  if 'decoder' in params:
    dec = params['decoder']
    out['mask_token'] = np.asarray(dec['mask_token'])
    for mod in ('decoder_embed', 'decoder_pred'):
      out[f'{mod}.weight'] = np.asarray(dec[mod]['kernel']).T
      out[f'{mod}.bias'] = np.asarray(dec[mod]['bias'])
    emit_blocks(dec, 'decoder_blocks')
    out['decoder_norm.weight'] = np.asarray(dec['decoder_norm']['scale'])
    out['decoder_norm.bias'] = np.asarray(dec['decoder_norm']['bias'])
    if 'decoder_norm_losspred' in dec:  # HPM's loss predictor
      emit_blocks(dec, 'decoder_blocks_losspred')
      out['decoder_norm_losspred.weight'] = np.asarray(dec['decoder_norm_losspred']['scale'])
      out['decoder_norm_losspred.bias'] = np.asarray(dec['decoder_norm_losspred']['bias'])
      out['decoder_pred_losspred.weight'] = np.asarray(dec['decoder_pred_losspred']['kernel']).T
      out['decoder_pred_losspred.bias'] = np.asarray(dec['decoder_pred_losspred']['bias'])
    if grid_hw is not None:
      out['decoder_pos_embed'] = _with_cls_row(sincos_2d_table(out['mask_token'].shape[-1], *grid_hw))
  return out


def _flatten(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, Mapping):
      yield from _flatten(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def _with_cls_row(table: np.ndarray) -> np.ndarray:
  return np.concatenate([np.zeros((1, table.shape[1]), np.float32), table], axis=0)[None]


def _check_pos_embed(key: str, value: np.ndarray) -> None:
  n, d = value.shape[1] - 1, value.shape[2]
  side = int(round(n ** 0.5))
  if side * side != n:
    return  # non-square grids: nothing to compare against without the image shape
  expected = _with_cls_row(sincos_2d_table(d, side, side))
  err = float(np.abs(expected - value).max())
  if err > 1e-5:
    raise ValueError(f'{key} in the checkpoint is not the fixed sin-cos table mim_jax uses (max diff {err:.2e}); '
                     'learned position tables are not supported for MAE pre-training checkpoints.')


_DECODER_KEY = re.compile(r'^(decoder_|mask_token$)')


def checkpoint_from_official(state: Mapping[str, Any], *, num_heads: int | None = None,
                             decoder_num_heads: int | None = None, image_size: tuple[int, int] | None = None,
                             pos_embed: str = 'auto'):
  """Any official MAE checkpoint -> :class:`~mim_jax.weights.spec.Checkpoint`.

  Pre-training checkpoints (``mae_pretrain_*``: encoder only; ``mae_visualize_*``: with decoder) and fine-tuned
  ones (``mae_finetuned_*``: timm names with ``fc_norm`` and ``head``) are all read; the encoder keys are timm's.
  Head counts default to the official builders' (by width; decoder 16).
  """
  import dataclasses

  from mim_jax.weights.spec import DecoderSpec
  from mim_jax.interop.timm_vit import encoder_from_timm

  decoder_keys = tuple(k for k in state if _DECODER_KEY.match(k))
  ckpt = encoder_from_timm(state, num_heads=num_heads, image_size=image_size, pos_embed=pos_embed,
                           allow_keys=decoder_keys)
  if not decoder_keys:
    return ckpt
  params = from_official({k: state[k] for k in decoder_keys})
  dec = params['decoder']
  width = dec['decoder_embed']['kernel'].shape[1]
  blocks = sorted(int(k.split('_')[-1]) for k in dec if k.startswith('decoder_blocks_'))
  if blocks != list(range(len(blocks))):
    raise ValueError(f'decoder blocks are not numbered 0..N-1: {blocks}')
  hidden = dec['decoder_blocks_0']['mlp']['fc1']['kernel'].shape[1] if blocks else 4 * width
  if decoder_num_heads is None:
    decoder_num_heads = 16
    ckpt.notes.append('decoder_num_heads=16 assumed (the official builders); pass it if the decoder differs.')
  decoder = DecoderSpec(width=width, depth=len(blocks), num_heads=decoder_num_heads, mlp_ratio=hidden / width)
  ckpt.params['decoder'] = dec
  ckpt.spec = dataclasses.replace(ckpt.spec, decoder=decoder)
  return ckpt


def checkpoint_to_official(ckpt) -> dict[str, np.ndarray]:
  """:class:`~mim_jax.weights.spec.Checkpoint` -> official names (timm's for the encoder, plus the decoder's)."""
  from mim_jax.interop.timm_vit import encoder_to_timm

  out = encoder_to_timm(ckpt)
  if ckpt.spec.decoder is not None:
    full = to_official({'encoder': ckpt.params['encoder'], 'decoder': ckpt.params['decoder']},
                       patch_size=ckpt.spec.patch_size, grid_hw=ckpt.spec.grid)
    out.update({k: v for k, v in full.items() if _DECODER_KEY.match(k)})
  return out
