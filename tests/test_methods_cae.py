"""CAE: the alignment target carries no gradient, the loss composition, LayerScale and CAE's sin-cos layout, the
recipes. (Tensor parity with the official code: tests/test_parity.py.)"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from mim_jax import config as config_lib
from mim_jax.methods import Facts, build
from mim_jax.methods.cae import cae_defaults
from mim_jax.models.vit import ViTEncoder, sincos_2d_table


def build_cae(**fields):
  c = load_config('configs/cae/fashion_mnist.py', 'tiny')
  c.cae.update(fields)
  return build(c, Facts.for_images((28, 28, 1)))


@pytest.fixture(scope='module')
def cae():
  """The tiny recipe's method, params and images, made once (jitted: an eager init is slow)."""
  method = build_cae()
  images = jax.random.normal(jax.random.key(0), (3, 28, 28, 1))
  params, _ = jax.jit(method.init)(jax.random.key(1), {'image': images})
  return method, nn.meta.unbox(params), images


def test_alignment_target_has_no_gradient_path_and_weights_compose(cae):
  method, params, images = cae
  info = method.masker(jax.random.key(2), 3)

  @jax.jit
  def run(p, x):
    grad = lambda key: jax.grad(lambda q: jnp.sum(method.predict(q, x, info)[key]))(p)  # noqa: E731
    return method.forward(p, x, info), grad('latent_target'), grad('latent_pred')

  out, g_target, g_pred = run(params, images)
  # Through the target alone, every parameter's gradient is exactly zero...
  assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(g_target))
  # ...through the prediction the encoder gets one (the regressor reads its visible latents).
  assert np.any(np.asarray(g_pred['encoder']['blocks_0']['attn']['qkv']['kernel']))
  np.testing.assert_allclose(float(out['loss']), float(out['target_loss']) + 2.0 * float(out['align_loss']),
                             rtol=1e-6)
  assert out['latent_pred'].shape == out['latent_target'].shape == (3, info.ids_masked.shape[1], 32)
  # The target is the encoder on the masked patches: a masked pixel changes it, and not the visible latents.
  p = method.encoder.patch_size
  m = int(info.ids_masked[0, 0])
  r, c = divmod(m, 28 // p)
  changed = images.at[0, r * p:(r + 1) * p, c * p:(c + 1) * p].add(1.0)
  out2 = run(params, changed)[0]
  np.testing.assert_array_equal(out2['latent'], out['latent'])
  assert not np.allclose(out2['latent_target'], out['latent_target'])


def test_without_alignment_the_loss_is_the_target_loss(cae):
  _, params, images = cae
  method = build_cae(align_weight=0.0)  # the same parameters
  info = method.masker(jax.random.key(2), 3)
  out = jax.jit(lambda p: method.forward(p, images, info))(params)
  assert float(out['loss']) == float(out['target_loss']) and float(out['align_loss']) > 0


def test_layer_scale_and_the_rows_first_table():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  plain = ViTEncoder(patch_size=4, width=16, depth=1, num_heads=2)
  scaled = plain.clone(layer_scale=0.1)
  p_plain = nn.meta.unbox(jax.jit(plain.init)(jax.random.key(1), x)['params'])
  p_scaled = nn.meta.unbox(jax.jit(scaled.init)(jax.random.key(1), x)['params'])
  assert 'gamma_1' not in p_plain['blocks_0']  # off by default: no parameters, the same function as before
  np.testing.assert_array_equal(p_scaled['blocks_0']['gamma_1'], np.full(16, 0.1, np.float32))
  # gammas of 1 give the unscaled block
  ones = jax.tree.map(lambda a: a, p_scaled)
  ones['blocks_0']['gamma_1'] = ones['blocks_0']['gamma_2'] = jnp.ones(16)
  np.testing.assert_allclose(jax.jit(scaled.apply)({'params': ones}, x)['tokens'],
                             jax.jit(plain.apply)({'params': p_plain}, x)['tokens'], rtol=1e-5, atol=1e-6)
  # CAE's table: the row index in the first half of the channels (MAE's has the column there).
  mae, cae = sincos_2d_table(16, 3, 5), sincos_2d_table(16, 3, 5, rows_first=True)
  np.testing.assert_array_equal(cae[:, :8], mae[:, 8:])
  np.testing.assert_array_equal(cae[:, 8:], mae[:, :8])
  assert np.all(cae[5, :8] == cae[9, :8])  # tokens 5 and 9 share row 1 (5 columns): equal first halves


def test_recipes_and_errors():
  for path, arg, shape in (('configs/cae/vit_base_in1k.py', None, (224, 224, 3)),
                           ('configs/cae/vit_base_in1k.py', 'cpu', (32, 32, 1)),
                           ('configs/cae/fashion_mnist.py', None, (28, 28, 1))):
    c = load_config(path, arg)
    assert set(c.cae) == set(cae_defaults()), path  # every field can be set on the command line
    config_lib.validate(c)
    method = build(c, Facts.for_images(shape))
    assert method.encoder.layer_scale == 0.1 and method.encoder.pos_embed == 'sincos_rows_first'
  c = load_config('configs/cae/vit_base_in1k.py')
  assert (c.batch_size, c.mask.name, c.mask.ratio, c.optimizer.grad_clip_norm, c.optimizer.b2) == (
      2048, 'block', 0.5, 3.0, 0.999)
  assert build(c, Facts.for_images((224, 224, 3))).masker.len_keep == 98  # 98 of 196 masked
  assert c.optimizer.base_lr * c.batch_size / 256 == pytest.approx(1.5e-3)  # their --lr at batch 2048
  with pytest.raises(ValueError, match='tokenizer'):
    build_cae(target='dvae')


def test_reconstruction_puts_the_masked_predictions_in_place(cae):
  method, params, images = cae
  out = jax.jit(method.reconstruct)(params, images, jax.random.key(3))
  assert out['pred_images'].shape == images.shape and np.isfinite(float(out['loss']))


def test_teacher_target_regresses_a_frozen_teachers_features():
  c = load_config('configs/cae/fashion_mnist.py', 'tiny')
  c.cae.update(target='teacher', teacher_model=dict(width=24, depth=1, num_heads=2))
  method = build(c, Facts.for_images((28, 28, 1)))
  images = jax.random.normal(jax.random.key(0), (2, 28, 28, 1))
  params = nn.meta.unbox(jax.jit(method.init)(jax.random.key(1), {'image': images})[0])
  extras = {'teacher': jax.tree.map(jnp.asarray, method.load_external()['teacher'])}
  assert method.external_extras == ('teacher',) and params['decoder']['head']['kernel'].shape[-1] == 24

  def loss(p, t):
    return method.loss_fn(p, {'teacher': t}, {'image': images}, jax.random.key(2), 0)[0]

  value, (_, g_teacher) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, extras["teacher"])
  assert np.isfinite(float(value)) and all(not np.any(np.asarray(g)) for g in jax.tree.leaves(g_teacher))
