"""timm ``VisionTransformer`` state dicts <-> mim_jax. Official MAE checkpoints use the same encoder names.

Layout differences handled here:

* torch ``Linear`` weights are ``[out, in]``; mim_jax Dense kernels are ``[in, out]``.
* The patch embedding is a ``Conv2d`` weight ``[D, C, p, p]``; mim_jax's is a Dense kernel over the flattened
  ``(p, q, c)`` patch, ``[p*p*C, D]`` (the same linear map).
* ``attn.qkv`` is fused in both, output ordered (q/k/v, head, head_dim); timm's qkv may have no bias
  (``qkv_bias=False``), which is the same model as a zero bias.
* ``pos_embed`` ``[1, 1+N, D]`` includes the CLS row. When it is MAE's fixed sin-cos table the encoder computes it
  (``pos_embed='sincos'``); any other table becomes the encoder's learned table (``pos_embed='learned'``).
  timm's ``no_embed_class`` tables (``[1, N, D]``: no CLS row) are the same as a zero CLS row.
* ``global_pool='avg'`` models have no final ``norm`` but an ``fc_norm`` on the mean patch token.

Not representable (refused with the key that shows it): layer scale (``ls1``), register tokens, q/k norm,
pre-norm (``norm_pre``), attention pooling, patch-embed norm, and distillation tokens.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from mim_jax.interop.pos_embed import is_sincos, sincos_with_cls, square_grid
from mim_jax.weights.spec import Checkpoint, ModelSpec
from mim_jax.models.vit import VIT_SIZES

_BLOCK_KEY = re.compile(r'^blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)$')
_UNSUPPORTED = {
    '.ls1.': 'layer scale (DeiT-III / CaiT style)', 'reg_token': 'register tokens',
    'q_norm': 'q/k normalization', 'norm_pre': 'a pre-norm before the blocks', 'attn_pool': 'attention pooling',
    'patch_embed.norm': 'a patch-embed norm', 'dist_token': 'a distillation token (DeiT)',
    'head_dist': 'a distillation head (DeiT)',
}
TIMM_NAMES = {(192, 12, 3): 'vit_tiny', (384, 12, 6): 'vit_small', (768, 12, 12): 'vit_base',
              (1024, 24, 16): 'vit_large', (1280, 32, 16): 'vit_huge'}


def default_num_heads(width: int, what: str = 'the encoder') -> int:
  """Heads of the standard ViT with this width (weights do not record the head count)."""
  for size in VIT_SIZES.values():
    if size.width == width:
      return size.num_heads
  raise ValueError(f'{what} is {width} wide, which is not a standard ViT size; the weights do not record the '
                   'number of attention heads: pass num_heads (--num-heads).')


def patch_kernel_from_conv(w: np.ndarray) -> np.ndarray:
  d, c, p, q = w.shape
  return np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(p * q * c, d))


def conv_from_patch_kernel(k: np.ndarray, patch: int) -> np.ndarray:
  pqc, d = k.shape
  return np.ascontiguousarray(k.reshape(patch, patch, pqc // (patch * patch), d).transpose(3, 2, 0, 1))


def _linear(w: np.ndarray, b: np.ndarray | None) -> dict:
  return {'kernel': np.ascontiguousarray(w.T), 'bias': np.zeros(w.shape[0], np.float32) if b is None else b}


def encoder_from_timm(state: Mapping[str, np.ndarray], *, num_heads: int | None = None,
                      image_size: tuple[int, int] | None = None, pos_embed: str = 'auto',
                      allow_keys: tuple[str, ...] = ()) -> Checkpoint:
  """timm / official-MAE encoder keys -> a :class:`Checkpoint` with encoder (+ fc_norm, head).

  ``pos_embed``: 'auto' (sin-cos when the table is MAE's, else learned), 'sincos' (refuse any other table),
  'learned' (keep the table as a parameter even when it is sin-cos). ``allow_keys``: names another reader
  handles (the official reader passes the decoder's).
  """
  state = {k: np.asarray(v, np.float32) for k, v in state.items() if k not in allow_keys}
  used: set[str] = set()

  def take(key, required=True):
    if key not in state:
      if required:
        raise ValueError(f'the checkpoint has no {key!r}; is it a ViT state dict in timm / MAE names?')
      return None
    used.add(key)
    return state[key]

  for marker, what in _UNSUPPORTED.items():
    hits = [k for k in state if marker in k]
    if hits:
      raise ValueError(f'{hits[0]!r}: this ViT uses {what}, which mim_jax does not implement; only plain '
                       'pre-norm ViTs (ViT, DeiT, MAE) convert.')

  conv = take('patch_embed.proj.weight')
  width, channels, patch, patch_w = conv.shape
  if patch != patch_w:
    raise ValueError(f'non-square patches {patch}x{patch_w} are not supported.')
  encoder: dict = {'patch_embed': {'kernel': patch_kernel_from_conv(conv),
                                   'bias': take('patch_embed.proj.bias', False)}}
  if encoder['patch_embed']['bias'] is None:
    encoder['patch_embed']['bias'] = np.zeros(width, np.float32)
  cls = take('cls_token', False)
  if cls is None:
    raise ValueError('the checkpoint has no cls_token (a class_token=False ViT); mim_jax encoders have a CLS token.')
  encoder['cls_token'] = cls

  blocks: dict[int, dict] = {}
  for key in state:
    m = _BLOCK_KEY.match(key)
    if m:
      blocks.setdefault(int(m.group(1)), {})
  depth = len(blocks)
  if sorted(blocks) != list(range(depth)) or depth == 0:
    raise ValueError(f'transformer blocks are missing or not numbered 0..N-1 (found {sorted(blocks)}).')
  mlp_hidden = None
  for i in range(depth):
    pre = f'blocks.{i}.'
    blk = {
        'norm1': {'scale': take(pre + 'norm1.weight'), 'bias': take(pre + 'norm1.bias')},
        'attn': {'qkv': _linear(take(pre + 'attn.qkv.weight'), take(pre + 'attn.qkv.bias', False)),
                 'proj': _linear(take(pre + 'attn.proj.weight'), take(pre + 'attn.proj.bias'))},
        'norm2': {'scale': take(pre + 'norm2.weight'), 'bias': take(pre + 'norm2.bias')},
        'mlp': {'fc1': _linear(take(pre + 'mlp.fc1.weight'), take(pre + 'mlp.fc1.bias')),
                'fc2': _linear(take(pre + 'mlp.fc2.weight'), take(pre + 'mlp.fc2.bias'))},
    }
    mlp_hidden = blk['mlp']['fc1']['kernel'].shape[1]
    encoder[f'blocks_{i}'] = blk

  notes: list[str] = []
  table = take('pos_embed', False)
  if table is None:
    raise ValueError('the checkpoint has no pos_embed; ViTs without absolute positions (e.g. RoPE) do not convert.')
  rows = table.shape[1]
  if image_size is not None:
    grid = (image_size[0] // patch, image_size[1] // patch)
  else:  # a square grid, with (1 + N rows) or without (N rows, timm no_embed_class) the CLS row
    with_cls = int(round((rows - 1) ** 0.5)) ** 2 == rows - 1
    grid = square_grid(rows - 1 if with_cls else rows, 'pos_embed')
  n = grid[0] * grid[1]
  if rows == n:  # timm no_embed_class: the CLS token gets no position, i.e. a zero row
    table = np.concatenate([np.zeros((1, 1, width), np.float32), table], axis=1)
    notes.append('pos_embed had no CLS row (timm no_embed_class): stored with a zero CLS row, the same model.')
  elif rows != n + 1:
    raise ValueError(f'pos_embed has {rows} rows but a {grid[0]}x{grid[1]} grid needs {n + 1}; '
                     'check --image-size.')
  kind = pos_embed
  if pos_embed == 'auto':
    kind = 'sincos' if is_sincos(table, grid) else 'learned'
  elif pos_embed == 'sincos' and not is_sincos(table, grid):
    raise ValueError('pos_embed is not the fixed sin-cos table (it was learned or fine-tuned); convert with '
                     "pos_embed='learned' (--pos-embed learned) to keep it as a parameter.")
  elif pos_embed not in ('sincos', 'learned'):
    raise ValueError(f"pos_embed must be 'auto', 'sincos' or 'learned', got {pos_embed!r}.")
  if kind == 'learned':
    encoder['pos_embed'] = table

  norm_w = take('norm.weight', False)
  if norm_w is not None:
    encoder['norm'] = {'scale': norm_w, 'bias': take('norm.bias')}
  params: dict = {'encoder': encoder}
  fc_w = take('fc_norm.weight', False)
  if fc_w is not None:
    params['fc_norm'] = {'scale': fc_w, 'bias': take('fc_norm.bias')}
  head_w = take('head.weight', False)
  num_classes = 0
  if head_w is not None:
    params['head'] = _linear(head_w, take('head.bias'))
    num_classes = head_w.shape[0]

  leftover = sorted(set(state) - used)
  if leftover:
    raise ValueError(f'unrecognised key(s) {leftover[:6]}{" ..." if len(leftover) > 6 else ""}: not a plain timm '
                     'VisionTransformer / MAE encoder state dict.')
  heads = num_heads or default_num_heads(width)
  if not num_heads:
    notes.append(f'num_heads={heads} assumed from the width ({width}); pass num_heads if the model differs.')
  spec = ModelSpec(patch_size=patch, width=width, depth=depth, num_heads=heads,
                   image_size=(grid[0] * patch, grid[1] * patch), channels=channels, mlp_ratio=mlp_hidden / width,
                   pos_embed=kind, final_norm=norm_w is not None, fc_norm=fc_w is not None,
                   num_classes=num_classes, global_pool='avg' if fc_w is not None else 'token')
  return Checkpoint(params, spec, notes)


def encoder_to_timm(ckpt: Checkpoint) -> dict[str, np.ndarray]:
  """The encoder (+ fc_norm, head) under timm's names; ``pos_embed`` always written with its CLS row."""
  spec, enc = ckpt.spec, ckpt.params['encoder']
  out = {
      'cls_token': np.asarray(enc['cls_token']),
      'pos_embed': np.asarray(enc['pos_embed']) if spec.pos_embed == 'learned' else sincos_with_cls(spec.width,
                                                                                                      spec.grid),
      'patch_embed.proj.weight': conv_from_patch_kernel(np.asarray(enc['patch_embed']['kernel']), spec.patch_size),
      'patch_embed.proj.bias': np.asarray(enc['patch_embed']['bias']),
  }
  for i in range(spec.depth):
    blk, pre = enc[f'blocks_{i}'], f'blocks.{i}.'
    for name in ('norm1', 'norm2'):
      out[f'{pre}{name}.weight'] = np.asarray(blk[name]['scale'])
      out[f'{pre}{name}.bias'] = np.asarray(blk[name]['bias'])
    for torch_name, node in (('attn.qkv', blk['attn']['qkv']), ('attn.proj', blk['attn']['proj']),
                             ('mlp.fc1', blk['mlp']['fc1']), ('mlp.fc2', blk['mlp']['fc2'])):
      out[f'{pre}{torch_name}.weight'] = np.ascontiguousarray(np.asarray(node['kernel']).T)
      out[f'{pre}{torch_name}.bias'] = np.asarray(node['bias'])
  if spec.final_norm:
    out['norm.weight'] = np.asarray(enc['norm']['scale'])
    out['norm.bias'] = np.asarray(enc['norm']['bias'])
  if spec.fc_norm:
    out['fc_norm.weight'] = np.asarray(ckpt.params['fc_norm']['scale'])
    out['fc_norm.bias'] = np.asarray(ckpt.params['fc_norm']['bias'])
  if spec.num_classes:
    out['head.weight'] = np.ascontiguousarray(np.asarray(ckpt.params['head']['kernel']).T)
    out['head.bias'] = np.asarray(ckpt.params['head']['bias'])
  return out


def timm_model_kwargs(spec: ModelSpec) -> dict:
  """``timm.create_model`` arguments that build the architecture of ``spec`` (any registered ViT name works)."""
  if spec.final_norm == spec.fc_norm:
    raise ValueError('timm ViTs have either a final norm (global_pool token) or an fc_norm (global_pool avg), '
                     f'not final_norm={spec.final_norm} with fc_norm={spec.fc_norm}.')
  if spec.image_size[0] != spec.image_size[1]:
    img_size: int | tuple[int, int] = tuple(spec.image_size)
  else:
    img_size = spec.image_size[0]
  return dict(img_size=img_size, patch_size=spec.patch_size, in_chans=spec.channels, embed_dim=spec.width,
              depth=spec.depth, num_heads=spec.num_heads, mlp_ratio=spec.mlp_ratio, num_classes=spec.num_classes,
              global_pool='avg' if spec.fc_norm else 'token', qkv_bias=True, class_token=True)


# Registered timm names whose default architecture needs no overrides (size, patch, image) -> name.
_REGISTERED = {(size, patch, img): f'{size}_patch{patch}_{img}'
               for size in ('vit_tiny', 'vit_small', 'vit_base', 'vit_large') for patch, img in ((16, 224), (16, 384))}
_REGISTERED.update({('vit_base', 32, 224): 'vit_base_patch32_224', ('vit_base', 8, 224): 'vit_base_patch8_224',
                    ('vit_huge', 14, 224): 'vit_huge_patch14_224', ('vit_small', 32, 224): 'vit_small_patch32_224'})


def timm_model_name(spec: ModelSpec) -> str:
  """A registered timm model name: the exact one for standard sizes, else 'vit_base_patch16_224' (the keyword
  arguments of :func:`timm_model_kwargs` then set the architecture)."""
  size = TIMM_NAMES.get((spec.width, spec.depth, spec.num_heads), 'vit_base')
  return _REGISTERED.get((size, spec.patch_size, spec.image_size[0]), 'vit_base_patch16_224')
