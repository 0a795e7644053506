"""Online monitors (knn, least_squares, reconstruction, val_loss) on a tiny MAE, and the end-of-run figures."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import load_config

from mim_jax import methods
from mim_jax.eval import monitors, pretrain_eval


@pytest.fixture(scope='module')
def setup():
  config = load_config('configs/mae/digits.py', 'tiny')
  method = methods.build(config, (16, 16, 1))
  params = nn.meta.unbox(jax.jit(method.init)(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 1)))[0])
  return config, method, params


def _build(setup, workdir, **blocks):
  config, method, _ = setup
  return monitors.build(ml_collections.ConfigDict(blocks), method=method, config=config, workdir=str(workdir))


def test_probe_monitors_share_features_and_score_in_range(setup, tmp_path):
  built = _build(setup, tmp_path, knn=dict(every_steps=5, num_train=300, num_eval=100),
                 ridge=dict(kind='least_squares', every_steps=5, num_train=300, num_eval=100))
  knn, ls = sorted(built, key=lambda m: m.name != 'knn')
  assert (knn.name, knn.every_steps, ls.name) == ('knn', 5, 'ridge')
  params = setup[2]
  a, b = knn(10, params), ls(10, params)
  assert set(a) == set(b) == {'top1', 'top5'}
  assert 0.2 < b['top1'] <= b['top5'] <= 1.0  # ridge on 300 digits' features: far above chance (0.1)
  assert knn(10, params) == a  # deterministic


def test_val_loss_uses_fixed_masks_and_reconstruction_writes_a_figure(setup, tmp_path):
  config, method, params = setup
  built = _build(setup, tmp_path, val_loss=dict(every_steps=2, batch_size=32, seed=7),
                 reconstruction=dict(every_steps=4, num_images=4))
  val, rec = sorted(built, key=lambda m: m.name != 'val_loss')
  first = val(2, params)['loss']
  assert val(4, params)['loss'] == pytest.approx(first)  # same params, same masks -> same loss
  batch = {'image': val.batch['image'], 'label': val.batch['label']}
  direct = jax.jit(lambda p, b: method.loss_fn(p, {}, b, jax.random.PRNGKey(7), 2)[0])(params, batch)
  assert first == pytest.approx(float(direct), rel=1e-5)
  out = rec(4, params)
  assert np.isfinite(out['loss']) and os.path.exists(tmp_path / 'reconstruction_step4.png')


def test_bad_monitor_configs(setup, tmp_path):
  with pytest.raises(ValueError, match="unknown kind 'fid'"):
    _build(setup, tmp_path, fid=dict(every_steps=5))
  with pytest.raises(ValueError, match='every_steps must be a positive int'):
    _build(setup, tmp_path, knn=dict(every_steps=0))
  assert _build(setup, tmp_path) == []


def test_end_of_run_figures_and_eval_rows(tmp_path):
  rows = [{'step': s, 'train/loss': 1.0 / s, 'train/lr': 1e-3, 'monitor/knn/top1': 0.1 * s} for s in (1, 2, 3)]
  (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  drawn = pretrain_eval.run_figures(str(tmp_path), 3, {'linear_probe/top1': 0.5, 'random_init/knn/top1': 0.2,
                                                       'figure': 'x.png'})
  assert drawn == {'figures/loss_curve': 'loss_curve.png', 'figures/probe_accuracy': 'probe_accuracy.png'}
  assert os.path.getsize(tmp_path / 'loss_curve.png') > 1000 and os.path.exists(tmp_path / 'probe_accuracy.png')
  last = json.loads((tmp_path / 'metrics.jsonl').read_text().splitlines()[-1])
  assert last == {'step': 3, 'eval/linear_probe/top1': 0.5, 'eval/random_init/knn/top1': 0.2}


def test_no_probe_figure_without_accuracy_monitors(tmp_path):
  rows = [{'step': s, 'train/loss': 1.0 / s} for s in (1, 2)]
  (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  assert pretrain_eval.run_figures(str(tmp_path), 2, {'knn/top1': 0.5}) == {'figures/loss_curve': 'loss_curve.png'}
  assert not os.path.exists(tmp_path / 'probe_accuracy.png')
