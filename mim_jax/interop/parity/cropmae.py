"""Parity adapter for CropMAE (alexandre-eymael/CropMAE, ``models/SiamMAE.py``,
``models/components/DecoderBlock.py``).

Replays ``draw/noise`` (the masked view's ``torch.rand``) on ``input/imgs`` ``[B, 2, 3, H, W]`` (view 0 the
reference, view 1 masked) and compares the mask, ``pred`` (every patch of view 1), the loss and every gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.interop import parity
from mim_jax.interop.parity import torch_names

RULES = [
    (r'^(patch_embed)\.proj\.', r'encoder.\1.'),
    (r'^(cls_token|norm\.|blocks\.)', r'encoder.\1'),
    (r'^(mask_token|decoder_embed|decoder_pred|decoder_norm|decoder_blocks)', r'decoder.\1'),
    (r'(blocks)\.(\d+)\.', r'\1_\2.'),
    (r'\.multihead_attn\.', '.cross_attn.'),
    (r'\.out_proj\.', '.proj.'),
]


def check(fx: parity.Fixture) -> list[parity.Check]:
  from mim_jax.methods import Facts, build

  (imgs,), (noise,) = fx.need('inputs', 'imgs'), fx.need('draws', 'noise')
  loss, pred, mask = fx.need('outputs', 'loss', 'pred', 'mask')
  cfg = fx.config()
  view2, view1 = (jnp.asarray(imgs[:, i].transpose(0, 2, 3, 1)) for i in (0, 1))  # NCHW -> NHWC
  method = build(cfg, Facts.for_images(view1.shape[1:]))
  params = jax.tree.map(jnp.asarray, torch_names.tree_from_state(fx.params, RULES))
  info = method.masker.from_noise(jnp.asarray(noise))
  out, grads = parity.forward_and_grads(lambda p: method.forward(p, view1, view2, info), params)
  checks = [
      parity.exact('mask', info.mask, mask),
      parity.loss('loss', out['loss'], loss),
      parity.activation('pred', out['pred'], pred),
  ]
  ours = torch_names.state_from_tree(jax.tree.map(np.asarray, grads), fx.grads, RULES, cfg.model.encoder.patch_size)
  return checks + parity.gradients(ours, fx.grads)
