"""The MAE linear-probe head, its schedule, and the probes' accuracy on scikit-learn digits (raw pixels)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from mim_jax.eval import linear_probe as lp


@pytest.fixture(scope='module')
def digits():
  x, y = load_digits(return_X_y=True)
  return train_test_split(x.astype(np.float32), y, test_size=0.25, random_state=0, stratify=y)


def test_head_has_no_learnable_scale_or_shift():
  head = lp.LinearProbeHead(num_classes=7)
  variables = head.init(jax.random.PRNGKey(0), jnp.zeros((4, 16)), train=False)
  assert set(variables) == {'params', 'batch_stats'}
  # Only the Dense layer is trainable; BatchNorm carries running statistics only.
  assert set(variables['params']) == {'head'}
  assert set(variables['params']['head']) == {'kernel', 'bias'}
  assert set(variables['batch_stats']['bn']) == {'mean', 'var'}
  kernel = np.asarray(variables['params']['head']['kernel'])
  assert kernel.shape == (16, 7)
  assert 0.005 < kernel.std() < 0.015
  np.testing.assert_array_equal(np.asarray(variables['params']['head']['bias']), 0.0)


def test_bn_uses_batch_stats_in_train_mode_and_running_stats_in_eval():
  head = lp.LinearProbeHead(num_classes=3)
  x = jax.random.normal(jax.random.PRNGKey(1), (32, 5)) * 3.0 + 10.0
  variables = head.init(jax.random.PRNGKey(0), x, train=False)
  head_params = {'kernel': jnp.eye(5, 3), 'bias': jnp.zeros(3)}
  ident = {'params': {'head': head_params}, 'batch_stats': variables['batch_stats']}
  out_train, mutated = jax.jit(lambda v, x: head.apply(v, x, train=True, mutable=['batch_stats']))(ident, x)
  # Train mode: normalized by this batch's (biased) statistics, eps 1e-6.
  expected = (x - x.mean(0)) / jnp.sqrt(x.var(0) + 1e-6)
  np.testing.assert_allclose(np.asarray(out_train), np.asarray(expected[:, :3]), rtol=1e-4, atol=1e-4)
  # Running mean moves by (1 - 0.9) towards the batch mean (torch momentum 0.1).
  new_mean = np.asarray(mutated['batch_stats']['bn']['mean'])
  np.testing.assert_allclose(new_mean, 0.1 * np.asarray(x.mean(0)), rtol=1e-5)
  # Eval mode with the initial running stats (mean 0, var 1) is the identity up to eps.
  out_eval = jax.jit(lambda v, x: head.apply(v, x, train=False))(ident, x)
  np.testing.assert_allclose(np.asarray(out_eval), np.asarray(x[:, :3]) / math.sqrt(1 + 1e-6), rtol=1e-5)


def test_schedule_matches_reference_per_iteration_formula():
  base_lr, batch, spe, epochs, warm, min_lr = 0.1, 512, 7, 9, 2, 1e-3
  sched = lp.probe_schedule(base_lr, batch, spe, epochs, warm, min_lr)
  peak = base_lr * batch / 256
  for step in [0, 1, 6, 13, 14, 15, 40, 62]:
    epoch = step / spe
    if epoch < warm:
      ref = peak * epoch / warm
    else:
      ref = min_lr + (peak - min_lr) * 0.5 * (1 + math.cos(math.pi * (epoch - warm) / (epochs - warm)))
    assert float(sched(step)) == pytest.approx(ref, rel=1e-5, abs=1e-7), step


def test_clip_batch_size():
  assert lp.clip_batch_size(16384, 1_281_167) == 16384
  assert lp.clip_batch_size(16384, 1347) == 336
  assert lp.clip_batch_size(256, 3) == 1


def test_lars_probe_on_digits_pixels(digits):
  xtr, xte, ytr, yte = digits
  # LARS at the paper's base_lr 0.1 barely moves a 0.01-std head in a few hundred steps (the trust ratio makes
  # each step ~lr * 0.01 of the weight norm); small data needs a larger base_lr. See docs/evaluation.md.
  res = lp.train_linear_probe(
    xtr, ytr, xte, yte, num_classes=10, epochs=20, batch_size=256, base_lr=10.0, warmup_epochs=2
  )
  assert set(res) == {'top1', 'top5'}
  assert res['top1'] > 0.9, res
  assert res['top5'] >= res['top1']


def test_closed_form_and_logistic_probes_on_digits(digits):
  xtr, xte, ytr, yte = digits
  assert lp.least_squares_probe(xtr, ytr, xte, yte, num_classes=10)['top1'] > 0.9
  assert lp.logistic_regression_probe(xtr, ytr, xte, yte)['top1'] > 0.9
  # Chance-level on shuffled labels: the probes learn from the labels, not from a leak.
  rng = np.random.default_rng(0)
  assert lp.least_squares_probe(xtr, rng.permutation(ytr), xte, yte, num_classes=10)['top1'] < 0.3


def test_topk_accuracy():
  scores = np.array([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
  labels = np.array([2, 0, 0])
  acc = lp.topk_accuracy(scores, labels, ks=(1, 2, 5))
  assert acc['top1'] == pytest.approx(1 / 3)
  assert acc['top2'] == pytest.approx(2 / 3)
  assert acc['top5'] == 1.0


def test_unknown_optimizer():
  with pytest.raises(ValueError, match='unknown probe optimizer'):
    lp.probe_optimizer('lamb', 0.1)
