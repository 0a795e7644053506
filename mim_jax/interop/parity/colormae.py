"""Parity adapter for ColorMAE's masks (carlosh93/ColorMAE, ``models/utils/masking_generator.py``).

The authors ship their noise patterns as files to download and do not release the code that made them, so the
patterns themselves cannot be checked; what can is everything after the bank: the window (``RandomCrop`` of the
grid's size, then horizontal and vertical flips, then division by the window's maximum) and the mask rule (the
``len_keep = int(N * (1 - ratio))`` strongest values stay visible). The fixture holds a bank (``input/bank``), the
crop offset and flips the official transforms drew (``draw/*``), and the official windows, masks, ``ids_keep``
(strongest first) and ``ids_restore``. mim_jax replays the draws through ``ColorNoiseMask.windows`` over that bank.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from mim_jax import masking
from mim_jax.interop import parity


def check(fx: parity.Fixture) -> list[parity.Check]:
  (bank,) = fx.need('inputs', 'bank')
  pattern, dy, dx, flip_v, flip_h = fx.need('draws', 'pattern', 'crop_top', 'crop_left', 'vertical_flip',
                                            'horizontal_flip')
  window, mask, ids_keep, ids_restore = fx.need('outputs', 'window', 'mask', 'ids_keep', 'ids_restore')
  cfg = fx.config().mask
  side = int(round(window.shape[1] ** 0.5)) if window.ndim == 2 else int(window.shape[1])
  settings = {k: v for k, v in cfg.items() if k != 'name'}
  generator = masking.build(cfg.name, masking.Grid(side, side), **settings).with_bank(bank)
  b = pattern.shape[0]

  def per_example(x, dtype):
    return jnp.broadcast_to(jnp.asarray(x, dtype), (b,))

  ours = generator.windows(jnp.asarray(pattern, jnp.int32), per_example(dy, jnp.int32), per_example(dx, jnp.int32),
                           per_example(flip_v, bool), per_example(flip_h, bool))
  info = generator.from_windows(ours)
  ours = np.asarray(ours)
  normalized = ours / ours.max(axis=1, keepdims=True)  # the authors' NormalizeBySliceMax (each window's maximum)
  return [
      parity.exact('len_keep', info.len_keep, ids_keep.shape[1]),
      parity.activation('window', normalized, window.reshape(b, -1)),
      parity.exact('mask', info.mask, mask),
      parity.exact('ids_keep', info.ids_keep, ids_keep),
      parity.exact('ids_restore', info.ids_restore, ids_restore),
  ]
