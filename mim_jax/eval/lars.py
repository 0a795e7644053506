"""LARS with the MAE / MoCo v3 reference semantics, as an optax ``GradientTransformation``.

Per parameter tensor ``p`` with gradient ``g``, every step:

* if ``p.ndim > 1`` (weights; never biases or normalization parameters when ``exclude_1d``):
  ``g <- g + weight_decay * p``, then ``g <- q * g`` with the trust ratio
  ``q = trust_coefficient * ||p|| / ||g||`` when both norms are positive, else ``q = 1``;
* ``mu <- momentum * mu + g``;
* the update is ``-lr(step) * mu``.

The learning rate multiplies the momentum buffer, i.e. it is applied *after* momentum. ``optax.lars``
applies it before momentum, which differs whenever the learning rate changes (warmup, cosine): with this
ordering a change of lr rescales the whole accumulated velocity at once, exactly like ``torch.optim``.
The step counter starts at 0, so ``learning_rate(0)`` is the lr of the first update.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

ScalarOrSchedule = float | Callable[[jax.Array], jax.Array]


class LarsState(NamedTuple):
  count: jax.Array  # int32 scalar: number of updates applied so far
  mu: optax.Params  # momentum buffer, same structure as the params


def _scaled_gradient(
    g: jax.Array, p: jax.Array, weight_decay: float, trust_coefficient: float, exclude_1d: bool
) -> jax.Array:
  if exclude_1d and p.ndim <= 1:
    return g
  g = g + weight_decay * p
  p_norm = jnp.linalg.norm(p.astype(jnp.float32).ravel())
  g_norm = jnp.linalg.norm(g.astype(jnp.float32).ravel())
  # Inner `where` keeps the division finite when g_norm == 0 (its gradient/value is discarded anyway).
  ratio = trust_coefficient * p_norm / jnp.where(g_norm > 0, g_norm, 1.0)
  q = jnp.where((p_norm > 0) & (g_norm > 0), ratio, 1.0)
  return (g * q).astype(g.dtype)


def lars(
    learning_rate: ScalarOrSchedule,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    trust_coefficient: float = 0.001,
    exclude_1d: bool = True,
) -> optax.GradientTransformation:
  """The reference LARS (see the module docstring). ``learning_rate`` is a float or a ``step -> lr`` schedule.

  ``update`` needs ``params`` (the trust ratio and weight decay read them). With ``exclude_1d=False`` every
  tensor, 1-D or not, gets weight decay and the trust ratio.
  """

  def init_fn(params: optax.Params) -> LarsState:
    return LarsState(count=jnp.zeros([], jnp.int32), mu=jax.tree.map(jnp.zeros_like, params))

  def update_fn(updates: optax.Updates, state: LarsState, params: optax.Params | None = None):
    if params is None:
      raise ValueError('lars needs params: call tx.update(grads, state, params)')
    scaled = jax.tree.map(
        lambda g, p: _scaled_gradient(g, p, weight_decay, trust_coefficient, exclude_1d), updates, params
    )
    mu = jax.tree.map(lambda m, g: momentum * m + g, state.mu, scaled)
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    new_updates = jax.tree.map(lambda m: (-lr * m).astype(m.dtype), mu)
    return new_updates, LarsState(count=optax.safe_increment(state.count), mu=mu)

  return optax.GradientTransformation(init_fn, update_fn)
