"""One train step on a mesh of 8 fake CPU devices equals the same step on one device."""

from conftest import run_python

CODE = r'''
import jax, jax.numpy as jnp, numpy as np
from conftest import load_config
from mim_jax import methods
from mim_jax.train import loop, sharding as shd, state as sl
from mim_jax.data import pipeline

assert jax.device_count() == 8, jax.devices()
config = load_config('configs/mae/digits.py', 'tiny')
config.batch_size = 16
info = pipeline.dataset_info(config.data)
job = loop.pretrain_job(config, '', info)
method, tx, schedule = job.objective, job.tx, job.schedule
init_fn = sl.make_init_fn(method, tx, method.example_batch(2))
batches = [next(it) for it in [pipeline.train_iterator(config.data, 16, seed=0)] for _ in range(2)]

def run(mesh):
  state, shardings = sl.create_sharded_state(init_fn, jax.random.PRNGKey(0), mesh, shd.DEFAULT_RULES)
  step = sl.jit_train_step(sl.make_train_step(method, tx, schedule), shardings, mesh, shd.DEFAULT_RULES)
  for b in batches:
    state, metrics = step(state, shd.global_batch(b, mesh), jax.random.PRNGKey(1))
  return state, metrics

one, m1 = run(shd.make_mesh(1, 1, devices=jax.devices()[:1]))
eight, m8 = run(shd.make_mesh(8, 1))
leaf = jax.tree.leaves(eight.params)[0]
assert len(leaf.sharding.device_set) == 8
a = jax.tree.leaves(jax.device_get(one.params)); b = jax.tree.leaves(jax.device_get(eight.params))
err = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))
print('max param diff', err, 'loss', float(m1['train/loss']), float(m8['train/loss']))
assert err < 1e-5, err
assert abs(float(m1['train/loss']) - float(m8['train/loss'])) < 1e-5
'''


def test_eight_device_step_equals_one_device_step():
  out = run_python('import sys; sys.path.insert(0, "tests")\n' + CODE, devices=8)
  assert 'max param diff' in out
