"""LARS must match the MAE / MoCo v3 reference update rule, written out here in plain NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mim_jax.train.optim import lars


def _reference_steps(params, grads_per_step, lrs, momentum, wd, tc):
  """Hand-written reference: decay + trust ratio on >1-D tensors, mu = m*mu + g, p -= lr * mu."""
  params = {k: np.array(v, np.float64) for k, v in params.items()}
  mu = {k: np.zeros_like(v) for k, v in params.items()}
  history = []
  for grads, lr in zip(grads_per_step, lrs):
    for k, p in params.items():
      g = np.array(grads[k], np.float64)
      if p.ndim > 1:
        g = g + wd * p
        pn, gn = np.linalg.norm(p), np.linalg.norm(g)
        q = tc * pn / gn if (pn > 0 and gn > 0) else 1.0
        g = g * q
      mu[k] = momentum * mu[k] + g
      params[k] = p - lr * mu[k]
    history.append({k: v.copy() for k, v in params.items()})
  return history


def _setup():
  rng = np.random.default_rng(0)
  params = {
      'w': rng.normal(size=(4, 3)).astype(np.float32),
      'b': rng.normal(size=(3,)).astype(np.float32),  # 1-D: no decay, no trust ratio
      'z': np.zeros((2, 2), np.float32),  # zero norm: trust ratio falls back to 1
  }
  grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()} for _ in range(4)]
  return params, grads


def test_lars_matches_hand_computed_reference_with_changing_lr():
  params, grads = _setup()
  lrs = [0.0, 0.5, 2.0, 1.0]  # starts at 0 like a warmup, and changes every step
  momentum, wd, tc = 0.9, 0.1, 0.01
  tx = lars(lambda step: jnp.asarray(lrs)[step], momentum=momentum, weight_decay=wd, trust_coefficient=tc)
  p = jax.tree.map(jnp.asarray, params)
  state = tx.init(p)
  step = jax.jit(lambda g, s, p: tx.update(g, s, p))
  expected = _reference_steps(params, grads, lrs, momentum, wd, tc)
  for t, g in enumerate(grads):
    updates, state = step(jax.tree.map(jnp.asarray, g), state, p)
    p = optax.apply_updates(p, updates)
    for k in params:
      np.testing.assert_allclose(
        np.asarray(p[k]), expected[t][k], rtol=1e-5, atol=1e-6, err_msg=f'{k} step {t}'
      )
  assert int(state.count) == len(grads)
  # The zero-norm tensor moved (q = 1 on step 1, later it is non-zero and gets a trust ratio).
  assert np.abs(np.asarray(p['z'])).sum() > 0


def test_lr_applied_after_momentum_differs_from_optax_lars():
  # With a changing lr the reference ordering differs from optax.lars (lr before momentum).
  params, grads = _setup()
  lrs = [0.1, 1.0, 3.0]
  sched = lambda step: jnp.asarray(lrs)[step]
  ours, theirs = lars(sched, trust_coefficient=0.01), optax.lars(sched, trust_coefficient=0.01)
  p = jax.tree.map(jnp.asarray, params)
  s1, s2 = ours.init(p), theirs.init(p)
  for g in grads[:3]:
    u1, s1 = ours.update(g, s1, p)
    u2, s2 = theirs.update(g, s2, p)
  assert not np.allclose(np.asarray(u1['b']), np.asarray(u2['b']))


def test_exclude_1d_false_scales_vectors_too():
  p = {'b': jnp.array([3.0, 4.0])}
  g = {'b': jnp.array([0.0, 10.0])}
  tx = lars(1.0, momentum=0.0, trust_coefficient=0.1, exclude_1d=False)
  u, _ = tx.update(g, tx.init(p), p)
  np.testing.assert_allclose(np.asarray(u['b']), [0.0, -0.1 * 5.0 / 10.0 * 10.0], rtol=1e-6)
  tx = lars(1.0, momentum=0.0, trust_coefficient=0.1)  # default: 1-D params untouched
  u, _ = tx.update(g, tx.init(p), p)
  np.testing.assert_allclose(np.asarray(u['b']), [0.0, -10.0], rtol=1e-6)


def test_update_requires_params():
  tx = lars(0.1)
  p = {'w': jnp.ones((2, 2))}
  with pytest.raises(ValueError, match='params'):
    tx.update(p, tx.init(p))
