"""python -m mim_jax.report: one row per workdir, accuracies in percent, clear error without summary.json."""

import json
import subprocess
import sys

import pytest

from mim_jax import report

MAE = {
  'knn/top1': 0.88,
  'linear_probe/top1': 0.91234,
  'linear_probe/top5': 0.995,
  'random_init/linear_probe/top1': 0.71,
  'raw_pixels/logreg/top1': 0.96,
  'method': 'mae',
  'checkpoint_step': 2000,
  'config_hash': 'abc123def456',
  'eval/seconds': 12.3,
}
SIMMIM = {'linear_probe/top1': 0.8, 'finetune': {'top1': 0.975}, 'method': 'simmim', 'checkpoint_step': 1000}


@pytest.fixture
def workdirs(tmp_path):
  paths = []
  for name, summary in (('mae_run', MAE), ('simmim_run', SIMMIM)):
    (tmp_path / name).mkdir()
    (tmp_path / name / 'summary.json').write_text(json.dumps(summary))
    paths.append(str(tmp_path / name))
  return paths


def _lines(capsys):
  return capsys.readouterr().out.strip().splitlines()


def test_markdown_table(workdirs, capsys):
  assert report.main(workdirs) == 0
  header, align, mae, simmim = _lines(capsys)
  cols = [c.strip() for c in header.strip('|').split('|')]
  assert cols == [
    'run', 'method', 'linear_probe/top1', 'linear_probe/top5', 'knn/top1', 'finetune/top1',
    'random_init/linear_probe/top1', 'raw_pixels/logreg/top1', 'checkpoint_step', 'config_hash',
  ]  # fmt: skip
  assert 'eval/seconds' not in header  # not an accuracy: only with --all / --keys
  assert align.startswith('| :--- | :--- | ---: |')
  mae_cells = [c.strip() for c in mae.strip('|').split('|')]
  assert mae_cells == ['mae_run', 'mae', '91.2', '99.5', '88.0', '-', '71.0', '96.0', '2000', 'abc123def456']
  simmim_cells = [c.strip() for c in simmim.strip('|').split('|')]
  assert simmim_cells[:6] == ['simmim_run', 'simmim', '80.0', '-', '-', '97.5']


def test_keys_with_wildcards_and_csv(workdirs, capsys):
  assert report.main([*workdirs, '--keys', 'method,*/top5,eval/seconds', '--format', 'csv']) == 0
  assert _lines(capsys) == [
    'run,method,linear_probe/top5,eval/seconds',
    'mae_run,mae,0.995,12.3',
    'simmim_run,simmim,,',
  ]


def test_missing_summary_is_a_clear_error(workdirs, tmp_path, capsys):
  empty = tmp_path / 'not_evaluated'
  empty.mkdir()
  assert report.main([workdirs[0], str(empty)]) == 2
  err = capsys.readouterr().err
  assert 'no summary.json' in err and 'not_evaluated' in err
  assert report.main([workdirs[0], str(empty), '--skip-missing']) == 0
  assert len(_lines(capsys)) == 3


def test_module_entry_point(workdirs):
  out = subprocess.run(
    [sys.executable, '-m', 'mim_jax.report', *workdirs], capture_output=True, text=True, check=True
  ).stdout
  assert '| mae_run | mae | 91.2 |' in out


def test_seed_groups_give_mean_and_std(tmp_path, capsys):
  runs = {'ratio0.5_seed0': 0.80, 'ratio0.5_seed1': 0.84, 'ratio0.5_seed2': 0.82, 'ratio0.75_seed0': 0.9}
  paths = []
  for name, acc in runs.items():
    (tmp_path / name).mkdir()
    (tmp_path / name / 'summary.json').write_text(json.dumps({'method': 'mae', 'knn/top1': acc}))
    paths.append(str(tmp_path / name))
  assert report.main([*paths, '--seeds', '--keys', 'method,knn/top1']) == 0
  header, _, first, second = _lines(capsys)
  assert header == '| run | n | method | knn/top1 |'
  assert first == '| ratio0.5 | 3 | mae | 82.0 ± 2.0 |'  # mean and sample std over the seeds, in percent
  assert second == '| ratio0.75 | 1 | mae | 90.0 |'
