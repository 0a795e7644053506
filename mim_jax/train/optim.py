"""Optimizer and learning-rate schedule (optax), as the MAE reference sets them up.

* lr = base_lr * global_batch / 256 (the linear scaling rule), printed at start.
* Per-step linear warmup from 0, then a half-cycle cosine to ``min_lr``.
* AdamW (b1 0.9, b2 0.95), decoupled weight decay 0.05 on every parameter with more than one dimension
  that is not a bias - exactly the reference's grouping (timm ``add_weight_decay``: 1-D params and
  ``*.bias`` are exempt; CLS/mask tokens, being 3-D, are decayed).
* Optional global-norm clipping, and per-parameter lr multipliers (layer decay / freezing) by path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable, Optional

import jax
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


def weight_decay_mask(params) -> Any:
  """True where the reference applies weight decay: ndim > 1 and not a bias."""
  return jax.tree_util.tree_map_with_path(lambda path, p: p.ndim > 1 and tree_paths.key_name(path[-1]) != 'bias',
                                          params)


def make_optimizer(cfg: ml_collections.ConfigDict, schedule: optax.Schedule,
                   lr_multipliers: Optional[Any] = None) -> optax.GradientTransformation:
  """AdamW (or SGD/LARS by ``cfg.name``) with the reference's decay mask and optional clipping.

  ``lr_multipliers``: a pytree like params of floats multiplying each update (layer-wise lr decay);
  a multiplier of 0 freezes the parameter.
  """
  name = cfg.get('name', 'adamw')
  if name == 'adamw':
    tx = optax.adamw(schedule, b1=cfg.get('b1', 0.9), b2=cfg.get('b2', 0.95), eps=cfg.get('eps', 1e-8),
                     weight_decay=cfg.get('weight_decay', 0.05), mask=weight_decay_mask)
  elif name == 'sgd':
    tx = optax.chain(optax.add_decayed_weights(cfg.get('weight_decay', 0.0), mask=weight_decay_mask),
                     optax.sgd(schedule, momentum=cfg.get('momentum', 0.9)))
  else:
    raise ValueError(f"optimizer.name must be 'adamw' or 'sgd', got {name!r}.")
  parts: list[optax.GradientTransformation] = []
  clip = cfg.get('grad_clip_norm', None)
  if clip:
    parts.append(optax.clip_by_global_norm(clip))
  parts.append(tx)
  if lr_multipliers is not None:
    parts.append(scale_by_tree(lr_multipliers))
  return optax.chain(*parts) if len(parts) > 1 else tx


def scale_by_tree(multipliers) -> optax.GradientTransformation:
  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u * m, updates, multipliers), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


Schedule = Callable[[int], float]
