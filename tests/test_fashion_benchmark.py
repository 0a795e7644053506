"""benchmarks/fashion_mnist.py: the grid it runs, one budget per root, finished runs skipped, generated tables."""

import json
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'benchmarks'))

import fashion_mnist as bench  # noqa: E402


def test_method_table_runs_every_method_and_the_baselines_once():
  runs = bench.runs_for('methods', [0, 1])
  names = [name for name, _, _ in runs]
  assert names[:2] == ['mae_seed0', 'simmim_seed0'] and len(names) == 2 * len(bench.METHOD_VARIANTS)
  for name, config, overrides in runs:
    assert config.startswith('configs/ablation/fashion_mnist.py:')
    assert overrides['seed'] == int(name[-1])
    # the random-init and raw-pixel baselines do not depend on the method: only the MAE row pays for them
    assert (overrides.get('eval.random_init_baseline') is False) == (not name.startswith('mae_'))


def test_ablation_cells_change_one_thing_each():
  runs = {name: (config, overrides) for name, config, overrides in bench.runs_for('ablations', [2])}
  assert set(runs) == {f'{cell}_seed2' for cell in bench.ABLATIONS}
  assert runs['ratio0.9_seed2'][1]['mask.ratio'] == 0.9
  assert runs['target_raw_pixels_seed2'][1]['norm_pix_loss'] is False
  assert runs['mask_grid_seed2'][0].endswith(':grid') and runs['baseline_seed2'][0] == bench.MAE
  for cells, _ in bench.TABLES.values():  # every table cell is a run of a grid
    assert set(cells) <= (set(bench.ABLATIONS) | set(bench.TEACHER_CELLS) | set(bench.TWO_VIEW_CELLS)
                          | set(bench.BACKBONE_CELLS))


def test_backbone_cell_is_maes_recipe_with_illamas_blocks():
  from conftest import load_config

  ((name, config, overrides),) = bench.runs_for('backbones', [1])
  assert name == 'mae_illama_blocks_seed1' and overrides['seed'] == 1
  path, arg = config.split(':')
  cell, recipe = load_config(path, arg), load_config(bench.MAE)
  assert cell.model.encoder.norm == 'rmsnorm' and cell.model.encoder.causal_mask == 'none'
  cell.model.encoder = recipe.model.encoder
  assert cell.to_dict() == recipe.to_dict()  # only the encoder's blocks differ


def test_two_view_cells_match_mae_at_the_same_visibility():
  """CropMAE and CroCo reconstruct a view with 2 of 16 tokens visible, as the teachers grid's MAE at 0.875."""
  from conftest import load_config

  from mim_jax.methods import Facts, build

  runs = {name: (config, overrides) for name, config, overrides in bench.runs_for('two_views', [0])}
  assert set(runs) == {f'{cell}_seed0' for cell in bench.TWO_VIEW_CELLS}
  assert runs['cropmae_random_views_seed0'][1]['pairs.kind'] == 'random_views'
  mae = build(load_config(bench.MAE), Facts.for_images((28, 28, 1)))
  mae_875 = mae.masker.__class__(mae.masker.grid, ratio=0.875)
  for config in (bench.CROPMAE, bench.CROCO):
    method = build(load_config(config), Facts.for_images((28, 28, 1)))
    assert method.masker.len_keep == mae_875.len_keep == 2


def test_teacher_cells_share_the_student_and_differ_in_the_teacher():
  runs = {name: (config, overrides) for name, config, overrides in bench.runs_for('teachers', [1], '/t')}
  assert set(runs) == {f'{cell}_seed1' for cell in bench.TEACHER_CELLS}
  assert runs['mae_ratio0.875_seed1'] == (bench.MAE, {'mask.ratio': 0.875, **bench.NO_BASELINES, 'seed': 1})
  assert runs['dmae_ratio0.875_seed1'][1]['dmae.teacher'] == '/t'
  assert runs['dmae_random_teacher_seed1'][1] == {'dmae.teacher_random': True, 'dmae.teacher': '/t',
                                                  **bench.NO_BASELINES, 'seed': 1}
  assert runs['maskalign_no_alignment_seed1'][1] == {'maskalign.fusion': 'simple', 'maskalign.teacher': '/t',
                                                     **bench.NO_BASELINES, 'seed': 1}
  from conftest import load_config
  assert load_config('configs/dmae/fashion_mnist.py').mask.ratio == 0.875  # the same ratio as the MAE cell
  # MaskAlign's 0.7 and the MAE baseline's 0.75 both leave int(16 * 0.3) = int(16 * 0.25) = 4 visible tokens
  assert load_config(bench.MASKALIGN).mask.ratio == 0.7 and load_config(bench.MAE).mask.ratio == 0.75
  with pytest.raises(SystemExit, match='--teacher must be a pre-training workdir'):
    bench.main(['teachers', '--root', '/tmp/unused_root', '--teacher', '/nonexistent'])


def test_one_budget_per_root(tmp_path):
  bench.check_budget(str(tmp_path), 500, 10000)
  bench.check_budget(str(tmp_path), 500, 10000)  # the same budget resumes
  with pytest.raises(SystemExit, match='another --root'):
    bench.check_budget(str(tmp_path), 1000, 10000)
  with pytest.raises(SystemExit, match='another --root'):
    bench.check_budget(str(tmp_path), 500, None)


def test_finished_runs_are_skipped(tmp_path):
  (tmp_path / 'mae_seed0').mkdir()
  (tmp_path / 'mae_seed0' / 'summary.json').write_text('{}')
  assert bench.run_one(str(tmp_path), 'mae_seed0', 'configs/ablation/fashion_mnist.py:mae', {}, 10, None) == (
    'mae_seed0: done before')


def test_tables_and_ratio_figure_from_summaries(tmp_path, capsys):
  accuracies = {'ratio0.25': (0.70, 0.72), 'ratio0.5': (0.74, 0.76), 'baseline': (0.80, 0.78), 'ratio0.9': (0.75, 0.75)}
  for cell, values in accuracies.items():
    for seed, top1 in enumerate(values):
      run = tmp_path / f'{cell}_seed{seed}'
      run.mkdir()
      run.joinpath('summary.json').write_text(json.dumps(
        {'linear_probe/top1': top1, 'knn/top1': top1 - 0.01, 'logreg/top1': top1 + 0.01, 'method': 'mae'}))
  figure = tmp_path / 'ratio.png'
  bench.main(['tables', '--root', str(tmp_path), '--figure', str(figure)])
  out = capsys.readouterr().out
  ratio_table = out.split('### mask ratio')[1].split('###')[0]
  rows = [line.split(' | ')[0] for line in ratio_table.splitlines() if line.startswith('| ') and ' ± ' in line]
  assert rows == ['| ratio0.25', '| ratio0.5', '| baseline', '| ratio0.9']  # in the paper's order, seeds pooled
  assert '| baseline | 2 | 79.0 ± 1.4 | 78.0 ± 1.4 | 80.0 ± 1.4 |' in out
  assert figure.stat().st_size > 10_000


def test_method_table_in_the_order_of_the_grid(tmp_path, capsys):
  for i, variant in enumerate(('hpm', 'mae', 'simmim')):
    (tmp_path / f'{variant}_seed0').mkdir()
    (tmp_path / f'{variant}_seed0' / 'summary.json').write_text(json.dumps(
      {'linear_probe/top1': 0.8 + i / 100, 'knn/top1': 0.7, 'logreg/top1': 0.75, 'method': variant}))
  bench.main(['tables', '--root', str(tmp_path)])
  out = capsys.readouterr().out
  rows = [line.split(' | ')[0] for line in out.splitlines() if line.startswith('| ') and ' ± ' not in line
          and '---' not in line and 'run' not in line]
  assert rows == ['| mae', '| simmim', '| hpm'] and '### mask ratio' not in out


def test_shorter_runs_rederive_what_depends_on_the_length():
  from mim_jax.recipes import hpm_ema_for_steps

  assert bench.shorter_run('configs/ablation/fashion_mnist.py:mae', 400) == {'total_steps': 400, 'warmup_steps': 20}
  hpm = bench.shorter_run('configs/ablation/fashion_mnist.py:hpm', 400)
  assert hpm['hpm.ema_decay_end'] == hpm_ema_for_steps(400)['ema_decay_end'] < hpm_ema_for_steps(6000)['ema_decay_end']


def test_tables_of_a_missing_root_is_one_line(tmp_path):
  with pytest.raises(SystemExit, match='no runs under .*missing: run the methods or ablations grid'):
    bench.main(['tables', '--root', str(tmp_path / 'missing')])
