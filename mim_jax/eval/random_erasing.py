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


def _erase_one(rng, image, prob: float, area: tuple[float, float], log_ratio: tuple[float, float]):
  h, w, _ = image.shape
  k_apply, k_area, k_ratio, k_top, k_left, k_noise = jax.random.split(rng, 6)
  target = jax.random.uniform(k_area, (ATTEMPTS,), minval=area[0], maxval=area[1]) * (h * w)
  aspect = jnp.exp(jax.random.uniform(k_ratio, (ATTEMPTS,), minval=log_ratio[0], maxval=log_ratio[1]))
  eh = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
  ew = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
  fits = (eh < h) & (ew < w)
  first = jnp.argmax(fits)  # index of the first fitting draw (0 if none; `fits.any()` guards that case)
  eh, ew = eh[first], ew[first]
  top = jax.random.randint(k_top, (), 0, jnp.maximum(h - eh, 1))
  left = jax.random.randint(k_left, (), 0, jnp.maximum(w - ew, 1))
  rows = jnp.arange(h)[:, None]
  cols = jnp.arange(w)[None, :]
  box = (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)
  box = box & fits.any() & (jax.random.uniform(k_apply) < prob)
  noise = jax.random.normal(k_noise, image.shape, image.dtype)
  return jnp.where(box[..., None], noise, image), box


def random_erasing(rng: jax.Array, images: jax.Array, prob: float = 0.25, area: tuple[float, float] = (0.02, 1 / 3),
                   ratio: tuple[float, float] = (0.3, 1 / 0.3)) -> tuple[jax.Array, jax.Array]:
  """``images [B, H, W, C] -> (erased images, erased-pixel masks [B, H, W])``; ``prob=0`` returns the input."""
  if prob <= 0:
    return images, jnp.zeros(images.shape[:3], bool)
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  keys = jax.random.split(rng, images.shape[0])
  return jax.vmap(lambda k, x: _erase_one(k, x, prob, area, log_ratio))(keys, images)
