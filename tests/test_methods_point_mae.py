"""Point-MAE beyond its parity fixture: the Chamfer loss's definition, the masked-group count, features, errors."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mim_jax.methods.base import Facts, build
from mim_jax.methods.point_mae import chamfer_l2

ENCODER = dict(name='point_transformer', width=32, depth=1, num_heads=2, num_groups=16, group_size=8)


def _method(num_points=128, encoder=ENCODER, **mask):
  c = ml_collections.ConfigDict({'method': 'point_mae', 'model': {'encoder': dict(encoder)},
                                 'mask': {'name': 'random', 'ratio': 0.6, 'count': 'masked', **mask},
                                 'data': {'num_points': num_points},
                                 'point_mae': {'decoder_depth': 1, 'decoder_heads': 2}})
  return build(c, Facts.for_images((1, 1, 1)))


def test_chamfer_l2_is_the_sum_of_the_two_mean_squared_nearest_distances():
  a = np.array([[[0.0, 0, 0], [1, 0, 0]]], np.float32)
  b = np.array([[[0.0, 0, 0], [0, 2, 0], [1, 0, 1]]], np.float32)
  # a -> b: 0 and 1 (to (1, 0, 1)); b -> a: 0, 4, 1
  np.testing.assert_allclose(float(chamfer_l2(jnp.asarray(a), jnp.asarray(b))), 0.5 + 5 / 3, rtol=1e-6)
  assert float(chamfer_l2(jnp.asarray(b), jnp.asarray(b))) == 0.0


@pytest.mark.slow  # kept out of the default run for its time (the default suite stays near 15 min)
def test_masking_counts_features_and_training_step():
  m = _method()
  assert m.masker.num_masked == 9 and m.masker.len_keep == 7  # int(0.6 * 16) masked, the official count
  pts = np.random.default_rng(0).uniform(-1, 1, (2, 128, 3)).astype(np.float32)
  batch = {'points': pts, 'label': np.zeros(2, np.int32)}
  params, extras = jax.jit(m.init)(jax.random.key(0), batch)
  loss, (_, new_extras) = jax.jit(m.loss_fn)(params, extras, batch, jax.random.key(1), 0)
  assert np.isfinite(float(loss)) and float(loss) > 0
  before = np.asarray(extras['batch_stats']['encoder']['group_encoder']['bn1']['mean'])
  after = np.asarray(new_extras['batch_stats']['encoder']['group_encoder']['bn1']['mean'])
  assert not np.allclose(before, after)  # training updates the mini-PointNet's running statistics
  out = jax.jit(m.encode)(m.eval_params(params, extras), batch)
  tokens = np.asarray(out['patch_tokens'])
  assert out['cls'] is None and tokens.shape == (2, 16, 32)
  np.testing.assert_allclose(np.asarray(out['pooled']), tokens.max(1) + tokens.mean(1), rtol=1e-5, atol=1e-6)


def test_bad_settings_get_one_line_errors():
  with pytest.raises(ValueError, match='need clouds of at least'):
    _method(num_points=12)
  with pytest.raises(ValueError, match="point transformer"):
    _method(encoder={'name': 'resnet', 'depths': (1,), 'widths': (8,)})
  m = _method()
  with pytest.raises(ValueError, match=r'expected point clouds of shape \[batch, 128, 3\]'):
    m.loss_fn({}, {}, {'points': jnp.zeros((2, 64, 3))}, jax.random.key(0), 0)


def test_recipes_build_and_validate():
  from conftest import load_config
  from mim_jax.config import validate

  for arg in (None, 'tiny', 'paper'):
    validate(load_config('configs/point_mae/shapes.py', arg))
  paper = load_config('configs/point_mae/shapes.py', 'paper')
  assert (paper.model.encoder.width, paper.model.encoder.depth, paper.point_mae.decoder_depth) == (384, 12, 4)
  assert (paper.mask.ratio, paper.mask.count, paper.model.encoder.num_groups) == (0.6, 'masked', 64)


@pytest.mark.slow
def test_pretrain_on_the_procedural_shapes_end_to_end(tmp_path):
  import json

  from conftest import load_config
  from mim_jax.train import loop

  loop.train(load_config('configs/point_mae/shapes.py', 'tiny'), str(tmp_path))
  losses = [json.loads(line).get('train/loss') for line in open(tmp_path / 'metrics.jsonl')]
  losses = [v for v in losses if v is not None]
  assert losses and np.isfinite(losses).all()
