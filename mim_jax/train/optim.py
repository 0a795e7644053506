"""Optimizers and learning-rate schedules (optax compositions), as the MAE reference sets them up.

* lr = base_lr * global_batch / 256 (the linear scaling rule), printed at start.
* Per-step linear warmup from 0, then a half-cycle cosine to ``min_lr`` (or SimMIM's multistep).
* AdamW (b1 0.9, b2 0.95), decoupled weight decay 0.05 on every parameter with more than one dimension
  that is not a bias - exactly the reference's grouping (timm ``add_weight_decay``: 1-D params and
  ``*.bias`` are exempt; CLS/mask tokens, being 3-D, are decayed; fine-tuning also exempts ``cls_token`` and
  ``pos_embed``, its reference's ``no_weight_decay()``).
* Optional global-norm clipping, and per-parameter lr multipliers: layer-wise lr decay for fine-tuning
  (:func:`layer_decay_multipliers`, from the method's own layer ids).
* LARS with the MAE / MoCo v3 reference semantics for the linear probe (:func:`lars`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax

from mim_jax.utils import tree_paths


def scaled_lr(base_lr: float, global_batch: int) -> float:
  return base_lr * global_batch / 256


def warmup_cosine(peak_lr: float, total_steps: int, warmup_steps: int, min_lr: float = 0.0) -> optax.Schedule:
  if total_steps < 1:
    raise ValueError(f'total_steps must be >= 1, got {total_steps}.')
  if warmup_steps >= total_steps:
    # A run shorter than its warmup (a smoke test of a recipe with --config.total_steps=N): it warms up to
    # ``peak_lr`` over all of its steps. (optax's cosine would be left with no decay steps and refuse.)
    return optax.linear_schedule(0.0, peak_lr, total_steps)
  return optax.warmup_cosine_decay_schedule(init_value=0.0, peak_value=peak_lr, warmup_steps=warmup_steps,
                                            decay_steps=total_steps, end_value=min_lr)


def warmup_multistep(peak_lr: float, total_steps: int, warmup_steps: int, milestones: Sequence[int],
                     gamma: float = 0.1) -> optax.Schedule:
  """Linear warmup from 0, then ``peak_lr`` multiplied by ``gamma`` at each milestone step (SimMIM's
  'multistep': x0.1 at epoch 700 of 800)."""
  if total_steps < 1:
    raise ValueError(f'total_steps must be >= 1, got {total_steps}.')
  warmup_steps = min(warmup_steps, total_steps)
  if any(m <= warmup_steps or m > total_steps for m in milestones):
    raise ValueError(f'lr milestones {list(milestones)} must lie after the warmup ({warmup_steps} steps) and '
                     f'within the run ({total_steps} steps); set optimizer.milestones as fractions in (0, 1].')
  warm = optax.linear_schedule(0.0, peak_lr, warmup_steps)
  steps = optax.piecewise_constant_schedule(peak_lr, {int(m) - warmup_steps: gamma for m in milestones})
  return optax.join_schedules([warm, steps], [warmup_steps])


def make_schedule(cfg: ml_collections.ConfigDict, peak_lr: float, total_steps: int,
                  warmup_steps: int) -> optax.Schedule:
  """``optimizer.schedule``: 'cosine' (default, MAE) or 'multistep' (``milestones`` as fractions of the run,
  ``gamma``)."""
  name = cfg.get('schedule', 'cosine')
  if name == 'cosine':
    return warmup_cosine(peak_lr, total_steps, warmup_steps, cfg.get('min_lr', 0.0))
  if name == 'multistep':
    milestones = [int(round(f * total_steps)) for f in cfg.get('milestones', ())]
    return warmup_multistep(peak_lr, total_steps, warmup_steps, milestones, cfg.get('gamma', 0.1))
  raise ValueError(f"optimizer.schedule must be 'cosine' or 'multistep', got {name!r}.")


def weight_decay_mask(params, no_decay_names: Sequence[str] = ()) -> Any:
  """True where the reference applies weight decay: more than one dimension, not a bias, and no name on the
  path in ``no_decay_names`` (fine-tuning's ``cls_token`` / ``pos_embed``). Logically partitioned (boxed) leaves
  work too."""

  def decayed(path, p):
    names = [tree_paths.key_name(k) for k in path]
    named = [n for n in names if n != 'value']  # a logical-partitioning box adds a 'value' step
    return p.ndim > 1 and named[-1] != 'bias' and not any(n in no_decay_names for n in named)

  return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(cfg: ml_collections.ConfigDict, schedule: optax.Schedule, *,
                   no_decay_names: Sequence[str] = (), lr_multipliers: Optional[Any] = None,
                   total_steps: int | None = None) -> optax.GradientTransformation:
  """AdamW, SGD or LAMB (``cfg.name``) with the reference's decay mask, optional clipping (``grad_clip_norm``) and
  optional per-parameter lr multipliers (a pytree like params; layer-wise lr decay). ``total_steps``: the run's
  length, for a weight decay that follows a schedule (``weight_decay_end``, LAMB)."""
  name = cfg.get('name', 'adamw')
  mask = functools.partial(weight_decay_mask, no_decay_names=tuple(no_decay_names))
  if name == 'lamb':
    tx = lamb(schedule, weight_decay_schedule(cfg, total_steps), mask, b1=cfg.get('b1', 0.9),
              b2=cfg.get('b2', 0.999), eps=cfg.get('eps', 1e-6))
  elif name == 'adamw':
    tx = optax.adamw(schedule, b1=cfg.get('b1', 0.9), b2=cfg.get('b2', 0.95), eps=cfg.get('eps', 1e-8),
                     weight_decay=cfg.get('weight_decay', 0.05), mask=mask)
  elif name == 'sgd':
    tx = optax.chain(optax.add_decayed_weights(cfg.get('weight_decay', 0.0), mask=mask),
                     optax.sgd(schedule, momentum=cfg.get('momentum', 0.9)))
  else:
    raise ValueError(f"optimizer.name must be 'adamw', 'sgd' or 'lamb', got {name!r}.")
  parts: list[optax.GradientTransformation] = []
  clip = cfg.get('grad_clip_norm', None)
  if clip:
    parts.append(optax.clip_by_global_norm(clip))
  parts.append(tx)
  if lr_multipliers is not None:
    parts.append(scale_by_tree(lr_multipliers))
  return optax.chain(*parts) if len(parts) > 1 else tx


def weight_decay_schedule(cfg: ml_collections.ConfigDict, total_steps: int | None) -> optax.Schedule:
  """``weight_decay`` constant, or (``weight_decay_end`` set) a half cosine from it to ``weight_decay_end`` over
  the run (SparK's ``lr_wd_annealing``: 0.04 -> 0.2)."""
  start, end = float(cfg.get('weight_decay', 0.0)), cfg.get('weight_decay_end', None)
  if end is None or float(end) == start:
    return optax.constant_schedule(start)
  if not total_steps:
    raise ValueError('optimizer.weight_decay_end needs the run length (total_steps) to schedule the decay.')
  last = max(int(total_steps) - 1, 1)
  return lambda step: end + (start - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(step, last) / last))


class ScheduledDecayState(NamedTuple):
  count: jax.Array


def add_scheduled_decayed_weights(schedule: optax.Schedule, mask) -> optax.GradientTransformation:
  """``updates + schedule(step) * params`` where ``mask`` is True (optax's ``add_decayed_weights`` with a rate that
  follows a schedule)."""

  def init_fn(params):
    del params
    return ScheduledDecayState(jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    rate = schedule(state.count)
    decay = mask(params) if callable(mask) else mask
    updates = jax.tree.map(lambda u, p, d: u + rate * p if d else u, updates, params, decay)
    return updates, ScheduledDecayState(optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


def lamb(learning_rate: optax.Schedule, weight_decay: optax.Schedule, mask, *, b1: float = 0.9,
         b2: float = 0.999, eps: float = 1e-6) -> optax.GradientTransformation:
  """LAMB as timm's ``Lamb`` (SparK's optimizer): Adam's bias-corrected direction plus decoupled weight decay, scaled
  by the trust ratio ``|param| / |direction|`` (1 where either norm is 0) on the decayed parameters only (timm
  adapts only groups with weight decay), times the learning rate. Clip with ``grad_clip_norm`` (timm's
  ``max_grad_norm``)."""
  return optax.chain(
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
      add_scheduled_decayed_weights(weight_decay, mask),
      optax.masked(optax.scale_by_trust_ratio(), mask),
      optax.scale_by_learning_rate(learning_rate),
  )


def scale_by_tree(multipliers) -> optax.GradientTransformation:
  """Multiplies each update leaf by its multiplier: chained last, that is a per-parameter learning rate
  (decoupled weight decay included); a multiplier of 0 freezes the parameter."""

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u * m, updates, multipliers), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


# ----------------------------------------------------------------------------------------------------------
# Layer-wise learning-rate decay (BEiT / MAE fine-tuning)


def layer_decay_multipliers(params, layer_id: Callable[[list[str]], int], num_layers: int, decay: float,
                            encoder_key: str = 'encoder'):
  """A pytree like ``params`` of lr multipliers ``decay ** (num_layers - layer_id)``.

  Parameters under ``params[encoder_key]`` get ``layer_id(names inside the encoder)`` (the method's layer ids:
  0 for the embeddings, ``i + 1`` for block ``i``, ``num_layers`` after the last block); everything else (the
  classifier's norm and head) gets ``num_layers``, i.e. the full rate. Boxed (logically partitioned) params work.
  """

  def multiplier(path, _):
    names = [n for n in (tree_paths.key_name(k) for k in path) if n != 'value']
    lid = layer_id(names[1:]) if names and names[0] == encoder_key else num_layers
    return float(decay ** (num_layers - lid))

  return jax.tree_util.tree_map_with_path(multiplier, params)


# ----------------------------------------------------------------------------------------------------------
# LARS (the linear probe's optimizer)
#
# Per parameter tensor ``p`` with gradient ``g``, every step: if ``p.ndim > 1`` (weights; never biases or
# normalization parameters when ``exclude_1d``): ``g <- g + weight_decay * p``, then ``g <- q * g`` with the trust
# ratio ``q = trust_coefficient * ||p|| / ||g||`` when both norms are positive, else ``q = 1``; then
# ``mu <- momentum * mu + g`` and the update is ``-lr(step) * mu``. The learning rate multiplies the momentum buffer,
# i.e. it is applied *after* momentum. ``optax.lars`` applies it before momentum, which differs whenever the
# learning rate changes (warmup, cosine): with this ordering a change of lr rescales the whole accumulated velocity
# at once, exactly like ``torch.optim``. The step counter starts at 0, so ``learning_rate(0)`` is the lr of the
# first update.

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
