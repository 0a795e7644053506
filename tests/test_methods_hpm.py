"""HPM: the relative (ranking) objective, the easy-to-hard hard-patch masks, the schedules and the EMA teacher."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from mim_jax import methods
from mim_jax.train import loop
from mim_jax.methods.hpm import hard_patch_mask, pair_order_accuracy, relative_ranking_loss


def reference_bce(pred, target, valid):
  """The paper's pairwise BCE written as a plain loop over ordered pairs of valid patches."""
  total, count = 0.0, 0
  for b in range(pred.shape[0]):
    for i in range(pred.shape[1]):
      for j in range(pred.shape[1]):
        if not (valid[b, i] and valid[b, j]) or target[b, i] == target[b, j]:
          continue
        prob_j_harder = 1.0 / (1.0 + np.exp(-(pred[b, j] - pred[b, i])))
        # The authors' forward_learning_loss, its 1e-6 inside the logs included.
        total += -np.log((prob_j_harder if target[b, j] > target[b, i] else 1.0 - prob_j_harder) + 1e-6)
        count += 1
  return total / count


def test_bce_ranking_loss_matches_the_pairwise_formula():
  rng = np.random.default_rng(0)
  pred, target = rng.normal(size=(3, 7)), rng.exponential(size=(3, 7))
  valid = rng.random((3, 7)) < 0.7
  got = relative_ranking_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(valid), 'bce')
  np.testing.assert_allclose(float(got), reference_bce(pred, target, valid), rtol=1e-5)


def test_ranking_loss_is_zero_when_identically_ordered():
  rng = np.random.default_rng(1)
  target = jnp.asarray(rng.exponential(size=(4, 16)))
  valid = jnp.ones((4, 16))
  same_order = 2.0 * jnp.log(target) + 3.0  # a strictly increasing map: identical order, different values
  # Margin-free hinge: exactly zero for any identically ordered prediction; one swapped pair makes it positive.
  assert float(relative_ranking_loss(same_order, target, valid, 'hinge')) == 0.0
  hi, lo = jnp.argmax(target[0]), jnp.argmin(target[0])
  swapped = same_order.at[0, hi].set(same_order[0, lo]).at[0, lo].set(same_order[0, hi])
  assert float(relative_ranking_loss(swapped, target, valid, 'hinge')) > 0.0
  # The paper's BCE on identically ordered predictions is below log 2, falls as they spread apart and reaches
  # zero only in the limit: "zero" for the BCE means "-> 0 as c -> inf" for c * (identically ordered scores).
  ranks = jnp.argsort(jnp.argsort(target, axis=1), axis=1).astype(jnp.float32)
  bce = [float(relative_ranking_loss(c * ranks, target, valid, 'bce')) for c in (0.1, 1.0, 10.0, 100.0)]
  assert bce[0] < np.log(2) and all(a > b for a, b in zip(bce, bce[1:])) and bce[-1] < 1e-6
  tied = relative_ranking_loss(jnp.zeros_like(target), target, valid, 'bce')
  assert float(tied) == pytest.approx(np.log(2), rel=1e-5)
  assert float(relative_ranking_loss(-ranks, target, valid, 'bce')) > np.log(2)  # reversed order
  assert float(pair_order_accuracy(same_order, target, valid)) == 1.0
  assert float(pair_order_accuracy(-same_order, target, valid)) == 0.0


def test_ranking_loss_only_counts_valid_patches():
  target = jnp.asarray([[1.0, 2.0, 3.0, 4.0]])
  valid = jnp.asarray([[1.0, 1.0, 0.0, 0.0]])
  ordered_on_valid = jnp.asarray([[0.0, 1.0, 9.0, -9.0]])  # patches 2 and 3 are mis-ordered but not counted
  assert float(relative_ranking_loss(ordered_on_valid, target, valid, 'hinge')) == 0.0
  with pytest.raises(ValueError, match='ranking kind'):
    relative_ranking_loss(target, target, valid, 'mse')


def test_hard_patch_mask_follows_alpha():
  b, n, len_keep = 8, 16, 4  # 12 masked
  difficulty = jax.random.normal(jax.random.key(0), (b, n))
  order = np.argsort(-np.asarray(difficulty), axis=1)  # hardest first
  for alpha, n_hard in ((0.0, 0), (0.5, 6), (1.0, 12)):
    info = hard_patch_mask(difficulty, len_keep, jnp.float32(alpha), jax.random.key(1))
    mask = np.asarray(info.mask)
    assert info.len_keep == len_keep and np.all(mask.sum(1) == n - len_keep)
    for row in range(b):
      assert np.all(mask[row, order[row, :n_hard]] == 1)  # the hardest floor(alpha * 12) are always masked
  # The non-hard part is random: with alpha = 0 the mask does not depend on the difficulty at all.
  a = hard_patch_mask(difficulty, len_keep, jnp.float32(0.0), jax.random.key(2)).mask
  c = hard_patch_mask(-difficulty, len_keep, jnp.float32(0.0), jax.random.key(2)).mask
  np.testing.assert_array_equal(a, c)


@pytest.fixture(scope='module')
def hpm_setup():
  config = load_config('configs/hpm/digits.py', 'tiny')
  config.hpm.total_steps = 100
  config.hpm.ema_decay_start, config.hpm.ema_decay_end = 0.9, 0.99
  method = methods.build(config, methods.Facts.for_images((16, 16, 1)))
  images = jax.random.normal(jax.random.key(0), (16, 16, 16, 1))
  params, extras = nn.meta.unbox(jax.jit(method.init)(jax.random.key(1), {'image': images}))
  return method, params, extras, images


def test_schedules_follow_the_step(hpm_setup):
  method, *_ = hpm_setup
  alphas = [float(method.alpha(s)) for s in (0, 49, 99, 500)]
  np.testing.assert_allclose(alphas, [0.005, 0.25, 0.5, 0.5], atol=1e-6)  # alpha_0 + (alpha_T - alpha_0)(t+1)/T
  decays = [float(method.ema_decay(s)) for s in (0, 6, 13, 99)]  # ramp over 12.5 steps (0.125 x 100)
  np.testing.assert_allclose(decays, [0.9, 0.9 + 0.09 * 6 / 12.5, 0.99, 0.99], atol=1e-6)


def test_easy_to_hard_schedule_moves_masks_to_high_predicted_loss(hpm_setup):
  method, params, extras, images = hpm_setup
  difficulty = np.asarray(jax.jit(method.predicted_difficulty)(extras['teacher'], images))
  masks = jax.jit(lambda step, rng: method.mask_for_step(params, extras, images, rng, step)[0].mask)
  top6 = np.argsort(-difficulty, axis=1)[:, :6]  # the 6 patches with the highest predicted loss
  overlap, masked_difficulty = {}, {}
  for step in (0, 99):
    m = np.concatenate([np.asarray(masks(step, jax.random.key(k))) for k in range(4)])
    d = np.tile(difficulty, (4, 1))
    overlap[step] = np.take_along_axis(m, np.tile(top6, (4, 1)), axis=1).mean()  # fraction of them masked
    masked_difficulty[step] = (d * m).sum() / m.sum() - d.mean()
  # Step 0 (alpha ~ 0): uniformly random, ~12/16 of them masked. Last step (alpha = 0.5 of 12 masked): all 6.
  assert overlap[0] < 0.9 and overlap[99] == 1.0
  assert masked_difficulty[99] > masked_difficulty[0] + 0.1 * difficulty.std()


def test_loss_fn_trains_the_predictor_and_the_ema_teacher_follows_the_update(hpm_setup):
  method, params, extras, images = hpm_setup
  grad_fn = jax.jit(jax.value_and_grad(method.loss_fn, has_aux=True))
  (loss, (metrics, new_extras)), grads = grad_fn(params, extras, {'image': images}, jax.random.key(3), 50)
  np.testing.assert_allclose(float(loss), float(metrics['recon_loss']) + float(metrics['rank_loss']), rtol=1e-5)
  assert 0.0 < float(metrics['rank_loss'])
  norm = lambda tree: float(jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(tree))))
  predictor = {k: v for k, v in grads['decoder'].items() if k.endswith('losspred') or 'losspred_' in k}
  assert len(predictor) == 2 + method.decoder.predictor_depth  # its blocks, norm and head
  assert norm(predictor) > 0 and norm(grads['encoder']) > 0  # the predictor is trained jointly
  jax.tree.map(np.testing.assert_array_equal, new_extras['teacher'], extras['teacher'])  # the loss leaves it
  # After the optimizer step, the teacher moves towards the *updated* params (no one-step lag).
  updated = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
  moved = jax.jit(method.after_update)(updated, new_extras, 50)
  decay = float(metrics['ema_decay'])
  expected = jax.tree.map(lambda t, p: decay * t + (1 - decay) * p, extras['teacher'], updated)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), moved['teacher'], expected)


def test_bad_hpm_settings_are_named():
  config = load_config('configs/hpm/digits.py', 'tiny')
  config.mask = dict(name='block', ratio=0.75)
  with pytest.raises(ValueError, match="mask.name='random'"):
    methods.build(config, methods.Facts.for_images((16, 16, 1)))
  config = load_config('configs/hpm/digits.py', 'tiny')
  config.hpm.rankng = 'bce'
  with pytest.raises(ValueError, match='unknown config.hpm'):
    methods.build(config, methods.Facts.for_images((16, 16, 1)))


def test_schedule_length_is_the_runs_resolved_length(tmp_path):
  config = load_config('configs/hpm/digits.py', 'tiny')
  config.total_steps, config.epochs, config.batch_size = -1, 2.0, 16
  job = loop.pretrain_job(config, str(tmp_path))  # the trainer tells the method the run's length
  assert job.objective.total_steps == 2 * (1437 // 16)  # epochs x steps per epoch of the digits train split
  with pytest.raises(ValueError, match='total_steps'):  # built outside a run, the schedules cannot be known
    methods.build(config, methods.Facts.for_images((16, 16, 1))).alpha(0)
  config.hpm.total_steps = 40
  assert methods.build(config, methods.Facts.for_images((16, 16, 1))).total_steps == 40


def test_a_patch_is_never_paired_with_itself():
  # Under jit, target_i - target_i can come out a rounding error away from 0 (differently fused operands): the
  # pair mask must exclude the diagonal whatever the signs say (found by the parity check against the authors').
  from mim_jax.methods.hpm import _pairs

  sign = jnp.ones((1, 3, 3))  # a nonzero "difference" everywhere, the diagonal included
  pairs = np.asarray(_pairs(jnp.ones((1, 3)), sign))
  np.testing.assert_array_equal(pairs[0], 1.0 - np.eye(3))
