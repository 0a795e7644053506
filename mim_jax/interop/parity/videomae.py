"""Parity adapter for VideoMAE / VideoMAE V2 (OpenGVLab/VideoMAEv2 ``models/modeling_pretrain.py``,
``dataset/masking_generator.py``, the loss of ``engine_for_pretraining.py``; fixtures by
tools/fixtures/official_videomae.py): one training forward and backward with the recorded masks.

Rebuilds :class:`~mim_jax.methods.videomae.VideoMAE` from the recorded config, imports the official state dict
(names below), replays ``input/mask`` (True = masked) and ``input/decode_mask`` (V2; True = not reconstructed)
and compares the encoder's output on the visible tubelets, the predictions, the targets, the loss and every
gradient, plus the masks themselves: the four running-cell maps of the official generator against
``running_cell_pattern`` at phases 0-3, and the tube's per-frame count and its constancy over time.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.interop import parity

_RULES = (
    (r'^encoder\.blocks\.(\d+)\.', r'encoder.blocks_\1.'),
    (r'^decoder\.blocks\.(\d+)\.', r'decoder.decoder_blocks_\1.'),
    (r'^decoder\.norm\.', 'decoder.decoder_norm.'),
    (r'^decoder\.head\.', 'decoder.decoder_pred.'),
    (r'^encoder_to_decoder\.', 'decoder.decoder_embed.'),
    (r'^mask_token$', 'decoder.mask_token'),
    (r'^encoder\.patch_embed\.proj\.', 'encoder.patch_embed.'),
)


def _path(name: str) -> tuple[tuple[str, ...], str]:
  """(mim_jax path, layout) of an official parameter; layout 'T' (Linear weight), 'conv3d' or ''."""
  for pattern, repl in _RULES:
    name = re.sub(pattern, repl, name)
  *mods, leaf = name.split('.')
  if leaf == 'weight':
    if mods[-1] == 'patch_embed':
      return (*mods, 'kernel'), 'conv3d'
    if mods[-1].startswith('norm') or mods[-1].endswith('_norm'):
      return (*mods, 'scale'), ''
    return (*mods, 'kernel'), 'T'
  return (*mods, leaf), ''


def _to_ours(value: np.ndarray, layout: str) -> np.ndarray:
  if layout == 'conv3d':  # [D, C, t, p, p] -> [(t, p, p, C), D], the order of patchify_video's features
    return value.transpose(2, 3, 4, 1, 0).reshape(-1, value.shape[0])
  return value.T if layout == 'T' else value


def _to_official(value: np.ndarray, layout: str, shape: tuple[int, ...]) -> np.ndarray:
  if layout == 'conv3d':
    d, c, t, p, _ = shape
    return value.reshape(t, p, p, c, d).transpose(4, 3, 0, 1, 2)
  return value.T if layout == 'T' else value


def from_official(state: dict[str, np.ndarray]) -> dict:
  params: dict = {}
  for name, value in state.items():
    path, layout = _path(name)
    tree = params
    for key in path[:-1]:
      tree = tree.setdefault(key, {})
    if path[-1] in tree:
      raise parity.FixtureError(f'two official parameters map to {"/".join(path)}')
    tree[path[-1]] = _to_ours(np.asarray(value, np.float32), layout)
  return params


def to_official(tree: dict, reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {}
  for name, ref in reference.items():
    path, layout = _path(name)
    value = tree
    for key in path:
      value = value[key]
    out[name] = _to_official(np.asarray(value), layout, ref.shape)
  return out


def check(fx: parity.Fixture) -> list[parity.Check]:
  from mim_jax import masking
  from mim_jax.masking.video import running_cell_pattern
  from mim_jax.methods import Facts, build

  (video, mask), cfg = fx.need('inputs', 'video', 'mask'), fx.config()
  enc_tokens, pred, labels, loss, pos_table = fx.need('outputs', 'encoder_tokens', 'pred', 'labels', 'loss',
                                                      'pos_table')
  clips = jnp.asarray(video.transpose(0, 2, 3, 4, 1))  # B C T H W -> B T H W C
  method = build(cfg, Facts.for_images(clips.shape[2:], mean=cfg.data.mean, std=cfg.data.std))
  params = jax.tree.map(jnp.asarray, from_official(fx.params))
  b, n = mask.shape
  grid = method.grid
  info = masking.mask_from_boolean(jnp.asarray(mask), int((~mask[0]).sum()))
  checks = [parity.exact('tube count per frame', method.masker.masked_per_frame,
                         int(mask[0].reshape(grid.frames, -1)[0].sum())),
            parity.exact('tube constant over time', mask.reshape(b, grid.frames, -1),
                         np.repeat(mask.reshape(b, grid.frames, -1)[:, :1], grid.frames, axis=1)),
            parity.exact('encoder visible count', method.masker.len_keep, info.len_keep)]
  if cfg.videomae.decoder_mask == 'running_cell':
    (decode_mask,), (maps,) = fx.need('inputs', 'decode_mask'), fx.need('draws', 'running_cell_maps')
    ours = running_cell_pattern(grid, method.decoder_masker.masked_per_cell, jnp.arange(4))
    checks.append(parity.exact('running cell maps (phases 0-3)', np.asarray(ours), maps.reshape(4, -1)))
    checks.append(parity.exact('decoded count', method.decoder_masker.len_keep, int((~decode_mask[0]).sum())))
    keep = ~decode_mask
  else:
    keep = mask
  ids_decode = jnp.asarray(np.stack([np.flatnonzero(k) for k in keep]).astype(np.int32))
  out, grads = parity.forward_and_grads(lambda p: method.forward(p, clips, info, ids_decode), params)
  from mim_jax.models.vit import sincos_1d_table

  checks += [
      parity.exact('position table', sincos_1d_table(pos_table.shape[-1], n), pos_table),
      parity.loss('loss', out['loss'], loss),
      parity.activation('encoder_tokens', out['latent'], enc_tokens),
      parity.activation('labels', out['target'], labels),
      parity.activation('pred', out['pred'], pred),
  ]
  return checks + parity.gradients(to_official(jax.tree.map(np.asarray, grads), fx.grads), fx.grads)
