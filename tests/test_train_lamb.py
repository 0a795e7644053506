"""LAMB must follow timm's ``Lamb`` (SparK's optimizer), written out here in plain NumPy: Adam's bias-corrected
direction plus decoupled weight decay, scaled by |param| / |direction| on the decayed tensors only; the weight
decay follows SparK's cosine from ``weight_decay`` to ``weight_decay_end``."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mim_jax.train import optim


def _reference(params, grads_per_step, lr, wds, b1=0.9, b2=0.95, eps=1e-6):
  params = {k: np.array(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v = {k: np.zeros_like(p) for k, p in params.items()}
  for t, (grads, wd) in enumerate(zip(grads_per_step, wds), start=1):
    for k, p in params.items():
      g = np.array(grads[k], np.float64)
      m[k] = b1 * m[k] + (1 - b1) * g
      v[k] = b2 * v[k] + (1 - b2) * g * g
      step = (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
      if p.ndim > 1:  # decayed and trust-ratio adapted (timm: only groups with weight decay)
        step = step + wd * p
        pn, sn = np.linalg.norm(p), np.linalg.norm(step)
        step = step * (pn / sn if pn > 0 and sn > 0 else 1.0)
      params[k] = p - lr * step
  return params


def test_lamb_matches_timms_update_with_a_cosine_weight_decay():
  rng = np.random.default_rng(0)
  params = {'w': rng.standard_normal((4, 3)).astype(np.float32), 'b': rng.standard_normal(3).astype(np.float32)}
  grads = [{k: rng.standard_normal(p.shape).astype(np.float32) for k, p in params.items()} for _ in range(3)]
  cfg = ml_collections.ConfigDict(dict(name='lamb', b1=0.9, b2=0.95, eps=1e-6, weight_decay=0.04,
                                       weight_decay_end=0.2))
  tx = optim.make_optimizer(cfg, optax.constant_schedule(0.01), total_steps=3)
  state = tx.init(jax_params := {k: jnp.asarray(v) for k, v in params.items()})
  p = jax_params
  for g in grads:
    updates, state = tx.update({k: jnp.asarray(v) for k, v in g.items()}, state, p)
    p = optax.apply_updates(p, updates)
  # SparK's schedule over 3 steps: 0.04 at the first, 0.2 at the last (0.12 between)
  expected = _reference(params, grads, 0.01, [0.04, 0.12, 0.2])
  for k in params:
    np.testing.assert_allclose(np.asarray(p[k]), expected[k], rtol=1e-5, atol=1e-6)
  wrong = _reference(params, grads, 0.01, [0.04] * 3)  # a constant decay is a different run
  assert not np.allclose(np.asarray(p['w']), wrong['w'], rtol=1e-5, atol=1e-6)


def test_a_weight_decay_schedule_needs_the_run_length():
  cfg = ml_collections.ConfigDict(dict(name='lamb', weight_decay=0.04, weight_decay_end=0.2))
  with pytest.raises(ValueError, match='needs the run length'):
    optim.make_optimizer(cfg, optax.constant_schedule(0.01))
  with pytest.raises(ValueError, match="'adamw', 'sgd' or 'lamb'"):
    optim.make_optimizer(ml_collections.ConfigDict(dict(name='adam')), optax.constant_schedule(0.01))
