"""The train state (a plain pytree) and the jitted, sharded train step.

Precision: params, optimizer state and gradients are float32; the model computes in ``config.compute_dtype``.
With float16 the step uses dynamic loss scaling (:class:`DynamicLossScale`): float16's smallest normal is 6e-5,
so without it small gradients flush to zero in the backward pass. bfloat16 has float32's range and needs none.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mim_jax import perf
from mim_jax.train import sharding as shd


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar
  params: Any
  opt_state: Any
  extras: Any  # method state that is not trained by the optimizer (EMA teachers, schedules, ...)
  nonfinite_steps: jax.Array  # int32 scalar: steps whose update was skipped for a non-finite loss/grad
  # Dynamic loss scaling (float16 only; otherwise they stay 1 / 0 / 0). Defaults keep older constructors working;
  # checkpoints written before these fields existed restore them from these defaults (train/checkpoint.py).
  loss_scale: jax.Array = flax.struct.field(default_factory=lambda: jnp.ones((), jnp.float32))
  good_steps: jax.Array = flax.struct.field(  # int32: consecutive applied updates since the scale last changed
      default_factory=lambda: jnp.zeros((), jnp.int32))
  overflow_steps: jax.Array = flax.struct.field(  # int32: updates skipped because the scaled grads overflowed
      default_factory=lambda: jnp.zeros((), jnp.int32))


@dataclasses.dataclass(frozen=True)
class DynamicLossScale:
  """Dynamic loss scaling for float16 compute.

  The loss is multiplied by ``state.loss_scale`` before differentiation, so that small gradients stay above
  float16's underflow, and the gradients are divided by it again in float32. A step whose gradients are not
  finite (the scaled backward pass overflowed) skips its update and halves the scale (down to ``minimum``);
  after ``growth_interval`` consecutive applied updates the scale doubles (growing no further than ``maximum``),
  probing for the largest scale that does not overflow.

  Such overflow skips are expected and counted in ``state.overflow_steps``, not as failures. A non-finite
  loss, or non-finite gradients at the minimum scale (where scaling cannot be the cause), count in
  ``state.nonfinite_steps`` like in float32 and stop the run under ``config.nonfinite='stop'``.
  """
  initial: float = 2.0**15
  growth_interval: int = 2000
  minimum: float = 1.0
  maximum: float = 2.0**24

  def __post_init__(self):
    if not (1.0 <= self.minimum <= self.initial and self.minimum <= self.maximum):
      raise ValueError(f'loss_scale needs 1 <= minimum <= initial and minimum <= maximum, got {self}.')
    if self.growth_interval < 1:
      raise ValueError(f'loss_scale.growth_interval must be >= 1, got {self.growth_interval}.')


def loss_scaling_from_config(config) -> Optional[DynamicLossScale]:
  """``DynamicLossScale`` from ``config.loss_scale`` when ``config.compute_dtype`` is 'float16', else None
  (float32 and bfloat16 train unscaled). Bad settings are a ValueError naming the config field."""
  if config is None or config.get('compute_dtype', 'float32') != 'float16':
    return None
  settings = config.get('loss_scale', None) or {}
  defaults = DynamicLossScale()
  try:
    return DynamicLossScale(initial=float(settings.get('initial', defaults.initial)),
                            growth_interval=int(settings.get('growth_interval', defaults.growth_interval)))
  except ValueError as e:
    raise ValueError(f'config.{e} Set config.loss_scale.initial / growth_interval accordingly.') from None


def _resolve_loss_scaling(method, loss_scaling):
  """An explicit setting, else the one of the method's own config (methods built by ``methods.build`` carry
  theirs), so that the init and the step of one method always agree."""
  return loss_scaling if loss_scaling is not None else loss_scaling_from_config(getattr(method, 'config', None))


def make_init_fn(method, tx: optax.GradientTransformation, example_batch,
                 loss_scaling: Optional[DynamicLossScale] = None) -> Callable[[jax.Array], TrainState]:
  """``rng -> TrainState`` with flax logical-partitioning boxes still on the leaves (for eval_shape).
  ``example_batch``: a batch of the method's declared fields (``method.example_batch()``). ``loss_scaling``
  defaults to the method config's (see :func:`loss_scaling_from_config`)."""
  loss_scaling = _resolve_loss_scaling(method, loss_scaling)
  initial_scale = loss_scaling.initial if loss_scaling is not None else 1.0

  def init(rng):
    params, extras = method.init(rng, example_batch)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), extras=extras,
                      nonfinite_steps=jnp.zeros((), jnp.int32), loss_scale=jnp.full((), initial_scale, jnp.float32))

  return init


def create_sharded_state(init_fn, rng, mesh, rules) -> tuple[TrainState, Any]:
  """Builds the state directly in its sharded layout (large models never exist unsharded on one device).

  Returns (state, state_shardings)."""
  abstract = jax.eval_shape(init_fn, rng)
  shardings = shd.logical_shardings(abstract, mesh, rules)
  unboxed = lambda r: nn.meta.unbox(init_fn(r))
  with nn.logical_axis_rules(rules):
    state = jax.jit(unboxed, out_shardings=shardings)(rng)
  return state, shardings


def make_train_step(method, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    loss_scaling: Optional[DynamicLossScale] = None):
  """``(state, batch, base_rng) -> (state, metrics)``, pure. The step rng is ``fold_in(base_rng, step)``,
  so a resumed run draws the same masks as an uninterrupted one. A non-finite loss or gradient skips the
  update (params, optimizer state and extras are kept) and is counted in ``state.nonfinite_steps``. After an
  applied update, ``method.after_update(new_params, extras, step)`` gives the new extras (an EMA teacher moves
  towards the updated params, without a one-step lag).

  ``loss_scaling`` defaults to the method config's: float16 compute gets :class:`DynamicLossScale` and the
  metrics ``train/loss_scale`` and ``train/overflow_steps``; float32 / bfloat16 steps do not scale at all."""
  loss_scaling = _resolve_loss_scaling(method, loss_scaling)

  def train_step(state: TrainState, batch, base_rng):
    rng = jax.random.fold_in(base_rng, state.step)
    args = (state.params, state.extras, batch, rng, state.step)
    if loss_scaling is None:
      grad_fn = jax.value_and_grad(method.loss_fn, has_aux=True)
      (loss, (metrics, extras)), grads = grad_fn(*args)
    else:
      loss, metrics, extras, grads = _scaled_value_and_grad(method.loss_fn, state.loss_scale, *args)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    params, opt_state, extras = _update_if_finite(tx, finite, grads, state, extras,
                                                  lambda p, e: method.after_update(p, e, state.step))
    failed = ~finite
    scale_fields = {}
    if loss_scaling is not None:
      overflow, scale_fields = _next_loss_scale(loss_scaling, state, jnp.isfinite(loss), finite)
      failed = failed & ~overflow
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, extras=extras,
                              nonfinite_steps=state.nonfinite_steps + failed.astype(jnp.int32), **scale_fields)
    metrics = {**{f'train/{k}': v for k, v in metrics.items()}, 'train/grad_norm': grad_norm,
               'train/lr': schedule(state.step), 'train/nonfinite_steps': new_state.nonfinite_steps}
    if loss_scaling is not None:
      metrics.update({'train/loss_scale': new_state.loss_scale, 'train/overflow_steps': new_state.overflow_steps})
    return new_state, metrics

  return train_step


def _update_if_finite(tx: optax.GradientTransformation, finite, grads, state: TrainState, new_extras,
                      after_update=lambda params, extras: extras):
  """(params, opt_state, extras) after the optimizer update and ``after_update(new params, extras)`` when
  ``finite``, else the state's own, unchanged.

  A ``lax.cond`` rather than a ``where`` over every leaf: the update is only computed when it is taken, and a
  taken update writes parameters and moments once instead of computing them and then selecting them against the
  old values (three full passes over parameters and moments: in ViT-B/16's profile the optimizer's op time went
  from 343 to 194 ms, and the step's memory from 3155 to 2745 MiB; docs/performance.md).
  """

  def apply(operands):
    params, opt_state, grads, _, extras = operands
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, after_update(params, extras)

  def skip(operands):
    params, opt_state, _, old_extras, _ = operands
    return params, opt_state, old_extras

  return jax.lax.cond(finite, apply, skip, (state.params, state.opt_state, grads, state.extras, new_extras))


def _scaled_value_and_grad(loss_fn, scale, params, *args):
  """(loss, metrics, extras, grads) of ``loss_fn`` differentiated at ``loss * scale``; the gradients come back
  divided by ``scale`` in float32 (where dividing by a power of two is exact and nothing underflows)."""

  def scaled(p):
    loss, aux = loss_fn(p, *args)
    return loss.astype(jnp.float32) * scale, (loss, aux)

  (_, (loss, (metrics, extras))), grads = jax.value_and_grad(scaled, has_aux=True)(params)
  grads = jax.tree.map(lambda g: (g.astype(jnp.float32) / scale).astype(g.dtype), grads)
  return loss, metrics, extras, grads


def _next_loss_scale(loss_scaling: DynamicLossScale, state: TrainState, loss_finite, applied):
  """(overflow, the new scale fields). ``applied``: the update was finite and taken. A skipped step halves the
  scale; ``growth_interval`` applied steps in a row double it. A skip is an overflow (expected, not a failure)
  when the loss itself was finite and the scale could still go down."""
  overflow = loss_finite & ~applied & (state.loss_scale > loss_scaling.minimum)
  streak = state.good_steps + 1
  grow = applied & (streak >= loss_scaling.growth_interval)
  # ``maximum`` caps growth only: an initial scale above it can still come down by halving.
  grown = jnp.maximum(state.loss_scale, jnp.minimum(state.loss_scale * 2, loss_scaling.maximum))
  scale = jnp.where(applied, jnp.where(grow, grown, state.loss_scale),
                    jnp.maximum(state.loss_scale / 2, loss_scaling.minimum))
  fields = {'loss_scale': scale.astype(jnp.float32),
            'good_steps': jnp.where(applied & ~grow, streak, 0).astype(jnp.int32),
            'overflow_steps': state.overflow_steps + overflow.astype(jnp.int32)}
  return overflow, fields


def jit_train_step(train_step, state_shardings, mesh, rules, compiler_options: dict | None = None):
  """The step jitted over ``mesh`` with the state donated. ``compiler_options`` are XLA options added to
  :func:`mim_jax.perf.compiler_options`' (benchmarks/ab_step.py uses them to compare XLA settings)."""
  batch_sh = shd.batch_sharding(mesh)
  rep = shd.replicated(mesh)
  options = {**(perf.compiler_options(mesh.devices.flat[0].platform) or {}), **(compiler_options or {})}
  jitted = jax.jit(train_step, in_shardings=(state_shardings, batch_sh, rep),
                   out_shardings=(state_shardings, rep), donate_argnums=(0,), compiler_options=options or None)

  def step(state, batch, base_rng):
    with nn.logical_axis_rules(rules), jax.set_mesh(mesh):
      return jitted(state, batch, base_rng)

  step.lower = lambda *a: _lower(jitted, rules, mesh, *a)
  return step


def _lower(jitted, rules, mesh, *args):
  with nn.logical_axis_rules(rules), jax.set_mesh(mesh):
    return jitted.lower(*args)


def without_external(state: TrainState, keys) -> TrainState:
  """The state as checkpoints hold it: without the extras a method loads from outside (``external_extras``)."""
  if not keys:
    return state
  return state.replace(extras={k: v for k, v in state.extras.items() if k not in keys})


def with_external(state: TrainState, values: dict, keys, abstract_extras, extras_shardings) -> TrainState:
  """``state`` with the external extras ``values`` (host trees from ``method.load_external()``, one per key of
  ``keys``, the method's ``external_extras``) checked against the shapes the method initialises
  (``abstract_extras``) and placed in their shardings."""
  if set(values) != set(keys):
    raise ValueError(f'load_external() returned {sorted(values)} but the method declares external_extras '
                     f'{sorted(keys)}.')
  placed = {}
  for key, tree in values.items():
    _check_like(tree, abstract_extras[key], f'the external {key!r}')
    placed[key] = shd.place_tree(tree, extras_shardings[key])
  return state.replace(extras={**state.extras, **placed})


def _check_like(tree, expected, what: str) -> None:
  got = jax.tree_util.tree_structure(tree)
  want = jax.tree_util.tree_structure(expected)
  if got != want:
    raise ValueError(f'{what} does not have the structure the method initialises ({got} vs {want}).')
  for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(expected)):
    if tuple(np.shape(a)) != tuple(b.shape):
      raise ValueError(f'{what} has a {tuple(np.shape(a))} array where the method initialises {tuple(b.shape)}.')

