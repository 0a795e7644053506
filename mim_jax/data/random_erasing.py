"""Random erasing (Zhong et al. 2020) as a jit-able batch op on normalized images, as the fine-tune recipe uses it.

MAE fine-tuning uses timm's ``RandomErasing(0.25, mode='pixel', max_count=1)`` after normalization: each
image, with probability ``prob``, gets one rectangle of area ``U(0.02, 1/3)`` of the image and aspect ratio
log-uniform in ``(0.3, 1/0.3)`` replaced by per-pixel standard-normal noise; up to 10 draws are tried and the
first box that fits is used (none fits: the image is unchanged). Here the 10 draws are made at once and the
first fitting one is selected, so shapes are static.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

ATTEMPTS = 10


def random_erasing(rng: jax.Array, images: jax.Array, prob: float = 0.25, area: tuple[float, float] = (0.02, 1 / 3),
                   ratio: tuple[float, float] = (0.3, 1 / 0.3)) -> tuple[jax.Array, jax.Array]:
  """``images [B, H, W, C] -> (erased images, erased-pixel masks [B, H, W])``; ``prob=0`` returns the input."""
  if isinstance(prob, (int, float)) and prob <= 0:  # a traced prob (one compile for several) skips this shortcut
    return images, jnp.zeros(images.shape[:3], bool)
  b, h, w, _ = images.shape
  # A handful of batch-wide draws (not per-image rng splits): this compiles in a fraction of the time.
  k_apply, k_area, k_ratio, k_pos, k_noise = jax.random.split(rng, 5)
  target = jax.random.uniform(k_area, (b, ATTEMPTS), minval=area[0], maxval=area[1]) * (h * w)
  aspect = jnp.exp(jax.random.uniform(k_ratio, (b, ATTEMPTS), minval=math.log(ratio[0]), maxval=math.log(ratio[1])))
  eh = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
  ew = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
  fits = (eh < h) & (ew < w)
  first = jnp.argmax(fits, axis=1)[:, None]  # the first fitting draw (0 if none; `fits.any` guards that case)
  eh = jnp.take_along_axis(eh, first, axis=1)[:, 0]
  ew = jnp.take_along_axis(ew, first, axis=1)[:, 0]
  u = jax.random.uniform(k_pos, (b, 2))
  top = jnp.floor(u[:, 0] * (h - eh + 1)).astype(jnp.int32)  # uniform in [0, h - eh], like randint
  left = jnp.floor(u[:, 1] * (w - ew + 1)).astype(jnp.int32)
  rows = jnp.arange(h)[None, :, None]
  cols = jnp.arange(w)[None, None, :]
  box = ((rows >= top[:, None, None]) & (rows < (top + eh)[:, None, None])
         & (cols >= left[:, None, None]) & (cols < (left + ew)[:, None, None]))
  erase = fits.any(axis=1) & (jax.random.uniform(k_apply, (b,)) < prob)
  box = box & erase[:, None, None]
  noise = jax.random.normal(k_noise, images.shape, images.dtype)
  return jnp.where(box[..., None], noise, images), box
