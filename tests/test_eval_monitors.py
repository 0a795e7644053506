"""Online monitors (knn, least_squares, reconstruction, val_loss) on a tiny MAE, and the end-of-run figures."""

import json
import os
import types

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest
from conftest import load_config

from mim_jax import methods
from mim_jax.eval import monitors, pretrain_eval


@pytest.fixture(scope='module')
def setup():
  config = load_config('configs/mae/digits.py', 'tiny')
  method = methods.build(config, methods.Facts.for_images((16, 16, 1)))
  params = nn.meta.unbox(jax.jit(method.init)(jax.random.PRNGKey(0), method.example_batch(2))[0])
  return config, method, params


def _state(params):  # what the train loop hands its hooks (monitors read params and extras)
  return types.SimpleNamespace(params=params, extras={})


def _build(setup, workdir, **blocks):
  config, method, _ = setup
  return monitors.build(ml_collections.ConfigDict(blocks), method=method, config=config, workdir=str(workdir))


def test_probe_monitors_share_features_and_score_in_range(setup, tmp_path):
  built = _build(setup, tmp_path, knn=dict(every_steps=5, num_train=300, num_eval=100),
                 ridge=dict(kind='least_squares', every_steps=5, num_train=300, num_eval=100))
  knn, ls = sorted(built, key=lambda m: m.name != 'knn')
  assert (knn.name, knn.every_steps, ls.name) == ('knn', 5, 'ridge')
  state = _state(setup[2])
  a, b = knn(10, state), ls(10, state)
  assert set(a) == {'monitor/knn/top1', 'monitor/knn/top5'} and set(b) == {'monitor/ridge/top1', 'monitor/ridge/top5'}
  assert 0.2 < b['monitor/ridge/top1'] <= b['monitor/ridge/top5'] <= 1.0  # ridge on 300 digits: far above chance
  assert knn(10, state) == a  # deterministic


def test_val_loss_uses_fixed_masks_and_reconstruction_writes_a_figure(setup, tmp_path):
  config, method, params = setup
  built = _build(setup, tmp_path, val_loss=dict(every_steps=2, batch_size=32, seed=7),
                 reconstruction=dict(every_steps=4, num_images=4))
  val, rec = sorted(built, key=lambda m: m.name != 'val_loss')
  first = val(2, _state(params))['monitor/val_loss/loss']
  assert val(4, _state(params))['monitor/val_loss/loss'] == pytest.approx(first)  # same params and masks
  batch = {'image': val.batch['image'], 'label': val.batch['label']}
  direct = jax.jit(lambda p, b: method.loss_fn(p, {}, b, jax.random.PRNGKey(7), 2)[0])(params, batch)
  assert first == pytest.approx(float(direct), rel=1e-5)
  out = rec(4, _state(params))
  assert np.isfinite(out['monitor/reconstruction/loss']) and os.path.exists(tmp_path / 'reconstruction_step4.png')


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
