"""On 8 fake CPU devices: the FSDP-sharded step equals the data-parallel step, and each device holds about
1/8 of the parameters and optimizer state (from the compiled step's memory_analysis())."""

import pytest

from conftest import run_python

CODE = r'''
import sys; sys.path.insert(0, 'tests')
import jax, jax.numpy as jnp, numpy as np
from conftest import load_config
from mim_jax import methods
from mim_jax.data import pipeline
from mim_jax.train import aot, loop, sharding as shd, state as sl

assert jax.device_count() == 8, jax.devices()
config = load_config('configs/mae/digits.py', 'tiny')
info = pipeline.dataset_info(config.data)
job = loop.pretrain_job(config, '', info)
method, tx, schedule = job.objective, job.tx, job.schedule
init_fn = sl.make_init_fn(method, tx, method.example_batch(2))
it = pipeline.train_iterator(config.data, config.batch_size, seed=0)
batches = [next(it) for _ in range(3)]

def run(data, fsdp):
  mesh = shd.make_mesh(data, fsdp)
  abstract, shardings = aot.abstract_train_state(init_fn, np.asarray(jax.random.PRNGKey(0)), mesh, shd.DEFAULT_RULES)
  step = sl.jit_train_step(sl.make_train_step(method, tx, schedule), shardings, mesh, shd.DEFAULT_RULES)
  spec = aot.batch_spec(info.image_shape, config.batch_size, mesh)
  compiled, report = aot.compile_train_step(step, abstract, spec, aot.rng_spec(mesh), mesh)
  state, _ = sl.create_sharded_state(init_fn, jax.random.PRNGKey(0), mesh, shd.DEFAULT_RULES)
  rng = jax.device_put(jax.random.PRNGKey(1), shd.replicated(mesh))
  for b in batches:
    state, metrics = compiled(state, shd.global_batch(b, mesh), rng)
  return state, metrics, report, compiled.as_text()

dp, m_dp, r_dp, _ = run(8, 1)
fs, m_fs, r_fs, hlo = run(1, 8)

qkv = fs.params['encoder']['blocks_0']['attn']['qkv']['kernel']
assert tuple(qkv.sharding.spec) == ('fsdp', None), qkv.sharding.spec
assert qkv.addressable_shards[0].data.shape == (qkv.shape[0] // 8, qkv.shape[1])
mu = fs.opt_state[0].mu['encoder']['blocks_0']['attn']['qkv']['kernel']
assert mu.sharding == qkv.sharding  # Adam moments are sharded like their parameters
assert 'all-gather' in hlo  # weights are gathered per layer, not kept whole on every device

diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(jax.device_get(dp.params)),
                                                         jax.tree.leaves(jax.device_get(fs.params))))
loss_diff = abs(float(m_dp['train/loss']) - float(m_fs['train/loss']))
state_dp = r_dp.argument_bytes - r_dp.batch_bytes  # memory_analysis(): arguments minus the batch
state_fs = r_fs.argument_bytes - r_fs.batch_bytes
print(f'max param diff {diff:.3g} loss diff {loss_diff:.3g}')
print(f'per-device state bytes: dp {state_dp} fsdp {state_fs} ratio {state_dp / state_fs:.2f}; '
      f'params+opt from shardings: dp {r_dp.params_bytes + r_dp.opt_state_bytes} '
      f'fsdp {r_fs.params_bytes + r_fs.opt_state_bytes}; temp dp {r_dp.temp_bytes} fsdp {r_fs.temp_bytes}')
assert diff < 1e-6 and loss_diff < 1e-6, (diff, loss_diff)
# Only the biases of 'heads'/'mlp' outputs stay replicated: the state shrinks by nearly the fsdp size.
assert state_dp / state_fs > 6.0, (state_dp, state_fs)
assert r_dp.params_bytes / r_fs.params_bytes > 6.0
'''


@pytest.mark.slow
def test_fsdp_step_equals_data_parallel_step_and_shards_the_state():
  out = run_python(CODE, devices=8)
  assert 'max param diff' in out and 'ratio' in out
  print(out)
