"""The performance switches change speed, not results (issue #8): attention implementations, the bfloat16
policy, rematerialization policies, the cotangent barrier and the CPU compiler options; and a train step with
a device-resident batch makes no host<->device transfer."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, load_config
from mim_jax import methods, perf
from mim_jax.data import pipeline
from mim_jax.models.vit import REMAT_POLICIES, ViTEncoder, materialize_cotangent, remat_policy_name
from mim_jax.train import loop
from mim_jax.train import sharding as shd
from mim_jax.train import state as state_lib


def _config(**overrides):
  config = load_config('configs/mae/digits.py')  # the quickstart model: patch 4, width 128, depth 4, 4 heads
  config.batch_size = 32
  config.eval.enabled = False
  for key, value in overrides.items():
    config[key] = value
  return config


def _batches(config, n):
  iterator = pipeline.train_iterator(config.data, config.batch_size, seed=0)
  return [next(iterator) for _ in range(n)]


def _jitted_step(config):
  """(initial state, jitted step, mesh) of the library's train step on one device, from the seed-0 init."""
  info = pipeline.dataset_info(config.data)
  job = loop.pretrain_job(config, '', info)
  method, tx, schedule = job.objective, job.tx, job.schedule
  mesh = shd.make_mesh(1, 1, devices=jax.devices()[:1])
  init_fn = state_lib.make_init_fn(method, tx, method.example_batch(2))
  state, shardings = state_lib.create_sharded_state(init_fn, jax.random.PRNGKey(0), mesh, shd.DEFAULT_RULES)
  step = state_lib.jit_train_step(state_lib.make_train_step(method, tx, schedule), shardings, mesh,
                                  shd.DEFAULT_RULES)
  return state, step, mesh


def _train(config, batches):
  """Losses and final state of ``len(batches)`` jitted train steps from the seed-0 init."""
  state, step, mesh = _jitted_step(config)
  losses = []
  for batch in batches:
    state, metrics = step(state, shd.global_batch(batch, mesh), jax.random.PRNGKey(1))
    losses.append(float(metrics['train/loss']))
  return np.array(losses), state


def test_xla_attention_equals_einsum_in_float32():
  images = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 3))
  make = lambda impl: ViTEncoder(patch_size=4, width=64, depth=2, num_heads=4, attention_impl=impl)
  params = make('einsum').init(jax.random.PRNGKey(1), images)
  target = jax.random.normal(jax.random.PRNGKey(2), (4, 17, 64))

  def loss(params, impl):
    return jnp.sum(make(impl).apply(params, images)['tokens'] * target)

  out_e, out_x = (make(impl).apply(params, images)['tokens'] for impl in ('einsum', 'xla'))
  np.testing.assert_allclose(out_x, out_e, atol=1e-5, rtol=0)
  grads_e, grads_x = jax.grad(loss)(params, 'einsum'), jax.grad(loss)(params, 'xla')
  for ge, gx in zip(jax.tree.leaves(grads_e), jax.tree.leaves(grads_x)):  # summed over the batch: relative
    assert float(jnp.max(jnp.abs(gx - ge))) <= 1e-4 * float(jnp.max(jnp.abs(ge))), (gx, ge)


@pytest.mark.slow  # kept out of the default run for its time (the default suite stays near 15 min)
def test_bfloat16_policy_tracks_float32_for_a_few_steps():
  batches = _batches(_config(), 4)
  loss32, state32 = _train(_config(), batches)
  loss16, state16 = _train(_config(compute_dtype='bfloat16'), batches)
  assert np.all(np.isfinite(loss16)), loss16
  np.testing.assert_allclose(loss16, loss32, rtol=1e-2)
  assert not np.allclose(loss16, loss32, rtol=1e-7, atol=0)  # the policy really ran in bfloat16
  # Parameters and optimizer state stay float32 (only the compute is bfloat16).
  assert {leaf.dtype for leaf in jax.tree.leaves(state16.params)} == {jnp.dtype(jnp.float32)}
  assert all(leaf.dtype != jnp.bfloat16 for leaf in jax.tree.leaves(state16.opt_state))
  assert not np.any([np.any(~np.isfinite(leaf)) for leaf in jax.tree.leaves(jax.device_get(state16.params))])


@pytest.mark.parametrize('policy', sorted(REMAT_POLICIES))
def test_remat_policies_give_the_same_loss_and_gradients(policy):
  config = _config()
  info = pipeline.dataset_info(config.data)
  batch = {'image': jnp.asarray(_batches(config, 1)[0]['image'], jnp.float32)}

  def loss_and_grads(remat):
    method = methods.build(_config(remat=remat), methods.Facts(info))
    params, extras = method.init(jax.random.PRNGKey(0), {'image': batch['image'][:2]})
    fn = jax.jit(jax.value_and_grad(lambda p: method.loss_fn(p, extras, batch, jax.random.PRNGKey(3), 0)[0]))
    return fn(params)

  (loss_ref, grads_ref), (loss, grads) = loss_and_grads('none'), loss_and_grads(policy)
  np.testing.assert_allclose(loss, loss_ref, rtol=1e-6)
  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
    np.testing.assert_allclose(g, r, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize('overrides', [{}, {'remat': 'full'}, {'attention_impl': 'einsum'}, {'attention_impl': 'xla'}])
def test_mae_train_loss_on_masked_queries_equals_the_full_forward(overrides):
  """The train loss skips the last decoder block's work on visible tokens; loss and gradients must be those
  of the reference-shaped forward (every token through every block, masked mean)."""
  config = _config(**overrides)
  info = pipeline.dataset_info(config.data)
  images = jnp.asarray(_batches(config, 1)[0]['image'][:8], jnp.float32)
  method = methods.build(config, methods.Facts(info))
  params, _ = method.init(jax.random.PRNGKey(0), {'image': images[:2]})
  mask = method.masker(jax.random.PRNGKey(3), images.shape[0])
  assert mask.ids_masked.shape == (images.shape[0], mask.mask.shape[1] - mask.len_keep)
  np.testing.assert_array_equal(  # ids_masked names exactly the masked tokens
      np.take_along_axis(np.asarray(mask.mask), np.asarray(mask.ids_masked), axis=1), 1.0)

  full = jax.jit(jax.value_and_grad(lambda p: method.forward(p, images, mask)['loss']))
  fast = jax.jit(jax.value_and_grad(lambda p: method.masked_loss(p, images, mask)))
  (loss_ref, grads_ref), (loss, grads) = full(params), fast(params)
  np.testing.assert_allclose(loss, loss_ref, rtol=1e-6)
  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
    np.testing.assert_allclose(g, r, atol=1e-7, rtol=1e-4)
  # and the fast path is what training runs
  train_loss = jax.jit(lambda p: method.loss_fn(p, {}, {'image': images}, jax.random.PRNGKey(3), 0)[0])
  assert float(train_loss(params)) == pytest.approx(float(loss), rel=1e-6)


def test_remat_config_values():
  assert remat_policy_name(False) == remat_policy_name('none') == remat_policy_name('False') == 'none'
  assert remat_policy_name(True) == remat_policy_name('true') == 'full'
  assert remat_policy_name('dots') == 'dots'
  with pytest.raises(ValueError, match="remat='everything' is not a rematerialization policy"):
    remat_policy_name('everything')
  from mim_jax import config as config_lib
  bad = _config(remat='everything')
  with pytest.raises(ValueError, match=r'config\.remat='):
    config_lib.validate(bad)


def test_materialize_cotangent_is_an_identity_with_an_identity_gradient():
  x = jnp.arange(6.0).reshape(2, 3)
  np.testing.assert_array_equal(materialize_cotangent(x), x)
  np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(materialize_cotangent(x) ** 2))(x), 2 * x)


def test_cpu_compiler_option_keeps_the_barrier_that_other_platforms_keep_anyway():
  """Without the option XLA:CPU deletes optimization barriers before fusion (docs/performance.md)."""
  assert perf.compiler_options('gpu') is None and perf.compiler_options('tpu') is None

  def f(x):
    return jnp.sum(jnp.sin(materialize_cotangent(x * 2.0)) ** 2)

  x = jnp.ones((8, 8))
  lowered = jax.jit(jax.grad(f)).lower(x)
  kept = lowered.compile(perf.compiler_options('cpu')).as_text()
  dropped = lowered.compile().as_text()
  assert 'opt-barrier' in kept
  assert 'opt-barrier' not in dropped


def _python(code, **env):
  import os
  out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, **env})
  assert out.returncode == 0, out.stderr[-2000:]
  return out.stdout.split()


def test_host_allocator_tuning_only_before_jax_starts():
  before = 'from mim_jax import perf; print(perf.tune_host_allocator(), perf.tune_host_allocator())'
  after = 'import jax; jax.devices(); from mim_jax import perf; print(perf.tune_host_allocator())'
  on_linux = sys.platform.startswith('linux')
  assert _python(before) == [str(on_linux)] * 2  # applied once, then reported as applied
  assert _python(after) == ['False']  # jax's threads already run: refused rather than half-applied
  assert _python(before, MIM_JAX_HOST_MALLOC='0') == ['False', 'False']


def test_train_step_makes_no_host_device_transfer():
  config = _config()
  config.batch_size = 8
  state, step, mesh = _jitted_step(config)
  batches = [shd.global_batch(b, mesh) for b in _batches(config, 3)]
  rng = jax.device_put(jax.random.PRNGKey(1), shd.replicated(mesh))
  state, _ = step(state, batches[0], rng)  # compile outside the guard
  with jax.transfer_guard('disallow'):
    for batch in batches[1:]:
      state, metrics = step(state, batch, rng)
    with pytest.raises(Exception, match='Disallowed host-to-device'):  # the guard is live: a host batch is refused
      step(state, {'image': np.asarray(jax.device_get(batches[0]['image']))}, rng)
  assert int(state.step) == 3


def test_train_loop_steps_make_no_implicit_transfer(tmp_path, monkeypatch):
  config = load_config('configs/mae/digits.py', 'tiny')
  config.eval.enabled = False
  config.transfer_guard = 'disallow'
  result = loop.train(config, str(tmp_path / 'run'))
  assert int(result.state.step) == config.total_steps

  # The guard is live inside the loop: a preprocessing step that sneaks a host array in is refused.
  from mim_jax.data import device as data_device
  real = data_device.preprocess
  monkeypatch.setattr(data_device, 'preprocess', lambda batch, *args: {
      **real(batch, *args), 'image': real(batch, *args)['image'] + np.zeros((1,), np.float32)})
  with pytest.raises(Exception, match='Disallowed host-to-device'):
    loop.train(config, str(tmp_path / 'canary'))


def test_padded_attention_equals_unpadded():
  # What cuDNN gets for odd sequence lengths (mim_jax.models.vit.jax_attention), checked here through XLA's
  # implementation of the same call: padding one query and one key token, masked by length, changes nothing.
  from mim_jax.models.vit import padded_attention

  kq, kk, kv, kt = jax.random.split(jax.random.PRNGKey(0), 4)
  q, k, v = (jax.random.normal(key, (2, n, 3, 8)) for key, n in ((kq, 7), (kk, 9), (kv, 9)))
  target = jax.random.normal(kt, (2, 7, 3, 8))
  plain = lambda q, k, v: jnp.sum(jax.nn.dot_product_attention(q, k, v, implementation='xla') * target)
  padded = lambda q, k, v: jnp.sum(padded_attention(q, k, v, 'xla') * target)
  assert padded_attention(q, k, v, 'xla').shape == q.shape
  np.testing.assert_allclose(padded(q, k, v), plain(q, k, v), rtol=1e-5)
  for gp, gu in zip(jax.grad(padded, (0, 1, 2))(q, k, v), jax.grad(plain, (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(gp, gu, atol=1e-5)


def test_cudnn_attention_off_gpu_is_a_clear_error():
  from mim_jax.models import vit

  vit.check_attention_impl('cudnn', 'gpu')
  for impl in ('einsum', 'xla'):
    vit.check_attention_impl(impl, 'cpu')
  with pytest.raises(ValueError, match="attention_impl='cudnn'.*needs an NVIDIA GPU.*'cpu'.*Use 'auto'"):
    vit.check_attention_impl('cudnn', 'cpu')
  vit.check_attention_impl('cpu_fused', 'cpu')
  with pytest.raises(ValueError, match="attention_impl='cpu_fused' is a CPU kernel.*'gpu'"):
    vit.check_attention_impl('cpu_fused', 'gpu')
  # cuDNN's fused attention has no float32 kernel: a clear error at trace time, not one from inside jax.
  x = jnp.zeros((1, 4, 8))
  params = vit.Attention(2).init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match="'cudnn'.*bfloat16 or float16.*float32.*compute_dtype='bfloat16'"):
    vit.Attention(2, attention_impl='cudnn').apply(params, x)
