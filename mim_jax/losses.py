"""Masked reductions: losses computed on the masked tokens only."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_mean(per_token: jax.Array, mask: jax.Array) -> jax.Array:
  """``sum(per_token * mask) / sum(mask)``: the average over masked tokens (mask 1 = masked)."""
  mask = mask.astype(jnp.float32)
  return (per_token.astype(jnp.float32) * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def mse_per_token(pred: jax.Array, target: jax.Array) -> jax.Array:
  return jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)


def l1_per_token(pred: jax.Array, target: jax.Array) -> jax.Array:
  return jnp.mean(jnp.abs(pred.astype(jnp.float32) - target), axis=-1)
