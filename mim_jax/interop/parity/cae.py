"""Parity adapter for CAE (Atten4Vis/CAE, ``models/modeling_cae.py``, ``models/modeling_cae_helper.py``).

One step with a given mask (``input/bool_masked_pos``): the regressor's predicted latents of the masked patches
(``latent_predict``), the alignment target (the encoder on the masked patches, ``latent_target``), the decoder's
logits, the cross-entropy against the given tokenizer labels (``input/labels``: the DALL-E tokenizer is only a
label source), the alignment loss (x2), the total and every gradient. The official encoder and decoder blocks have
a q/v-only attention bias: mim_jax's fused ``qkv`` bias takes ``[q_bias, 0, v_bias]``, and its k part must get a
zero gradient (checked). The loss here is the official one (cross-entropy on the logits), computed on mim_jax's
outputs; mim_jax's own target is pixels or a teacher's features (docs/methods.md), whose loss is MAE's MSE.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.interop import parity
from mim_jax.interop.official_mae import _conv_from_patch_kernel, _patch_kernel_from_conv

_TOP = {'encoder': 'encoder', 'regresser': 'regressor', 'decoder': 'decoder',
        'encoder_to_regresser': 'encoder_to_regressor', 'encoder_to_regresser_norm': 'encoder_to_regressor_norm'}
_FIXED = ('encoder.pos_embed', 'rd_pos_embed')  # the sin-cos tables (computed by mim_jax)


def _path(key: str) -> tuple[tuple[str, ...], str]:
  """Official name -> (mim_jax path, how the value maps: 'T' transposed, 'conv', 'q' / 'v' part of the qkv bias,
  or '' as is)."""
  if key == 'mask_token':
    return ('mask_token',), ''
  parts = key.split('.')
  top = _TOP.get(parts[0])
  if top is None:
    raise ValueError(f'unexpected official CAE parameter {key!r}')
  rest = '.'.join(parts[1:])
  rest = re.sub(r'(^|\.)(blocks|regressor_blocks|decoder_blocks)\.(\d+)', r'\1\2_\3', rest)
  names = rest.split('.') if rest else []
  if top == 'encoder' and names[:2] == ['patch_embed', 'proj']:
    weight = names[2] == 'weight'
    return ('encoder', 'patch_embed', 'kernel' if weight else 'bias'), 'conv' if weight else ''
  if top in ('encoder_to_regressor', 'encoder_to_regressor_norm'):
    names = [top, *names]
    top = None
  *mods, leaf = names
  if leaf in ('q_bias', 'v_bias'):
    if mods[-1] == 'cross_attn':  # separate q / v projections: their biases
      return tuple(filter(None, (top, *mods, leaf[0], 'bias'))), ''
    return tuple(filter(None, (top, *mods, 'qkv', 'bias'))), leaf[0]  # the fused projection's q / v part
  if leaf.startswith('gamma') or leaf == 'cls_token':
    return tuple(filter(None, (top, *mods, leaf))), ''
  is_norm = bool(mods) and (mods[-1].startswith('norm') or mods[-1].endswith('_norm'))
  if leaf == 'weight':
    return tuple(filter(None, (top, *mods, 'scale' if is_norm else 'kernel'))), '' if is_norm else 'T'
  return tuple(filter(None, (top, *mods, 'bias'))), ''


def _set(tree: dict, path, value):
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return np.asarray(tree)


def from_official(state: dict) -> dict:
  params: dict = {}
  qv: dict[tuple, dict[str, np.ndarray]] = {}
  for key, value in state.items():
    if key in _FIXED:
      continue
    value = np.asarray(value, np.float32)
    path, how = _path(key)
    if how in ('q', 'v'):
      qv.setdefault(path, {})[how] = value
      continue
    _set(params, path, _patch_kernel_from_conv(value) if how == 'conv' else value.T if how == 'T' else value)
  for path, b in qv.items():
    _set(params, path, np.concatenate([b['q'], np.zeros_like(b['q']), b['v']]))
  return params


def to_official(grads: dict, keys, patch_size: int) -> tuple[dict, dict]:
  """mim_jax gradients under the official names of ``keys``, and the k parts of the fused qkv biases."""
  out, k_parts = {}, {}
  for key in keys:
    path, how = _path(key)
    g = _get(grads, path)
    if how == 'conv':
      g = _conv_from_patch_kernel(g, patch_size)
    elif how == 'T':
      g = g.T
    elif how in ('q', 'v'):
      d = g.shape[0] // 3
      g, k_parts['/'.join(path)] = (g[:d] if how == 'q' else g[2 * d:]), g[d:2 * d]
    out[key] = g
  return out, k_parts


def check(fx: parity.Fixture) -> list[parity.Check]:
  import optax

  from mim_jax import masking
  from mim_jax.methods import Facts, build

  images_nchw, masked, labels = fx.need('inputs', 'images', 'bool_masked_pos', 'labels')
  refs = dict(zip(('logits', 'latent_predict', 'latent_target', 'loss_main', 'loss_align', 'loss'),
                  fx.need('outputs', 'logits', 'latent_predict', 'latent_target', 'loss_main', 'loss_align', 'loss')))
  cfg = fx.config()
  images = jnp.asarray(images_nchw.transpose(0, 2, 3, 1))
  method = build(cfg, Facts.for_images(images.shape[1:]))
  # The official decoder predicts token classes: its head has their class count (mim_jax's: pixels or features).
  method.decoder = method.decoder.clone(out_dim=refs['logits'].shape[-1])
  method.model = method.model.clone(decoder=method.decoder)
  params = jax.tree.map(jnp.asarray, from_official(fx.params))
  n_masked = int(masked[0].sum())
  info = masking.mask_from_boolean(jnp.asarray(masked), masked.shape[1] - n_masked)

  def forward(p):
    out = method.predict(p, images, info)
    logits = out['logits'].reshape(-1, out['logits'].shape[-1])
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), jnp.asarray(labels)))
    align = 2.0 * out['align_loss']
    return {**out, 'logits_flat': logits, 'loss_main': ce, 'loss_align': align, 'loss': ce + align}

  out, grads = parity.forward_and_grads(forward, params)
  checks = [
      parity.activation('logits', out['logits_flat'], refs['logits']),
      parity.activation('latent_predict', out['latent_pred'], refs['latent_predict']),
      parity.activation('latent_target', out['latent_target'], refs['latent_target']),
      parity.loss('loss_main', out['loss_main'], refs['loss_main']),
      parity.loss('loss_align', out['loss_align'], refs['loss_align']),
      parity.loss('loss', out['loss'], refs['loss']),
  ]
  ours, k_parts = to_official(jax.tree.map(np.asarray, grads), fx.grads, cfg.model.encoder.patch_size)
  floor = 1e-6 * max(float(np.max(np.abs(r))) for r in fx.grads.values())
  checks += [parity.Check(f'grad/{name}.k_part (zero)', float(np.max(np.abs(g))), floor)
             for name, g in sorted(k_parts.items())]
  return checks + parity.gradients(ours, fx.grads)
