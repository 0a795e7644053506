"""Mixup / CutMix / label smoothing as jit-able batch ops (timm's batch-mode semantics)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mim_jax.data import mixup


def _batch(b=6, h=8, w=10, c=3):
  images = jax.random.normal(jax.random.PRNGKey(1), (b, h, w, c))
  labels = jnp.arange(b) % 5
  return images, labels


def test_smooth_one_hot():
  t = np.asarray(mixup.smooth_one_hot(jnp.array([2, 0]), 4, 0.1))
  np.testing.assert_allclose(t[0], [0.025, 0.025, 0.925, 0.025], rtol=1e-6)
  np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)


def test_mixup_blends_with_the_mirrored_example():
  images, labels = _batch()
  cfg = mixup.MixupConfig(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1)
  out, targets, info = jax.jit(lambda r, x, y: mixup.mix_batch(r, x, y, 5, cfg))(jax.random.PRNGKey(0), images,
                                                                                  labels)
  lam = float(info['lam'])
  assert 0.0 < lam < 1.0 and not bool(info['cutmix'])
  np.testing.assert_allclose(out, lam * images + (1 - lam) * images[::-1], atol=1e-6)
  smooth = mixup.smooth_one_hot(labels, 5, 0.1)
  np.testing.assert_allclose(targets, lam * smooth + (1 - lam) * smooth[::-1], atol=1e-6)


def test_cutmix_pastes_a_box_and_lam_is_the_kept_area():
  images, labels = _batch(h=16, w=16)
  cfg = mixup.MixupConfig(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0)
  fn = jax.jit(lambda r: mixup.mix_batch(r, images, labels, 5, cfg))
  seen_partial = False
  for seed in range(6):
    out, targets, info = fn(jax.random.PRNGKey(seed))
    assert bool(info['cutmix'])
    from_partner = np.all(np.isclose(np.asarray(out), np.asarray(images[::-1])), axis=-1)[0]  # [H, W]
    kept = np.all(np.isclose(np.asarray(out), np.asarray(images)), axis=-1)[0]
    assert np.all(from_partner | kept)
    rows, cols = np.nonzero(from_partner)
    if rows.size:  # the pasted region is one axis-aligned box
      assert from_partner[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
      seen_partial = True
    lam = float(info['lam'])
    np.testing.assert_allclose(lam, 1.0 - from_partner.mean(), atol=1e-6)
    onehot = jax.nn.one_hot(labels, 5)
    np.testing.assert_allclose(targets, lam * onehot + (1 - lam) * onehot[::-1], atol=1e-6)
  assert seen_partial


def test_switch_prob_picks_cutmix_about_half_the_time():
  images, labels = _batch()
  cfg = mixup.MixupConfig()
  fn = jax.jit(jax.vmap(lambda r: mixup.mix_batch(r, images, labels, 5, cfg)[2]['cutmix']))
  picks = np.asarray(fn(jax.random.split(jax.random.PRNGKey(0), 400)))
  assert 0.35 < picks.mean() < 0.65


def test_prob_zero_only_smooths_labels():
  images, labels = _batch()
  cfg = mixup.MixupConfig(prob=0.0)
  out, targets, info = jax.jit(lambda r: mixup.mix_batch(r, images, labels, 5, cfg))(jax.random.PRNGKey(0))
  np.testing.assert_array_equal(out, images)
  np.testing.assert_allclose(targets, mixup.smooth_one_hot(labels, 5, 0.1), atol=1e-7)
  assert float(info['lam']) == 1.0


def test_soft_cross_entropy_equals_integer_ce_for_one_hot_targets():
  logits = jax.random.normal(jax.random.PRNGKey(0), (4, 7))
  labels = jnp.array([0, 3, 6, 2])
  import optax
  expected = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  np.testing.assert_allclose(mixup.soft_cross_entropy(logits, jax.nn.one_hot(labels, 7)), expected, rtol=1e-6)


def test_bad_settings():
  with pytest.raises(ValueError, match='label_smoothing'):
    mixup.MixupConfig(label_smoothing=1.5)
  with pytest.raises(ValueError, match='alpha'):
    mixup.MixupConfig(mixup_alpha=-1.0)
