"""Masking invariants, patchify, the norm-pix target, the weight-decay mask and the schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mim_jax import masking
from mim_jax.models.vit import ViTEncoder, sincos_2d_table
from mim_jax.targets import normalize_patches, patchify, unpatchify
from mim_jax.train import optim


@pytest.mark.parametrize('grid,ratio', [((4, 4), 0.75), ((14, 14), 0.75), ((2, 2), 0.6), ((7, 5), 0.9)])
def test_random_mask_invariants(grid, ratio):
  gen = masking.build('random', masking.Grid(*grid), ratio=ratio)
  n = grid[0] * grid[1]
  assert gen.len_keep == int(n * (1 - ratio))
  info = jax.jit(gen, static_argnums=1)(jax.random.key(3), 6)
  mask, keep, restore = map(np.asarray, (info.mask, info.ids_keep, info.ids_restore))
  assert mask.shape == (6, n) and keep.shape == (6, gen.len_keep) and restore.shape == (6, n)
  assert np.all(mask.sum(1) == n - gen.len_keep)  # exact visible count in every row
  for b in range(6):
    assert len(set(keep[b])) == gen.len_keep  # no duplicates
    assert np.all(mask[b, keep[b]] == 0)  # kept tokens are unmasked
    assert sorted(restore[b]) == list(range(n))  # a permutation
  # ids_restore un-shuffles [visible tokens (ids_keep order), masked tokens] back into raster order.
  ids_shuffle = np.argsort(restore, axis=1)
  np.testing.assert_array_equal(ids_shuffle[:, :gen.len_keep], keep)
  np.testing.assert_array_equal(np.take_along_axis(ids_shuffle, restore, 1), np.arange(n)[None].repeat(6, 0))
  assert np.all(np.take_along_axis(mask, ids_shuffle, 1)[:, gen.len_keep:] == 1)


def test_random_mask_matches_reference_argsort_and_truncation():
  # int(N * (1 - 0.6)) truncates: 16 * 0.4 = 6.4 -> 6; 10 * (1 - 0.64) = 3.5999... -> 3.
  assert masking.num_visible(16, 0.6) == 6
  assert masking.num_visible(10, 0.64) == 3
  noise = jnp.asarray([[0.9, 0.1, 0.5, 0.3]])
  info = masking.build('random', masking.Grid(2, 2), ratio=0.5).from_noise(noise)
  np.testing.assert_array_equal(info.ids_keep, [[1, 3]])  # smallest noise kept, in ascending-noise order
  np.testing.assert_array_equal(info.mask, [[1, 0, 1, 0]])
  np.testing.assert_array_equal(info.ids_restore, np.argsort(np.argsort(noise, 1), 1))


def test_mask_generator_is_deterministic_and_rejects_bad_settings():
  gen = masking.build('random', masking.Grid(4, 4), ratio=0.75)
  a, b = gen(jax.random.key(0), 4), gen(jax.random.key(0), 4)
  np.testing.assert_array_equal(a.mask, b.mask)
  assert not np.array_equal(a.mask, gen(jax.random.key(1), 4).mask)
  with pytest.raises(ValueError, match='mask_ratio'):
    _ = masking.build('random', masking.Grid(4, 4), ratio=1.0).len_keep
  with pytest.raises(ValueError, match='unknown mask generator'):
    masking.build('nope', masking.Grid(4, 4))
  with pytest.raises(ValueError, match='noise must be'):
    gen.from_noise(jnp.zeros((2, 5)))


def test_patchify_round_trip_and_order():
  x = jax.random.normal(jax.random.key(0), (2, 8, 12, 3))
  p = patchify(x, 4)
  assert p.shape == (2, 6, 48)
  np.testing.assert_array_equal(unpatchify(p, 4, (2, 3), 3), x)
  # Token 1 is the patch at row 0, column 1; inside a patch the order is (p, q, c).
  np.testing.assert_array_equal(p[0, 1].reshape(4, 4, 3), x[0, 0:4, 4:8])
  with pytest.raises(ValueError, match='divisible'):
    patchify(x, 5)


def test_norm_pix_target_uses_unbiased_variance():
  patches = jax.random.normal(jax.random.key(1), (2, 3, 48)) * 3 + 1
  t = np.asarray(normalize_patches(patches))
  ref = (patches - patches.mean(-1, keepdims=True)) / np.sqrt(np.var(patches, -1, ddof=1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(t, ref, rtol=1e-5, atol=1e-5)


def test_sincos_table_layout():
  t = sincos_2d_table(8, 2, 3)
  assert t.shape == (6, 8)
  # First half encodes the column, second half the row (the reference's meshgrid(w, h) quirk).
  np.testing.assert_allclose(t[1, :2], [np.sin(1.0), np.sin(1.0 / 100)], rtol=1e-6)  # token (0, 1): column 1
  np.testing.assert_allclose(t[3, 4:6], [np.sin(1.0), np.sin(1.0 / 100)], rtol=1e-6)  # token (1, 0): row 1


def test_weight_decay_mask_matches_reference_grouping():
  enc = ViTEncoder(patch_size=4, width=16, depth=1, num_heads=2)
  params = jax.tree.map(lambda x: x, enc.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))['params'])
  import flax.linen as nn
  params = nn.meta.unbox(params)
  mask = optim.weight_decay_mask(params)
  assert mask['patch_embed']['kernel'] and not mask['patch_embed']['bias']
  assert mask['blocks_0']['attn']['qkv']['kernel'] and not mask['blocks_0']['attn']['qkv']['bias']
  assert not mask['blocks_0']['norm1']['scale'] and not mask['norm']['bias']
  assert mask['cls_token']  # 3-D: the reference (timm add_weight_decay without a skip list) decays it


def test_warmup_cosine_schedule_per_step():
  s = optim.warmup_cosine(1.0, total_steps=100, warmup_steps=10)
  assert float(s(0)) == 0.0 and abs(float(s(5)) - 0.5) < 1e-6 and abs(float(s(10)) - 1.0) < 1e-6
  assert abs(float(s(55)) - 0.5) < 1e-6 and float(s(100)) < 1e-6
  assert optim.scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)


def test_warmup_longer_than_the_run_warms_up_over_the_whole_run():
  """A smoke run of a recipe (--config.total_steps=4 with 40 warmup epochs) must not stop in optax."""
  for warmup in (4, 1000):
    s = optim.warmup_cosine(1.0, total_steps=4, warmup_steps=warmup)
    assert [float(s(i)) for i in range(5)] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_adamw_applies_decay_only_where_masked():
  params = {'w': jnp.ones((2, 2)), 'b': jnp.ones((2,))}
  import ml_collections
  tx = optim.make_optimizer(ml_collections.ConfigDict({'name': 'adamw', 'weight_decay': 0.5}), lambda s: 0.1)
  state = tx.init(params)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, state, params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new['w'], 1 - 0.1 * 0.5)  # decoupled decay: lr * wd * p
  np.testing.assert_allclose(new['b'], 1.0)
