"""SparK: sparse masked modeling for ConvNets. What makes it SparK is that masked positions carry nothing through
the encoder: every map is exactly zero there and BatchNorm statistics come from visible positions only. The naive
dense baseline (the same ConvNet on zeroed pixels, dense BatchNorm) is the contrast: it passes the input-noise
check too (its masked pixels are zeroed as well) but fails the two checks that look inside the network."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mim_jax.methods.base import Facts, build

RESNET = {'name': 'resnet', 'depths': (1, 1, 1, 1), 'widths': (8, 16, 16, 32), 'stem': 'small', 'stem_width': 8}
CONVNEXT = {'name': 'convnext', 'depths': (1, 1, 1, 1), 'dims': (8, 16, 16, 32), 'patch_size': 2,
            'stage0_stride': 1}


def _method(encoder=RESNET, size=32, **spark):
  c = ml_collections.ConfigDict({'method': 'spark', 'model': {'encoder': dict(encoder)},
                                 'mask': {'name': 'random', 'ratio': 0.6}, 'spark': {'decoder_width': 32, **spark}})
  return build(c, Facts.for_images((size, size, 3)))


def _setup(method, batch=3, seed=0):
  """Images, random params and running statistics of the init's shapes (compiling a ConvNet's random
  initializers costs ~20 s per model on 2 cores; the init itself runs in the training-step test), and a mask."""
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.standard_normal((batch, *method.image_shape)), jnp.float32)
  params, extras = nn.meta.unbox(jax.eval_shape(method.init, jax.random.key(seed), {'image': images}))
  fill = lambda p, a: jnp.asarray((rng.uniform(0.5, 1.5, a.shape) if p[-1].key in ('var', 'scale') else  # noqa: E731
                                   0.3 * rng.standard_normal(a.shape)), jnp.float32)
  params, extras = jax.tree_util.tree_map_with_path(fill, (params, extras))
  active = method.draw_active(jax.random.key(seed + 1), batch)
  return images, params, extras, active


def _masked_pixels(method, active):
  """[B, H, W, 1] 1.0 where the pixel is in a masked cell."""
  r = method.ratio
  return 1.0 - jnp.repeat(jnp.repeat(active.astype(jnp.float32), r, 1), r, 2)[..., None]


@pytest.mark.parametrize('sparse', [True, False])
def test_masked_pixels_do_not_reach_the_loss_or_the_visible_features(sparse):
  # The check: noise in the masked cells changes nothing, and the loss has no gradient there. It holds for
  # the dense baseline too, because both zero the masked pixels before the encoder; the checks below separate them.
  m = _method(sparse=sparse)
  images, params, extras, active = _setup(m)
  masked = _masked_pixels(m, active)
  noisy = images + masked * 5.0 * jax.random.normal(jax.random.key(7), images.shape)
  run = jax.jit(lambda x: m.forward(params, extras['batch_stats'], x, active, train=True))
  a, b = run(images), run(noisy)
  assert float(a['loss']) != 0.0
  # The loss reads the masked cells' pixels as its target (that is the task): compare what the model computes.
  for s_a, s_b in zip(a['stages'], b['stages']):
    np.testing.assert_array_equal(np.asarray(s_a), np.asarray(s_b))
  np.testing.assert_array_equal(np.asarray(a['rec']), np.asarray(b['rec']))
  jax.tree.map(np.testing.assert_array_equal, a['batch_stats'], b['batch_stats'])

  def visible_sum(x):
    out = m.forward(params, extras['batch_stats'], x, active, train=True)
    return sum(jnp.sum(s) for s in out['stages']) + jnp.sum(out['rec'])

  grad = jax.jit(jax.grad(visible_sum))(images)
  assert float(jnp.abs(grad * masked).max()) == 0.0 and float(jnp.abs(grad).max()) > 0.0


@pytest.mark.parametrize('encoder', [RESNET, CONVNEXT], ids=['resnet', 'convnext'])
def test_masked_positions_stay_empty_in_every_encoder_map(encoder):
  outs = {}
  for sparse in (True, False):
    m = _method(encoder, sparse=sparse)
    images, params, extras, active = _setup(m)
    out = jax.jit(functools.partial(m.forward, train=True))(params, extras['batch_stats'], images, active)
    gaps = []
    for fmap in out['stages']:
      r = fmap.shape[1] // active.shape[1]
      inactive = 1.0 - jnp.repeat(jnp.repeat(active.astype(jnp.float32), r, 1), r, 2)[..., None]
      gaps.append(float(jnp.abs(fmap * inactive).max()))
    outs[sparse] = gaps
  assert outs[True] == [0.0] * 4  # SparK: exactly nothing at masked positions, at every stride
  assert min(outs[False]) > 1e-3  # the dense baseline fills them from conv biases, BN shifts and neighbours


def test_batchnorm_statistics_come_from_visible_positions_only():
  # Appending a fully masked image adds only masked positions to the batch: SparK's statistics, so the other
  # images' features, do not move; the dense baseline's do (its statistics count the zeros).
  moved = {}
  for sparse in (True, False):
    m = _method(sparse=sparse)
    images, params, extras, active = _setup(m)
    forward = jax.jit(functools.partial(m.forward, train=True))
    base = forward(params, extras['batch_stats'], images, active)['stages'][-1]
    extra_active = jnp.concatenate([active, jnp.zeros_like(active[:1])])
    extra_images = jnp.concatenate([images, images[:1]])
    more = forward(params, extras['batch_stats'], extra_images, extra_active)['stages'][-1][:3]
    moved[sparse] = float(jnp.abs(more - base).max() / jnp.abs(base).max())
  assert moved[True] < 1e-6 and moved[False] > 1e-2, moved


def test_training_step_updates_running_statistics_and_evaluation_reads_them():
  m = _method()
  images, params, extras, _ = _setup(m)  # the production init runs in the end-to-end config test (slow)
  loss, (metrics, new_extras) = jax.jit(m.loss_fn)(params, extras, {'image': images}, jax.random.key(3), 0)
  assert np.isfinite(float(loss)) and float(metrics['loss']) == float(loss)
  before = extras['batch_stats']['encoder']['stem_bn']['mean']
  assert not np.allclose(before, new_extras['batch_stats']['encoder']['stem_bn']['mean'])
  ev = m.eval_params(params, new_extras)
  feats = m.feature(ev, {'image': images}, 'pooled')
  assert feats.shape == (3, 32) and np.all(np.isfinite(feats))
  shifted = m.eval_params(params, jax.tree.map(lambda v: v + 1.0, new_extras))
  assert not np.allclose(m.feature(shifted, {'image': images}, 'pooled'), feats)  # the running stats are used
  rec = m.reconstruct(ev, images, jax.random.key(4))
  assert rec['pred_images'].shape == images.shape and rec['mask_images'].shape == images.shape
  # SparK's rounding of the visible count: round(16 * 0.4) = 6 of the 4x4 cells
  assert int(m.draw_active(jax.random.key(0), 2).sum()) == 12


def test_spark_refuses_what_it_cannot_mask():
  with pytest.raises(ValueError, match='multiple of it'):
    _method(size=28)  # the small-stem ResNet's ratio is 8
  with pytest.raises(ValueError, match='pre-trains ConvNets'):
    _method({'patch_size': 4, 'width': 32, 'depth': 1, 'num_heads': 2})
  with pytest.raises(ValueError, match='densify_norm'):
    _method(densify_norm='group')
  with pytest.raises(ValueError, match='unknown config.spark field'):
    _method(decoder_depth=2)


@pytest.mark.slow  # the production init, a few training steps, the end-of-run probes and export (~2 min)
def test_the_tiny_config_trains_evaluates_and_exports(tmp_path):
  import mim_jax
  from conftest import load_config
  from mim_jax import interop, main

  c = load_config('configs/spark/fashion_mnist.py', 'tiny')
  c.data.name = 'mim_digits'  # Fashion-MNIST is optional on CI; the bundled digits are not
  summary = main.run(c, str(tmp_path / 'run'))
  assert summary['method'] == 'spark' and 0.0 <= summary['knn/top1'] <= 1.0 and 'random_init/knn/top1' in summary
  ckpt = interop.load(str(tmp_path / 'run'), 'mim_jax')  # the encoder with its running statistics
  assert ckpt.spec.encoder == 'resnet' and 'encoder_batch_stats' in ckpt.params
  feats = mim_jax.features(ckpt, np.zeros((2, 32, 32, 1), np.float32))
  assert feats['pooled'].shape == (2, 32)
