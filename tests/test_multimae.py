"""MultiMAE beyond the parity fixture: the Dirichlet token budget's statistics, the 2.5-D scenes, the masked losses,
RGB-only features and cross-modal prediction, and one-line errors."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mim_jax.data import scenes25d
from mim_jax.masking.multimodal import dirichlet_budget, split_mask
from mim_jax.methods.base import Facts, build


def test_the_budget_is_exact_and_shared_evenly_on_average():
  n, k = (64, 64, 64), 32
  info = dirichlet_budget(jax.random.key(0), 10000, n, k)
  visible = [np.asarray(1 - m).sum(axis=1) for m in split_mask(info.mask, n)]
  total = sum(visible)
  assert (total == k).all()  # the rounding repair keeps the total exact for every sample
  for v in visible:
    assert abs(v.mean() - k / 3) <= 0.01 * k / 3  # each modality a third on average (within 1%)
  # Dirichlet(1, 1, 1) shares vary (var = 1/18 of K^2 per modality); a very large alpha shares evenly
  assert np.var(visible[0]) > 40
  even = dirichlet_budget(jax.random.key(1), 4000, n, k, alpha=1e4)
  assert np.var(np.asarray(1 - split_mask(even.mask, n)[0]).sum(axis=1)) < 1.0
  # ids_keep are exactly the visible tokens
  ids = np.asarray(info.ids_keep[:50])
  mask = np.asarray(info.mask[:50])
  assert all(set(ids[i]) == set(np.flatnonzero(mask[i] == 0)) for i in range(50))


def test_sampling_tasks_uniformly_leaves_some_modalities_out():
  n = (16, 16, 16)
  info = dirichlet_budget(jax.random.key(2), 2000, n, 8, sample_tasks_uniformly=True)
  visible = np.stack([np.asarray(1 - m).sum(axis=1) for m in split_mask(info.mask, n)], axis=1)
  # 6 of the 7 non-empty subsets leave a modality out: most samples see only one or two of them
  assert (visible == 0).any(axis=1).mean() > 0.6 and (visible.sum(axis=1) == 8).all()


def test_scenes_are_deterministic_with_exact_modalities():
  a = scenes25d.make_scene(np.random.default_rng([3, 1]))
  b = scenes25d.make_scene(np.random.default_rng([3, 1]))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  rgb, depth, semseg = a
  assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8 and depth.shape == semseg.shape == (64, 64)
  assert 0.5 <= depth.min() and depth.max() < 20 and set(np.unique(semseg)) <= set(range(5))
  # the background is the farthest surface: every shape pixel is nearer than the background plane could be
  assert depth[semseg > 0].max() < depth[semseg == 0].min() + 12
  record = {'image': rgb, 'depth': np.round(depth * 1000).astype(np.uint16), 'semseg': semseg, 'label': 2}
  out = scenes25d.SceneRecord(False, 4)(record)
  assert out['semseg'].shape == (16, 16) and out['depth'].shape == (64, 64, 1)
  np.testing.assert_allclose(out['depth'][..., 0], depth, atol=6e-4)


def _method(modalities=('rgb', 'depth', 'semseg'), **multimae):
  c = ml_collections.ConfigDict({
      'method': 'multimae',
      'model': {'encoder': {'name': 'multivit', 'modalities': modalities, 'patch_size': 8,
                            'width': 32, 'depth': 1, 'num_heads': 2, 'semseg_classes': 5, 'semseg_stride': 4}},
      'multimae': {'num_visible': 8, 'decoder_width': 16, 'decoder_depth': 1, 'decoder_heads': 2, **multimae}})
  return build(c, Facts.for_images((32, 32, 3)))


def _batch(b=2):
  rng = np.random.default_rng(0)
  return {'image': jnp.asarray(rng.standard_normal((b, 32, 32, 3)), jnp.float32),
          'depth': jnp.asarray(rng.uniform(2, 8, (b, 32, 32, 1)), jnp.float32),
          'semseg': jnp.asarray(rng.integers(0, 5, (b, 8, 8)), jnp.int32), 'label': jnp.zeros(b, jnp.int32)}


def test_losses_count_hidden_pixels_only_and_skip_samples_that_hide_none():
  from mim_jax.methods.multimae import masked_mean

  per_pixel = jnp.asarray([[[1.0, 2.0], [3.0, 4.0]], [[10.0, 10.0], [10.0, 10.0]]])
  mask = jnp.asarray([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
  assert float(masked_mean(per_pixel, mask)) == pytest.approx(2.5)  # sample 2 hides nothing: not counted
  assert float(masked_mean(per_pixel, jnp.zeros_like(mask))) == 0.0


@pytest.mark.slow  # compile time; the parity fixture covers the model in the default run
def test_rgb_alone_predicts_every_modality_and_gives_the_features():
  m = _method()
  batch = _batch()
  params, _ = jax.jit(m.init)(jax.random.key(0), batch)
  out = jax.jit(lambda p: m.predict_from_rgb(p, batch))(params)
  # with every depth and semantic token hidden and every RGB token visible, the RGB losses are 0 (nothing hidden)
  assert float(out['losses']['rgb']) == 0.0 and float(out['losses']['depth']) > 0
  assert out['preds']['depth'].shape == (2, 32, 32, 1) and out['preds']['semseg'].shape == (2, 8, 8, 5)
  feats = jax.jit(m.encode)(params, batch)  # RGB alone: 16 patch tokens and the global token
  assert feats['patch_tokens'].shape == (2, 16, 32) and feats['cls'].shape == (2, 32)


def test_the_depth_standardization_is_the_truncated_one():
  from mim_jax.methods.multimae import standardize_depth

  d = np.random.default_rng(1).uniform(1, 9, (2, 8, 8, 1)).astype(np.float32)
  flat = np.sort(d.reshape(2, -1), axis=1)[:, 6:57]  # int(0.1 * 64) : int(0.9 * 64)
  want = (d - flat.mean(1)[:, None, None, None]) / np.sqrt(flat.var(1, ddof=1)[:, None, None, None] + 1e-6)
  np.testing.assert_allclose(np.asarray(standardize_depth(jnp.asarray(d))), want, rtol=1e-5, atol=1e-5)


def test_bad_settings_get_one_line_errors():
  with pytest.raises(ValueError, match='num_visible must be in'):
    _method(num_visible=100)
  with pytest.raises(ValueError, match='nothing to predict'):
    _method(num_visible=48)  # all 48 tokens visible
  with pytest.raises(ValueError, match=r'in \[1, 16\]'):
    _method(modalities=('rgb',), outputs=('depth',), num_visible=17)


def test_all_of_rgb_visible_when_only_other_modalities_are_predicted():
  # RGB in, depth and semantics out: every RGB token may be visible (supervised cross-modal prediction).
  m = _method(modalities=('rgb',), outputs=('depth', 'semseg'), num_visible=16, extra_norm_pix_loss=False)
  batch = _batch()
  params, _ = m.init(jax.random.PRNGKey(0), batch)
  info = m.draw_mask(jax.random.PRNGKey(1), 2)
  assert np.asarray(info.mask).sum() == 0 and info.ids_keep.shape == (2, 16)
  out = m.forward(params, batch, info, train=False)
  assert set(out['losses']) == {'depth', 'semseg'} and all(np.isfinite(float(v)) for v in out['losses'].values())
  with pytest.raises(ValueError, match='outputs must be among'):
    _method(outputs=('rgb', 'normals'))
  from mim_jax.models.encoders import build_encoder
  with pytest.raises(ValueError, match='modalities must be among'):
    build_encoder({'name': 'multivit', 'modalities': ('rgb', 'thermal')})
  with pytest.raises(ValueError, match="needs the 'rgb' modality"):
    build_encoder({'name': 'multivit', 'modalities': ('depth',)})


@pytest.mark.slow
def test_pretrain_on_the_scenes_end_to_end(tmp_path):
  import json

  from conftest import load_config
  from mim_jax.train import loop

  import mim_jax
  from mim_jax import convert

  loop.train(load_config('configs/multimae/scenes.py', 'tiny'), str(tmp_path / 'run'))
  rows = [json.loads(line) for line in open(tmp_path / 'run' / 'metrics.jsonl')]
  assert [r for r in rows if 'train/loss_depth' in r] and all(np.isfinite(r['train/loss']) for r in rows
                                                               if 'train/loss' in r)
  # export: the RGB path only, and the file's features are the workdir's
  dst = str(tmp_path / 'rgb.safetensors')
  assert convert.main(['--from', 'mim_jax', '--to', 'mim_jax', str(tmp_path / 'run'), dst]) == 0
  images = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3)).astype(np.uint8)
  a = mim_jax.features(dst, images, normalize='checkpoint')
  b = mim_jax.features(str(tmp_path / 'run'), images, normalize='checkpoint')
  np.testing.assert_allclose(a['pooled'], b['pooled'], atol=1e-6)


@pytest.mark.slow  # compile time
def test_an_output_the_encoder_does_not_read_is_predicted_whole():
  c = ml_collections.ConfigDict({
      'method': 'multimae',
      'model': {'encoder': {'name': 'multivit', 'modalities': ('rgb', 'depth'), 'patch_size': 8, 'width': 32,
                            'depth': 1, 'num_heads': 2, 'semseg_classes': 5, 'semseg_stride': 4}},
      'multimae': {'num_visible': 8, 'decoder_width': 16, 'decoder_depth': 1, 'decoder_heads': 2}})
  m = build(c, Facts.for_images((32, 32, 3)))
  batch = _batch()
  params, _ = jax.jit(m.init)(jax.random.key(0), batch)
  loss, (metrics, _) = jax.jit(m.loss_fn)(params, {}, batch, jax.random.key(1), 0)
  assert np.isfinite(float(loss)) and float(metrics['loss_semseg']) > 0
