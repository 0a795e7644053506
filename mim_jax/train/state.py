"""The train state (a plain pytree) and the jitted, sharded train step."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
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


def make_init_fn(method, tx: optax.GradientTransformation, example_images) -> Callable[[jax.Array], TrainState]:
  """``rng -> TrainState`` with flax logical-partitioning boxes still on the leaves (for eval_shape)."""

  def init(rng):
    params, extras = method.init(rng, example_images)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), extras=extras,
                      nonfinite_steps=jnp.zeros((), jnp.int32))

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


def make_train_step(method, tx: optax.GradientTransformation, schedule: optax.Schedule):
  """``(state, batch, base_rng) -> (state, metrics)``, pure. The step rng is ``fold_in(base_rng, step)``,
  so a resumed run draws the same masks as an uninterrupted one. A non-finite loss or gradient skips the
  update (params and optimizer state are kept) and is counted in ``state.nonfinite_steps``."""

  def train_step(state: TrainState, batch, base_rng):
    rng = jax.random.fold_in(base_rng, state.step)
    grad_fn = jax.value_and_grad(method.loss_fn, has_aux=True)
    (loss, (metrics, extras)), grads = grad_fn(state.params, state.extras, batch, rng, state.step)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = state.replace(step=state.step + 1, params=keep(params, state.params),
                              opt_state=keep(opt_state, state.opt_state), extras=keep(extras, state.extras),
                              nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32))
    metrics = {**{f'train/{k}': v for k, v in metrics.items()}, 'train/grad_norm': grad_norm,
               'train/lr': schedule(state.step), 'train/nonfinite_steps': new_state.nonfinite_steps}
    return new_state, metrics

  return train_step


def jit_train_step(train_step, state_shardings, mesh, rules):
  batch_sh = shd.batch_sharding(mesh)
  rep = shd.replicated(mesh)
  jitted = jax.jit(train_step, in_shardings=(state_shardings, batch_sh, rep),
                   out_shardings=(state_shardings, rep), donate_argnums=(0,),
                   compiler_options=perf.compiler_options(mesh.devices.flat[0].platform))

  def step(state, batch, base_rng):
    with nn.logical_axis_rules(rules), jax.set_mesh(mesh):
      return jitted(state, batch, base_rng)

  step.lower = lambda *a: _lower(jitted, rules, mesh, *a)
  return step


def _lower(jitted, rules, mesh, *args):
  with nn.logical_axis_rules(rules), jax.set_mesh(mesh):
    return jitted.lower(*args)
