"""CropMAE and CroCo: the recipes, the reference view really feeds the decoder, their masks' counts, the encoder
without a CLS token, dropout in CropMAE's training step, and a train run on pair batches from the real pipeline.
(Tensor parity with the official code: tests/test_parity.py.)"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from mim_jax import config as config_lib
from mim_jax import masking
from mim_jax.methods import Facts, build
from mim_jax.models.vit import ViTEncoder

TINY = {'cropmae': 'configs/cropmae/fashion_mnist.py', 'croco': 'configs/croco/fashion_mnist.py'}


@pytest.fixture(scope='module', params=sorted(TINY))
def two_view(request):
  c = load_config(TINY[request.param], 'tiny')
  method = build(c, Facts.for_images((28, 28, 1)))
  k1, k2 = jax.random.split(jax.random.key(0))
  batch = {'view1': jax.random.normal(k1, (3, 28, 28, 1)), 'view2': jax.random.normal(k2, (3, 28, 28, 1)),
           'label': jnp.zeros((3,), jnp.int32)}
  params, _ = jax.jit(method.init)(jax.random.key(1), batch)
  return method, nn.meta.unbox(params), batch


def test_the_decoder_reads_the_reference_view(two_view):
  """The prediction of view 1 changes with view 2, and the reference's encoding gets a gradient."""
  method, params, batch = two_view
  info = method.masker(jax.random.key(2), 3)
  forward = jax.jit(lambda p, v1, v2: method.forward(p, v1, v2, info))
  out = forward(params, batch['view1'], batch['view2'])
  other = forward(params, batch['view1'], batch['view2'][::-1])
  assert not np.allclose(out['pred'], other['pred'])
  grad = jax.grad(lambda v2: forward(params, batch['view1'], v2)['loss'])(batch['view2'])
  assert np.abs(np.asarray(grad)).max() > 0
  # The visible tokens of view 1 do not depend on view 2 (the encoder sees each view alone).
  np.testing.assert_array_equal(out['latent'], other['latent'])


def test_train_batches_are_pairs_and_eval_batches_single_images(two_view):
  method, params, _ = two_view
  assert set(method.batch_fields(True)) == {'view1', 'view2', 'label'}
  assert set(method.batch_fields(False)) == {'image', 'label'}
  feats = method.feature(params, {'image': jnp.ones((2, 28, 28, 1)), 'label': jnp.zeros((2,), jnp.int32)},
                         'pooled')
  assert feats.shape == (2, method.encoder.width)


def test_cropmae_dropout_is_on_in_training_only():
  c = load_config(TINY['cropmae'], 'tiny')
  method = build(c, Facts.for_images((28, 28, 1)))
  batch = method.example_batch(2)
  batch = {k: np.random.default_rng(0).normal(size=v.shape).astype(v.dtype) for k, v in batch.items()}
  params, extras = jax.jit(method.init)(jax.random.key(0), batch)
  info = method.masker(jax.random.key(1), 2)
  evaluate = jax.jit(lambda p: method.forward(p, batch['view1'], batch['view2'], info)['loss'])
  train = jax.jit(lambda p, key: method.forward(p, batch['view1'], batch['view2'], info, key)['loss'])
  eval_a, eval_b = evaluate(params), evaluate(params)
  train_a, train_b = train(params, jax.random.key(3)), train(params, jax.random.key(4))
  assert float(eval_a) == float(eval_b) and float(train_a) != float(train_b)


def test_mask_counts_num_visible_and_crocos_rounding():
  g = masking.Grid(8, 8)
  assert masking.build('random', g, ratio=0.9).len_keep == 6  # MAE: int(64 * 0.1)
  assert masking.build('random', g, ratio=0.9, count='masked').len_keep == 7  # CroCo: 64 - int(57.6)
  two = masking.build('random', g, num_visible=2)
  info = two(jax.random.key(0), 5)
  assert info.ids_keep.shape == (5, 2) and np.all(np.asarray(info.mask).sum(1) == 62)
  assert masking.build('random', masking.Grid(14, 14), ratio=0.985).len_keep == 2  # the paper's 2 of 196
  with pytest.raises(ValueError, match='no visible token'):
    masking.build('random', masking.Grid(4, 4), ratio=0.985)
  with pytest.raises(ValueError, match='num_visible must be an int'):
    masking.build('random', g, num_visible=65)
  with pytest.raises(ValueError, match="'visible'"):
    masking.build('random', g, count='kept')


def test_vit_without_class_token():
  enc = ViTEncoder(patch_size=4, width=16, depth=1, num_heads=2, class_token='none')
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 1))
  params = enc.init(jax.random.key(1), x)['params']
  assert 'cls_token' not in params
  out = enc.apply({'params': params}, x)
  assert out['cls'] is None and out['tokens'].shape == (2, 16, 16)
  np.testing.assert_allclose(out['pooled'], out['tokens'].mean(1), rtol=1e-6)
  ids = jnp.array([[3, 0, 7], [1, 2, 15]])
  sub = enc.apply({'params': params}, x, ids_keep=ids)['tokens']
  assert sub.shape == (2, 3, 16)
  with pytest.raises(ValueError, match='needs the CLS token first'):
    enc.apply({'params': params}, x, cls_attention=True)
  with pytest.raises(ValueError, match="class_token must be one of"):
    enc.clone(class_token='middle').init(jax.random.key(1), x)


def test_croco_refuses_an_encoder_with_cls():
  c = load_config(TINY['croco'], 'tiny')
  c.model.encoder.class_token = 'first'
  with pytest.raises(ValueError, match="class_token='none'"):
    build(c, Facts.for_images((28, 28, 1)))


@pytest.mark.parametrize('path,arg,shape', [
    ('configs/cropmae/vit_small_in1k.py', None, (224, 224, 3)),
    ('configs/cropmae/vit_small_in1k.py', 'cpu', (32, 32, 1)),
    ('configs/croco/vit_base_in1k.py', None, (224, 224, 3)), ('configs/croco/vit_base_in1k.py', 'cpu', (32, 32, 1)),
    ('configs/croco/vit_base_in1k.py', 'v2', (224, 224, 3)), ('configs/croco/vit_base_in1k.py', 'cpu,v2', (32, 32, 1)),
    ('configs/cropmae/fashion_mnist.py', None, (28, 28, 1)), ('configs/croco/fashion_mnist.py', None, (28, 28, 1)),
    ('configs/croco/fashion_mnist.py', 'tiny,v2', (28, 28, 1)), ('configs/croco/stereo.py', None, (64, 64, 3)),
    ('configs/croco/stereo.py', 'mae', (64, 64, 3))])
def test_recipes_validate_and_build(path, arg, shape):
  c = load_config(path, arg)
  config_lib.validate(c)
  method = build(c, Facts.for_images(shape))
  assert method.name == c.method


def test_paper_recipes():
  c = load_config('configs/cropmae/vit_small_in1k.py')
  m = build(c, Facts.for_images((224, 224, 3)))
  assert (m.encoder.width, m.encoder.depth, m.masker.len_keep) == (384, 12, 2)
  assert (m.decoder.width, m.decoder.depth, m.decoder.num_heads, m.decoder.ff_width) == (256, 4, 8, 2048)
  assert c.batch_size == 2048 and c.optimizer.base_lr == 1e-4 and c.warmup_epochs == 20.0
  assert tuple(c.pairs.global_scale) == (0.10, 1.0) and tuple(c.pairs.local_scale) == (0.3, 0.6)
  c = load_config('configs/croco/vit_base_in1k.py')
  m = build(c, Facts.for_images((224, 224, 3)))
  assert m.masker.len_keep == 196 - 176 and m.encoder.class_token == 'none'
  assert (m.decoder.width, m.decoder.depth, m.decoder.num_heads) == (512, 8, 16)
  assert c.batch_size == 256 and c.epochs == 800 and c.stop_after_steps == 400 * 5004
  assert c.pairs.kind == 'homography' and c.eval.feature == 'pooled'
  c = load_config('configs/croco/vit_base_in1k.py', 'v2')
  m = build(c, Facts.for_images((224, 224, 3)))
  assert (m.encoder.width, m.encoder.rope, m.encoder.pos_embed, m.decoder.rope) == (1024, '2d', 'none', '2d')
  assert (m.decoder.width, m.decoder.depth, m.decoder.num_heads) == (768, 12, 12)
  assert c.batch_size == 512 and c.epochs == 250 and c.warmup_epochs == 12
  assert c.stop_after_steps == 125 * (1_281_167 // 512)


# CropMAE's run takes the same pipeline path as CroCo's: slow only (pytest -m slow).
@pytest.mark.parametrize('name', [pytest.param('cropmae', marks=pytest.mark.slow), 'croco'])
def test_tiny_run_trains_on_pairs_from_the_pipeline(name, tmp_path):
  from mim_jax.train import loop

  c = load_config(TINY[name], 'tiny')
  c.eval.enabled = False
  result = loop.train(c, str(tmp_path / name))
  assert result.state.step == c.total_steps
  rows = [json.loads(line) for line in (tmp_path / name / 'metrics.jsonl').read_text().splitlines()]
  losses = [r['train/loss'] for r in rows if 'train/loss' in r]
  assert losses and all(np.isfinite(losses))


def test_patch_correspondence_scores_against_the_homography(two_view):
  """Identical views under the identity map: every patch matches itself (noise images: no tied features); a
  homography claiming a one-patch shift turns every exact hit into a neighbour."""
  from mim_jax.eval import two_view as tv

  method, params, batch = two_view
  x = np.asarray(batch['view1'])
  identity = np.repeat(np.eye(3, dtype=np.float32)[None], len(x), 0)
  out = tv.patch_correspondence(method, params, x, x, identity)
  assert out['exact'] == 1.0 and out['within1'] == 1.0 and out['patches'] == len(x) * 49
  assert out['chance_exact'] == pytest.approx(1 / 49)
  shift = identity.copy()
  shift[:, 0, 2] = method.encoder.patch_size  # view-1 x maps to x + one patch in view 2
  out = tv.patch_correspondence(method, params, x, x, shift)
  assert out['exact'] == 0.0 and out['within1'] == 1.0 and out['patches'] == len(x) * 42
  losses = tv.reference_losses(method, params, x, np.asarray(batch['view2']))
  assert losses['ratio'] == pytest.approx(losses['true'] / losses['shuffled'])
