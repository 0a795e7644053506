"""Parity adapter for SimMIM with the ViT encoder (microsoft/SimMIM, ``models/simmim.py``).

Replays ``draw/cell_permutation`` (what ``MaskGenerator`` got from ``np.random.permutation``) through the ``coarse``
generator and compares the token mask, the encoder output ``z`` (``[B, D, h, w]``, after the final norm, CLS
dropped), the reconstruction ``x_rec`` (``[B, 3, H, W]``, after the 1x1 conv and pixel shuffle), the L1 loss on
masked pixels, and every gradient. mim_jax's fused qkv bias has a k part that the official attention lacks: its
gradient must be zero (``grad/...k_bias (zero)``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.interop import parity
from mim_jax.interop.official_simmim import from_official, to_official
from mim_jax.targets import unpatchify


def check(fx: parity.Fixture) -> list[parity.Check]:
  from mim_jax.methods import Facts, build

  (images_nchw,), (permutation,) = fx.need('inputs', 'images'), fx.need('draws', 'cell_permutation')
  mask, z, x_rec, loss = fx.need('outputs', 'mask', 'z', 'x_rec', 'loss')
  cfg = fx.config()
  images = jnp.asarray(images_nchw.transpose(0, 2, 3, 1))
  b, h, w, c = images.shape
  method = build(cfg, Facts.for_images((h, w, c)))
  params = jax.tree.map(jnp.asarray, from_official(fx.params))
  info = method.masker.from_permutation(permutation)
  p = method.encoder.patch_size
  gh, gw = method.grid_hw
  out, grads = parity.forward_and_grads(lambda q: method.forward(q, images, info.mask), params)
  z_ours = np.asarray(out['tokens'][:, 1:]).reshape(b, gh, gw, -1).transpose(0, 3, 1, 2)
  x_rec_ours = np.asarray(unpatchify(out['pred'], p, (gh, gw), c)).transpose(0, 3, 1, 2)
  checks = [
      parity.exact('mask', info.mask, np.asarray(mask).reshape(b, -1)),
      parity.activation('z', z_ours, z),
      parity.activation('x_rec', x_rec_ours, x_rec),
      parity.loss('loss', out['loss'], loss),
  ]
  ours, k_bias = to_official(jax.tree.map(np.asarray, grads), patch_size=p)
  checks += [parity.Check(f'grad/{k} (zero)', float(np.max(np.abs(v))), 1e-6 * _scale(fx.grads))
             for k, v in sorted(k_bias.items())]
  return checks + parity.gradients(ours, fx.grads)


def _scale(grads: dict[str, np.ndarray]) -> float:
  """The largest official gradient of any q/v bias: the scale a zero k-bias gradient is measured against."""
  return max(float(np.max(np.abs(v))) for k, v in grads.items() if k.endswith(('q_bias', 'v_bias')))
