"""Hugging Face ``ViTMAEModel`` / ``ViTMAEForPreTraining`` checkpoints (a directory: config.json + weights) <-> mim_jax.

Differences handled here:

* q, k and v are separate ``[D, D]`` Linears in HF; mim_jax fuses them into one ``qkv`` Dense whose output is
  ordered (q/k/v, head, head_dim), so the fused kernel is ``[Wq.T | Wk.T | Wv.T]``.
* Key names changed in transformers 5 (``layers.N.attention.q_proj``, ``mlp.fc1``) from the hub's transformers-4
  names (``encoder.layer.N.attention.attention.query``, ``intermediate.dense``); both are read. Files are written
  with the hub's names, which transformers 4 loads as they are and transformers 5 renames on load.
* The position tables are stored (``position_embeddings``, ``decoder.decoder_pos_embed``); they are MAE's fixed
  sin-cos tables in real checkpoints. A non-sin-cos encoder table becomes a learned table; the decoder's must be
  sin-cos.
* HF configs default to LayerNorm eps 1e-12; mim_jax (like the official MAE builders) uses 1e-6. Files written here
  say 1e-6; reading a 1e-12 file is noted (the outputs differ at the level of eps / variance, ~1e-6 relative).
* ``ViTMAEModel`` always masks with ``config.mask_ratio``: for features from HF, write ``mask_ratio=0`` and pass
  ``noise=torch.arange(N)`` to keep the tokens in raster order.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

import numpy as np

from mim_jax.interop.pos_embed import is_sincos, sincos_with_cls
from mim_jax.weights.spec import Checkpoint, DecoderSpec, ModelSpec
from mim_jax.weights.tensors import read_tensors, write_tensors
from mim_jax.interop.timm_vit import conv_from_patch_kernel, patch_kernel_from_conv

WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')
MAE_LAYER_NORM_EPS = 1e-6

# transformers-4 (hub) names -> transformers-5 names, applied in order.
_TO_V5 = [
    # transformers 5.23's save_pretrained writes decoder layers as 'decoder.decoder_encoder.layer.N'.
    (r'(^|\.)decoder_encoder\.layer\.', r'\1decoder_layers.'),
    (r'(^|\.)encoder\.layer\.', r'\1layers.'),
    (r'\.attention\.attention\.query\.', '.attention.q_proj.'),
    (r'\.attention\.attention\.key\.', '.attention.k_proj.'),
    (r'\.attention\.attention\.value\.', '.attention.v_proj.'),
    (r'\.attention\.output\.dense\.', '.attention.o_proj.'),
    (r'\.intermediate\.dense\.', '.mlp.fc1.'),
    (r'\.output\.dense\.', '.mlp.fc2.'),
]
_TO_HUB = [('.attention.q_proj.', '.attention.attention.query.'), ('.attention.k_proj.', '.attention.attention.key.'),
           ('.attention.v_proj.', '.attention.attention.value.'), ('.attention.o_proj.', '.attention.output.dense.'),
           ('.mlp.fc1.', '.intermediate.dense.'), ('.mlp.fc2.', '.output.dense.')]
_LAYER = re.compile(r'^(layers|decoder\.decoder_layers)\.(\d+)\.(.+)\.(weight|bias)$')


def _to_v5(key: str) -> str:
  for pattern, repl in _TO_V5:
    key = re.sub(pattern, repl, key)
  return key


def _layer_tree(sub: Mapping[str, np.ndarray], where: str) -> dict:
  """One HF layer's tensors (v5 names, no prefix) -> a mim_jax Block's params."""
  def get(name):
    if name not in sub:
      raise ValueError(f'{where}: missing {name!r}.')
    return sub[name]

  def linear(name):
    return {'kernel': np.ascontiguousarray(get(f'{name}.weight').T), 'bias': get(f'{name}.bias')}

  qkv_kernel = np.concatenate([get(f'attention.{n}_proj.weight').T for n in 'qkv'], axis=1)
  qkv_bias = np.concatenate([get(f'attention.{n}_proj.bias') for n in 'qkv'])
  return {
      'norm1': {'scale': get('layernorm_before.weight'), 'bias': get('layernorm_before.bias')},
      'attn': {'qkv': {'kernel': np.ascontiguousarray(qkv_kernel), 'bias': qkv_bias},
               'proj': linear('attention.o_proj')},
      'norm2': {'scale': get('layernorm_after.weight'), 'bias': get('layernorm_after.bias')},
      'mlp': {'fc1': linear('mlp.fc1'), 'fc2': linear('mlp.fc2')},
  }


def _layer_tensors(block: Mapping, prefix: str) -> dict[str, np.ndarray]:
  """A mim_jax Block's params -> HF tensors (v5 names) under ``prefix``."""
  out = {}
  qkv_k, qkv_b = np.asarray(block['attn']['qkv']['kernel']), np.asarray(block['attn']['qkv']['bias'])
  for n, k, b in zip('qkv', np.split(qkv_k, 3, axis=1), np.split(qkv_b, 3)):
    out[f'{prefix}attention.{n}_proj.weight'] = np.ascontiguousarray(k.T)
    out[f'{prefix}attention.{n}_proj.bias'] = b
  for hf, node in (('attention.o_proj', block['attn']['proj']), ('mlp.fc1', block['mlp']['fc1']),
                   ('mlp.fc2', block['mlp']['fc2'])):
    out[f'{prefix}{hf}.weight'] = np.ascontiguousarray(np.asarray(node['kernel']).T)
    out[f'{prefix}{hf}.bias'] = np.asarray(node['bias'])
  for hf, ours in (('layernorm_before', 'norm1'), ('layernorm_after', 'norm2')):
    out[f'{prefix}{hf}.weight'] = np.asarray(block[ours]['scale'])
    out[f'{prefix}{hf}.bias'] = np.asarray(block[ours]['bias'])
  return out


def _size(value) -> tuple[int, int]:
  return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def from_hf(state: Mapping[str, np.ndarray], config: Mapping | None = None, *, pos_embed: str = 'auto',
            num_heads: int | None = None, decoder_num_heads: int | None = None) -> Checkpoint:
  """HF ViTMAE tensors (+ its config.json as a dict) -> :class:`Checkpoint`."""
  config = dict(config or {})
  notes: list[str] = []
  state = {_to_v5(k[len('vit.'):] if k.startswith('vit.') else k): np.asarray(v, np.float32)
           for k, v in state.items()}
  if config.get('hidden_act', 'gelu') != 'gelu':
    raise ValueError(f"hidden_act={config['hidden_act']!r}: mim_jax blocks use exact GELU ('gelu').")
  if not config.get('qkv_bias', True):
    raise ValueError('qkv_bias=False ViTMAE models are not supported (mim_jax attention has a qkv bias).')
  eps = config.get('layer_norm_eps', MAE_LAYER_NORM_EPS)
  if abs(eps - MAE_LAYER_NORM_EPS) > 1e-12:
    notes.append(f'the HF config says LayerNorm eps {eps:g}; mim_jax uses {MAE_LAYER_NORM_EPS:g} (outputs differ '
                 'at the level of eps / variance).')
  used: set[str] = set()

  def take(key):
    if key not in state:
      raise ValueError(f'the checkpoint has no {key!r}; is it a Hugging Face ViTMAE checkpoint?')
    used.add(key)
    return state[key]

  conv = take('embeddings.patch_embeddings.projection.weight')
  width, channels, patch, _ = conv.shape
  encoder: dict = {'patch_embed': {'kernel': patch_kernel_from_conv(conv),
                                   'bias': take('embeddings.patch_embeddings.projection.bias')},
                   'cls_token': take('embeddings.cls_token')}

  def layers(prefix, root, name):
    groups: dict[int, dict] = {}
    for key in state:
      m = _LAYER.match(key)
      if m and m.group(1) == prefix:
        groups.setdefault(int(m.group(2)), {})[f'{m.group(3)}.{m.group(4)}'] = state[key]
        used.add(key)
    if sorted(groups) != list(range(len(groups))):
      raise ValueError(f'{prefix} layers are not numbered 0..N-1: {sorted(groups)}.')
    for i, sub in groups.items():
      root[f'{name}_{i}'] = _layer_tree(sub, f'{prefix}.{i}')
    return len(groups), (groups[0]['mlp.fc1.weight'].shape[0] if groups else 0)

  depth, hidden = layers('layers', encoder, 'blocks')
  encoder['norm'] = {'scale': take('layernorm.weight'), 'bias': take('layernorm.bias')}
  image_size = _size(config['image_size']) if 'image_size' in config else None
  table = take('embeddings.position_embeddings')
  if image_size is None:
    from mim_jax.interop.pos_embed import square_grid

    g = square_grid(table.shape[1] - 1, 'position_embeddings')
    image_size = (g[0] * patch, g[1] * patch)
  grid = (image_size[0] // patch, image_size[1] // patch)
  if pos_embed == 'auto':
    pos_embed = 'sincos' if is_sincos(table, grid) else 'learned'
  elif pos_embed == 'sincos' and not is_sincos(table, grid):
    raise ValueError("position_embeddings is not the fixed sin-cos table; convert with pos_embed='learned'.")
  if pos_embed == 'learned':
    encoder['pos_embed'] = table
    notes.append('position_embeddings is not MAE\'s sin-cos table: kept as a learned table.')

  params: dict = {'encoder': encoder}
  decoder_spec = None
  if any(k.startswith('decoder.') for k in state):
    dec: dict = {'decoder_embed': {'kernel': np.ascontiguousarray(take('decoder.decoder_embed.weight').T),
                                   'bias': take('decoder.decoder_embed.bias')},
                 'mask_token': take('decoder.mask_token'),
                 'decoder_norm': {'scale': take('decoder.decoder_norm.weight'),
                                  'bias': take('decoder.decoder_norm.bias')},
                 'decoder_pred': {'kernel': np.ascontiguousarray(take('decoder.decoder_pred.weight').T),
                                  'bias': take('decoder.decoder_pred.bias')}}
    dec_depth, dec_hidden = layers('decoder.decoder_layers', dec, 'decoder_blocks')
    dec_width = dec['decoder_embed']['kernel'].shape[1]
    if not is_sincos(take('decoder.decoder_pos_embed'), grid):
      raise ValueError('decoder.decoder_pos_embed is not the fixed sin-cos table; the mim_jax MAE decoder only has '
                       'that one (convert encoder-only with --encoder-only).')
    heads = decoder_num_heads or config.get('decoder_num_attention_heads')
    if heads is None:
      raise ValueError('the decoder head count is unknown without config.json: pass decoder_num_heads.')
    decoder_spec = DecoderSpec(width=dec_width, depth=dec_depth, num_heads=int(heads),
                               mlp_ratio=dec_hidden / dec_width if dec_depth else 4.0)
    params['decoder'] = dec
  leftover = sorted(set(state) - used)
  if leftover:
    raise ValueError(f'unrecognised key(s) {leftover[:6]}: not a ViTMAE checkpoint this converter knows.')
  heads = num_heads or config.get('num_attention_heads')
  if heads is None:
    from mim_jax.interop.timm_vit import default_num_heads

    heads = default_num_heads(width)
    notes.append(f'num_heads={heads} assumed from the width ({width}); pass num_heads if the model differs.')
  spec = ModelSpec(patch_size=patch, width=width, depth=depth, num_heads=int(heads), image_size=image_size,
                   channels=channels, mlp_ratio=hidden / width, pos_embed=pos_embed, decoder=decoder_spec,
                   norm_pix_loss=config.get('norm_pix_loss'))
  return Checkpoint(params, spec, notes)


def to_hf(ckpt: Checkpoint, *, key_style: str = 'hub') -> tuple[dict[str, np.ndarray], list[str]]:
  """:class:`Checkpoint` -> HF tensors: ``ViTMAEForPreTraining`` names when there is a decoder, else ``ViTMAEModel``.

  ``key_style='hub'`` writes the transformers-4 names of the published checkpoints; 'v5' the transformers-5 names.
  Returns ``(tensors, notes)``.
  """
  spec, enc = ckpt.spec, ckpt.params['encoder']
  notes = []
  if not spec.final_norm:
    raise ValueError('ViTMAEModel always applies its final layernorm; this model has none (a timm global_pool=avg '
                     'model with fc_norm). Export it to timm instead.')
  if spec.fc_norm or spec.num_classes:
    notes.append('ViTMAEModel has no fc_norm / classifier head: they are not written.')
  prefix = 'vit.' if spec.decoder is not None else ''
  out = {
      f'{prefix}embeddings.cls_token': np.asarray(enc['cls_token']),
      f'{prefix}embeddings.position_embeddings': (np.asarray(enc['pos_embed']) if spec.pos_embed == 'learned'
                                                  else sincos_with_cls(spec.width, spec.grid)),
      f'{prefix}embeddings.patch_embeddings.projection.weight': conv_from_patch_kernel(
          np.asarray(enc['patch_embed']['kernel']), spec.patch_size),
      f'{prefix}embeddings.patch_embeddings.projection.bias': np.asarray(enc['patch_embed']['bias']),
      f'{prefix}layernorm.weight': np.asarray(enc['norm']['scale']),
      f'{prefix}layernorm.bias': np.asarray(enc['norm']['bias']),
  }
  for i in range(spec.depth):
    out.update(_layer_tensors(enc[f'blocks_{i}'], f'{prefix}layers.{i}.'))
  if spec.decoder is not None:
    dec = ckpt.params['decoder']
    out['decoder.mask_token'] = np.asarray(dec['mask_token'])
    out['decoder.decoder_pos_embed'] = sincos_with_cls(spec.decoder.width, spec.grid)
    for mod in ('decoder_embed', 'decoder_pred'):
      out[f'decoder.{mod}.weight'] = np.ascontiguousarray(np.asarray(dec[mod]['kernel']).T)
      out[f'decoder.{mod}.bias'] = np.asarray(dec[mod]['bias'])
    out['decoder.decoder_norm.weight'] = np.asarray(dec['decoder_norm']['scale'])
    out['decoder.decoder_norm.bias'] = np.asarray(dec['decoder_norm']['bias'])
    for i in range(spec.decoder.depth):
      out.update(_layer_tensors(dec[f'decoder_blocks_{i}'], f'decoder.decoder_layers.{i}.'))
  if key_style == 'hub':
    out = {_to_hub(k): v for k, v in out.items()}
  elif key_style != 'v5':
    raise ValueError(f"key_style must be 'hub' or 'v5', got {key_style!r}.")
  return out, notes


def _to_hub(key: str) -> str:
  key = re.sub(r'(^|\.)layers\.', r'\1encoder.layer.', key)
  for new, old in _TO_HUB:
    key = key.replace(new, old)
  return key


def hf_config(spec: ModelSpec, mask_ratio: float | None = None) -> dict:
  """config.json for ``ViTMAEConfig`` (no transformers needed to write it)."""
  h, w = spec.image_size
  if h != w:
    raise ValueError(f'ViTMAE builds its sin-cos tables for square images only; this model is {h}x{w}.')
  d = spec.decoder
  if mask_ratio is None:
    mask_ratio = 0.75 if d is not None else 0.0
  return {
      'architectures': ['ViTMAEForPreTraining' if d is not None else 'ViTMAEModel'],
      'model_type': 'vit_mae',
      'hidden_size': spec.width, 'num_hidden_layers': spec.depth, 'num_attention_heads': spec.num_heads,
      'intermediate_size': int(round(spec.mlp_ratio * spec.width)), 'hidden_act': 'gelu',
      'hidden_dropout_prob': 0.0, 'attention_probs_dropout_prob': 0.0, 'initializer_range': 0.02,
      'layer_norm_eps': MAE_LAYER_NORM_EPS, 'image_size': h, 'patch_size': spec.patch_size,
      'num_channels': spec.channels, 'qkv_bias': True,
      'decoder_hidden_size': d.width if d else 512, 'decoder_num_hidden_layers': d.depth if d else 8,
      'decoder_num_attention_heads': d.num_heads if d else 16,
      'decoder_intermediate_size': int(round(d.mlp_ratio * d.width)) if d else 2048,
      'mask_ratio': float(mask_ratio), 'norm_pix_loss': bool(spec.norm_pix_loss),
      'torch_dtype': 'float32',
  }


def read_hf(path: str, **kwargs) -> Checkpoint:
  """A HF model directory (config.json + model.safetensors or pytorch_model.bin), or a bare weights file."""
  config = None
  if os.path.isdir(path):
    cfg_path = os.path.join(path, 'config.json')
    if os.path.exists(cfg_path):
      with open(cfg_path) as f:
        config = json.load(f)
      if config.get('model_type') not in (None, 'vit_mae'):
        raise ValueError(f"{cfg_path} is a {config.get('model_type')!r} model, not 'vit_mae'.")
    files = [os.path.join(path, n) for n in WEIGHT_FILES if os.path.exists(os.path.join(path, n))]
    if not files:
      raise FileNotFoundError(f'{path!r} has none of {WEIGHT_FILES} (sharded checkpoints are not supported).')
    path = files[0]
  state, _ = read_tensors(path)
  return from_hf(state, config, **kwargs)


def write_hf(ckpt: Checkpoint, directory: str, *, mask_ratio: float | None = None, key_style: str = 'hub',
             weights: str = 'model.safetensors') -> list[str]:
  """Writes ``directory/config.json`` and ``directory/model.safetensors``; ``from_pretrained(directory)`` loads it."""
  if os.path.splitext(directory)[1] in ('.safetensors', '.pth', '.bin', '.npz'):
    raise ValueError(f'a Hugging Face checkpoint is a directory; got the file name {directory!r}.')
  tensors, notes = to_hf(ckpt, key_style=key_style)
  config = hf_config(ckpt.spec, mask_ratio)
  os.makedirs(directory, exist_ok=True)
  cfg_path = os.path.join(directory, 'config.json')
  with open(cfg_path, 'w') as f:
    json.dump(config, f, indent=2, sort_keys=True)
  # transformers refuses safetensors files whose metadata does not name the framework.
  weights_path = write_tensors(os.path.join(directory, weights), tensors, metadata={'format': 'pt'})
  ckpt.notes.extend(notes)
  return [cfg_path, weights_path]
