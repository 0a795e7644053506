"""Loss and probe-accuracy PNGs from metrics.jsonl."""

import json

import matplotlib.image
import numpy as np
import pytest

from mim_jax.eval import plots


@pytest.fixture
def metrics_file(tmp_path):
  rows = []
  for step in range(0, 200, 10):
    rows.append({'step': step, 'train/loss': 1.0 / (1 + step), 'train/lr': min(step, 50) * 1e-4})
    if step % 50 == 0:
      rows.append({'step': step, 'monitor/knn/top1': 0.2 + step / 400, 'monitor/val_loss': 0.5})
  rows.append({'step': 100, 'train/loss': float('nan')})  # a non-finite value is skipped
  rows.append({'step': 190, 'train/loss': 0.004})  # a resumed run logged step 190 again: last wins
  path = tmp_path / 'run' / 'metrics.jsonl'
  path.parent.mkdir()
  text = '\n'.join(json.dumps(r) for r in rows) + '\n{"step": 200, "train/lo'  # truncated last line
  path.write_text(text)
  return str(path)


def _non_white_fraction(png):
  img = matplotlib.image.imread(png)
  return float((img[..., :3] < 0.9).any(axis=-1).mean())


def test_series_reads_finite_values_in_step_order(metrics_file):
  rows = plots.read_metrics(metrics_file)
  steps, loss = plots.series(rows, 'train/loss')
  assert list(steps) == list(range(0, 200, 10))
  assert loss[10] == pytest.approx(1.0 / 101)  # the NaN at step 100 did not replace the real value
  assert loss[-1] == pytest.approx(0.004)
  steps, acc = plots.series(rows, 'monitor/knn/top1')
  np.testing.assert_allclose(acc, [0.2, 0.325, 0.45, 0.575])


def test_plot_loss_and_probe_curves(metrics_file, tmp_path):
  out = plots.plot_loss_curve(metrics_file, str(tmp_path / 'figs' / 'loss.png'))
  assert out.endswith('loss.png') and 0.01 < _non_white_fraction(out) < 0.9
  out = plots.plot_probe_curve(metrics_file, str(tmp_path / 'probe.png'))
  assert 0.01 < _non_white_fraction(out) < 0.9
  rows = plots.read_metrics(metrics_file)
  assert plots._expand(rows, plots.DEFAULT_PROBE_KEYS) == ['monitor/knn/top1']
  assert plots._expand(rows, ('train/loss', '*val*loss')) == ['train/loss', 'monitor/val_loss']


def test_missing_keys_raise(metrics_file, tmp_path):
  with pytest.raises(ValueError, match='no values'):
    plots.plot_probe_curve(metrics_file, str(tmp_path / 'x.png'), keys=('monitor/linear_probe/top1',))
