"""Precision policy: float16 compute with dynamic loss scaling (mim_jax.train.state.DynamicLossScale), float32
params, and float32 steps untouched by it."""

import json

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from conftest import load_config
from mim_jax import config as config_lib
from mim_jax.data import pipeline
from mim_jax.data.batch import Field
from mim_jax.methods import Objective
from mim_jax.train import checkpoint as ckpt_lib
from mim_jax.train import loop
from mim_jax.train import state as state_lib

IMAGE_SHAPE = (16, 16, 1)  # configs/mae/digits.py:tiny
GROWTH_INTERVAL = 2


class _Run:
  """A tiny MAE's initial state and its jitted step for one compute dtype (synthetic data: no pipeline)."""

  def __init__(self, compute_dtype: str):
    config = load_config('configs/mae/digits.py', 'tiny')
    config.compute_dtype = compute_dtype
    config.loss_scale.growth_interval = GROWTH_INTERVAL
    info = pipeline.DatasetInfo(image_shape=IMAGE_SHAPE, num_train=1000, num_eval=0, num_classes=None,
                                mean=(0.0,), std=(1.0,))
    job = loop.pretrain_job(config, '', info)
    self.method, self.tx, self.schedule = job.objective, job.tx, job.schedule
    init_fn = state_lib.make_init_fn(self.method, self.tx, self.method.example_batch(2))
    self.state = nn.meta.unbox(jax.jit(init_fn)(jax.random.PRNGKey(0)))
    self.step = jax.jit(state_lib.make_train_step(self.method, self.tx, self.schedule))


def _batches(n: int):
  rng = np.random.default_rng(0)
  return [{'image': jnp.asarray(rng.normal(size=(16, *IMAGE_SHAPE)), jnp.float32),
           'label': jnp.zeros((16,), jnp.int32)} for _ in range(n)]


BASE_RNG = jax.random.PRNGKey(1)


@pytest.fixture(scope='module')
def fp16():
  return _Run('float16')


@pytest.fixture(scope='module')
def fp32():
  return _Run('float32')


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _assert_same(a, b):
  for x, y in zip(_leaves(a), _leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def test_loss_scaling_only_for_float16():
  config = config_lib.base_config()
  for dtype in ('float32', 'bfloat16'):
    config.compute_dtype = dtype
    assert state_lib.loss_scaling_from_config(config) is None
  config.compute_dtype = 'float16'
  assert state_lib.loss_scaling_from_config(config) == state_lib.DynamicLossScale(2.0**15, 2000, 1.0, 2.0**24)
  config.loss_scale.growth_interval = 0
  with pytest.raises(ValueError, match='config.loss_scale.growth_interval must be >= 1'):
    state_lib.loss_scaling_from_config(config)


def test_float16_trains_close_to_float32_with_float32_params(fp16, fp32):
  s16, s32 = fp16.state, fp32.state
  _assert_same(s16.params, s32.params)  # same init: the compute dtype does not change the parameters
  assert float(s16.loss_scale) == 2.0**15 and float(s32.loss_scale) == 1.0
  rows16, rows32 = [], []
  for batch in _batches(3):
    s16, m16 = fp16.step(s16, batch, BASE_RNG)
    s32, m32 = fp32.step(s32, batch, BASE_RNG)
    rows16.append(jax.device_get(m16))
    rows32.append(jax.device_get(m32))
  for r16, r32 in zip(rows16, rows32):
    assert np.isfinite(r16['train/loss']) and np.isfinite(r16['train/grad_norm'])
    assert abs(r16['train/loss'] - r32['train/loss']) <= 5e-2 * abs(r32['train/loss'])
    # The grads come back unscaled: Adam alone would hide a missing division by the scale.
    assert abs(r16['train/grad_norm'] - r32['train/grad_norm']) <= 5e-2 * r32['train/grad_norm']
  assert int(s16.overflow_steps) == 0 and int(s16.nonfinite_steps) == 0
  assert all(x.dtype == np.float32 for x in _leaves(s16.params))
  assert all(x.dtype == np.float32 for x in _leaves(s16.opt_state) if x.dtype.kind == 'f')
  moved = [np.max(np.abs(a - b)) for a, b in zip(_leaves(s16.params), _leaves(fp16.state.params))]
  assert max(moved) > 0  # the updates were applied (the first step has lr 0 in warmup, the others do not)
  p16, p32 = _leaves(s16.params), _leaves(s32.params)
  assert max(float(np.max(np.abs(a - b))) for a, b in zip(p16, p32)) < 1e-3


def test_overflow_skips_the_update_and_halves_the_scale(fp16):
  state = fp16.state.replace(loss_scale=jnp.float32(2.0**60), good_steps=jnp.int32(1))
  new, metrics = fp16.step(state, _batches(1)[0], BASE_RNG)
  metrics = jax.device_get(metrics)
  assert not np.isfinite(metrics['train/grad_norm'])  # 2**60 x the loss's gradient overflows float16
  assert np.isfinite(metrics['train/loss'])
  _assert_same(new.params, state.params)
  _assert_same(new.opt_state, state.opt_state)
  assert float(new.loss_scale) == 2.0**59 and metrics['train/loss_scale'] == 2.0**59
  assert int(new.good_steps) == 0 and int(new.step) == 1
  assert int(new.overflow_steps) == 1 and metrics['train/overflow_steps'] == 1
  assert int(new.nonfinite_steps) == 0 and metrics['train/nonfinite_steps'] == 0  # not a failure


def test_scale_doubles_after_growth_interval_finite_steps(fp16):
  state = fp16.state
  seen = []
  for batch in _batches(2 * GROWTH_INTERVAL + 1):
    state, _ = fp16.step(state, batch, BASE_RNG)
    seen.append((float(state.loss_scale), int(state.good_steps)))
  assert seen == [(2.0**15, 1), (2.0**16, 0), (2.0**16, 1), (2.0**17, 0), (2.0**17, 1)]
  assert int(state.overflow_steps) == 0


def test_float32_step_is_the_plain_unscaled_step(fp32):
  """The float32 step equals value_and_grad + optax written out here: no scale is applied or tracked."""
  method, tx = fp32.method, fp32.tx

  @jax.jit
  def reference(state, batch):
    rng = jax.random.fold_in(BASE_RNG, state.step)
    (loss, _), grads = jax.value_and_grad(method.loss_fn, has_aux=True)(state.params, state.extras, batch, rng,
                                                                        state.step)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return loss, optax.tree.norm(grads), optax.apply_updates(state.params, updates), opt_state

  state = fp32.state
  for batch in _batches(2):
    loss, grad_norm, params, opt_state = reference(state, batch)
    state, metrics = fp32.step(state, batch, BASE_RNG)
    # Two separately compiled programs: XLA may fuse them differently, so equal up to float32 rounding.
    np.testing.assert_allclose(float(metrics['train/loss']), float(loss), rtol=1e-6)
    np.testing.assert_allclose(float(metrics['train/grad_norm']), float(grad_norm), rtol=1e-6)
    for a, b in zip(_leaves((state.params, state.opt_state)), _leaves((params, opt_state)), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12)
  assert 'train/loss_scale' not in metrics and 'train/overflow_steps' not in metrics
  assert float(state.loss_scale) == 1.0 and int(state.good_steps) == 0 and int(state.overflow_steps) == 0


def test_float32_nonfinite_batch_skips_the_update(fp32):
  """A NaN in the batch makes loss and gradients non-finite: the step keeps parameters and optimizer state
  (the update runs under a ``lax.cond``), counts the failure, and the next finite batch trains normally."""
  state = fp32.state
  bad = _batches(1)[0]
  bad = {**bad, 'image': bad['image'].at[0, 0, 0, 0].set(jnp.nan)}
  new, metrics = fp32.step(state, bad, BASE_RNG)
  assert not np.isfinite(float(metrics['train/loss']))
  _assert_same(new.params, state.params)
  _assert_same(new.opt_state, state.opt_state)
  assert int(new.nonfinite_steps) == 1 and int(metrics['train/nonfinite_steps']) == 1 and int(new.step) == 1
  after, metrics = fp32.step(new, _batches(2)[1], BASE_RNG)
  assert np.isfinite(float(metrics['train/loss'])) and int(after.nonfinite_steps) == 1
  assert any(np.any(a != b) for a, b in zip(_leaves(after.opt_state), _leaves(new.opt_state)))


class _ToyFloat16Method(Objective):
  """loss = sum(float16(w * k) * c): the backward pass casts c x scale to float16, so c = 1e5 overflows float16
  even at scale 1 while the float32 loss stays finite; a NaN in ``k`` makes the loss itself non-finite."""

  config = ml_collections.ConfigDict(dict(compute_dtype='float16', loss_scale=dict(initial=2.0, growth_interval=9)))

  def batch_fields(self, train=True):
    return {'k': Field((3,)), 'c': Field(())}

  def init(self, rng, batch):
    return {'w': jnp.full((3,), 1e-4, jnp.float32)}, {}

  def loss_fn(self, params, extras, batch, rng, step):
    y = (params['w'].astype(jnp.float16) * batch['k'].astype(jnp.float16)).astype(jnp.float32)
    loss = jnp.sum(y * batch['c'])
    return loss, ({'loss': loss}, extras)


def _toy():
  method, tx = _ToyFloat16Method(), optax.sgd(0.1)
  state = jax.jit(state_lib.make_init_fn(method, tx, None))(jax.random.PRNGKey(0))
  return state, jax.jit(state_lib.make_train_step(method, tx, lambda s: 0.1))


def test_scale_growth_stops_at_the_maximum():
  state, step = _toy()
  interval = _ToyFloat16Method.config.loss_scale.growth_interval
  tiny_grads = {'k': jnp.float32(1.0), 'c': jnp.float32(1e-6)}  # finite in float16 even at scale 2**24
  below, _ = step(state.replace(loss_scale=jnp.float32(2.0**23), good_steps=jnp.int32(interval - 1)), tiny_grads,
                  BASE_RNG)
  assert (float(below.loss_scale), int(below.good_steps)) == (2.0**24, 0)
  at_cap, _ = step(below.replace(good_steps=jnp.int32(interval - 1)), tiny_grads, BASE_RNG)
  assert (float(at_cap.loss_scale), int(at_cap.good_steps), int(at_cap.overflow_steps)) == (2.0**24, 0, 0)


def test_non_finite_loss_and_overflow_at_minimum_scale_are_failures():
  state, step = _toy()
  ok = {'k': jnp.float32(1.0), 'c': jnp.float32(1.0)}
  overflowing = {'k': jnp.float32(1.0), 'c': jnp.float32(1e5)}
  nan_loss = {'k': jnp.float32(np.nan), 'c': jnp.float32(1.0)}

  applied, _ = step(state, ok, BASE_RNG)
  assert int(applied.good_steps) == 1 and not np.array_equal(_leaves(applied.params)[0], _leaves(state.params)[0])
  at_two, _ = step(state, overflowing, BASE_RNG)  # scale 2 -> 1: an overflow
  assert (float(at_two.loss_scale), int(at_two.overflow_steps), int(at_two.nonfinite_steps)) == (1.0, 1, 0)
  at_one, _ = step(at_two, overflowing, BASE_RNG)  # at the floor scaling cannot be the cause: a failure
  assert (float(at_one.loss_scale), int(at_one.overflow_steps), int(at_one.nonfinite_steps)) == (1.0, 1, 1)
  nan, _ = step(state, nan_loss, BASE_RNG)
  assert (int(nan.overflow_steps), int(nan.nonfinite_steps)) == (0, 1)
  for skipped in (at_two, at_one, nan):
    _assert_same(skipped.params, state.params)


def test_float16_overflows_do_not_stop_the_run_and_the_scale_is_checkpointed(tmp_path):
  config = load_config('configs/mae/digits.py', 'tiny')
  config.eval.enabled = False
  config.compute_dtype = 'float16'
  config.loss_scale.initial = 2.0**40  # overflows float16 on every step of this run
  config.nonfinite = 'stop'
  config.stop_after_steps = 2
  result = loop.train(config, str(tmp_path))
  state = result.state
  assert int(state.step) == 2 and int(state.nonfinite_steps) == 0 and int(state.overflow_steps) == 2
  assert float(state.loss_scale) == 2.0**38
  rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  assert [(r['train/loss_scale'], r['train/overflow_steps'], r['train/nonfinite_steps']) for r in rows] == \
      [(2.0**39, 1, 0), (2.0**38, 2, 0)]
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / 'checkpoints'), every_steps=1)
  try:
    shardings = jax.tree.map(lambda x: x.sharding, state)
    restored = checkpointer.restore(2, ckpt_lib.abstract_like(state, shardings))
  finally:
    checkpointer.close()
  _assert_same(restored, state)  # loss_scale, good_steps and overflow_steps included: resume is exact


@flax.struct.dataclass
class _StateBeforeLossScaling:
  step: jax.Array
  params: dict
  opt_state: tuple
  extras: dict
  nonfinite_steps: jax.Array


def test_checkpoints_from_before_loss_scaling_still_restore(tmp_path):
  params = {'w': jnp.arange(4.0)}
  old = _StateBeforeLossScaling(step=jnp.int32(7), params=params, opt_state=(), extras={},
                                nonfinite_steps=jnp.int32(0))
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), every_steps=1, async_save=False)
  try:
    checkpointer.save(7, old)
    checkpointer.wait()
    current = state_lib.TrainState(step=old.step, params=params, opt_state=(), extras={},
                                   nonfinite_steps=old.nonfinite_steps)
    abstract = ckpt_lib.abstract_like(current, jax.tree.map(lambda x: x.sharding, current))
    restored = checkpointer.restore(7, abstract)
    assert int(restored.step) == 7 and float(restored.loss_scale) == 1.0 and int(restored.good_steps) == 0
    np.testing.assert_array_equal(np.asarray(restored.params['w']), np.arange(4.0))
    # Only the defaulted fields may be missing: a checkpoint lacking anything else is still an error.
    bigger = current.replace(params={**params, 'b': jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"lacks .*'b'"):
      checkpointer.restore(7, ckpt_lib.abstract_like(bigger, jax.tree.map(lambda x: x.sharding, bigger)))
  finally:
    checkpointer.close()
