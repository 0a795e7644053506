"""Parity adapter for CroCo (naver/croco, ``models/croco.py``, ``models/blocks.py``, ``models/criterion.py``).

Replays the stored mask (``input/mask``, True = masked; their ``RandomMask`` count) on ``input/img1`` (masked) and
``input/img2`` (the reference) and compares the prediction of every patch of view 1 (``out``), the norm-pix masked
MSE and every gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax import masking
from mim_jax.interop import parity
from mim_jax.interop.parity import torch_names

RULES = [
    (r'^patch_embed\.proj\.', 'encoder.patch_embed.'),
    (r'^enc_blocks\.(\d+)\.', r'encoder.blocks_\1.'),
    (r'^enc_norm\.', 'encoder.norm.'),
    (r'^(mask_token|decoder_embed)', r'decoder.\1'),
    (r'^dec_blocks\.(\d+)\.', r'decoder.decoder_blocks_\1.'),
    (r'^dec_norm\.', 'decoder.decoder_norm.'),
    (r'^prediction_head\.', 'decoder.decoder_pred.'),
    (r'\.cross_attn\.proj([qkv])\.', r'.cross_attn.\1.'),
]


def check(fx: parity.Fixture) -> list[parity.Check]:
  from mim_jax.methods import Facts, build

  img1, img2, masked = fx.need('inputs', 'img1', 'img2', 'mask')
  out_ref, loss = fx.need('outputs', 'out', 'loss')
  cfg = fx.config()
  view1, view2 = (jnp.asarray(x.transpose(0, 2, 3, 1)) for x in (img1, img2))  # NCHW -> NHWC
  method = build(cfg, Facts.for_images(view1.shape[1:]))
  params = jax.tree.map(jnp.asarray, torch_names.tree_from_state(fx.params, RULES))
  n_masked = int(masked[0].sum())
  info = masking.mask_from_boolean(jnp.asarray(masked), masked.shape[1] - n_masked)
  out, grads = parity.forward_and_grads(lambda p: method.forward(p, view1, view2, info), params)
  checks = [
      parity.exact('num_visible (their int(ratio * N) masked)', method.masker.len_keep, masked.shape[1] - n_masked),
      parity.loss('loss', out['loss'], loss),
      parity.activation('out', out['pred'], out_ref),
  ]
  ours = torch_names.state_from_tree(jax.tree.map(np.asarray, grads), fx.grads, RULES, cfg.model.encoder.patch_size)
  return checks + parity.gradients(ours, fx.grads)
