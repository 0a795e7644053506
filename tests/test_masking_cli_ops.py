"""The shared mask helpers (``mim_jax.masking.ops``) and the ``python -m mim_jax.masking`` command line."""

from __future__ import annotations

import subprocess
import sys

import jax
import numpy as np
import pytest

from mim_jax import masking
from mim_jax.masking import Grid
from mim_jax.masking import __main__ as cli
from mim_jax.masking import ops


def test_neighbour_agreement_extremes_and_iid():
  g = Grid(6, 6)
  checker = (np.add.outer(np.arange(6), np.arange(6)) % 2).reshape(1, 36)
  np.testing.assert_allclose(ops.neighbour_agreement(checker, g), [0.0])
  np.testing.assert_allclose(ops.neighbour_agreement(np.ones((2, 36)), g), [1.0, 1.0])
  stripes = np.repeat(np.arange(6) % 2, 6).reshape(1, 36)  # rows alternate: all horizontal pairs agree
  np.testing.assert_allclose(ops.neighbour_agreement(stripes, g), [0.5])
  iid = np.random.default_rng(0).random((4000, 36)) < 0.75
  assert abs(ops.neighbour_agreement(iid, g).mean() - ops.random_agreement(0.75)) < 0.01


def _block_mask(g: Grid, top: int, left: int, h: int, w: int) -> np.ndarray:
  m = np.zeros((g.height, g.width), bool)
  m[top:top + h, left:left + w] = True
  return m.reshape(1, -1)


@pytest.mark.parametrize('seed', range(3))
def test_exact_count_boundary_tops_up_next_to_the_mask(seed):
  g = Grid(6, 6)
  masked = _block_mask(g, 1, 1, 2, 2)  # 4 masked, ask for 5
  info = ops.exact_count(jax.random.key(seed), masked, g, len_keep=31, fill='boundary')
  out = np.asarray(info.mask).reshape(6, 6).astype(bool)
  assert out.sum() == 5 and out[1:3, 1:3].all()
  extra = np.argwhere(out & ~masked.reshape(6, 6))[0]
  assert any(np.abs(extra - cell).sum() == 1 for cell in np.argwhere(masked.reshape(6, 6)))


@pytest.mark.parametrize('seed', range(3))
def test_exact_count_boundary_trims_from_the_edge(seed):
  g = Grid(6, 6)
  masked = _block_mask(g, 1, 1, 3, 3)  # 9 masked, ask for 8: the centre is the only interior token
  info = ops.exact_count(jax.random.key(seed), masked, g, len_keep=28, fill='boundary')
  out = np.asarray(info.mask).reshape(6, 6)
  assert out.sum() == 8 and out[2, 2] == 1 and out[masked.reshape(6, 6)].sum() == 8


def test_exact_count_random_is_exact_and_keeps_the_mask_when_topping_up():
  g = Grid(5, 5)
  masked = np.random.default_rng(0).random((16, 25)) < 0.5
  for len_keep in (3, 12, 20):
    out = np.asarray(ops.exact_count(jax.random.key(1), masked, g, len_keep, fill='random').mask)
    np.testing.assert_array_equal(out.sum(1), 25 - len_keep)
    rows = masked.sum(1) <= 25 - len_keep  # rows that only needed a top-up keep all their masked tokens
    assert (out[rows] >= masked[rows]).all()


def test_list_prints_every_generator_with_a_description(capsys):
  assert cli.main(['--list']) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert [line.split()[0] for line in lines] == masking.names()
  assert all(len(line.split(maxsplit=1)) == 2 and len(line.split(maxsplit=1)[1]) > 20 for line in lines)
  assert any(line.startswith('colormae') and 'noise' in line for line in lines)


def test_show_writes_a_small_png(tmp_path, capsys):
  out = tmp_path / 'masks.png'
  rc = cli.main(['--show', 'colormae', '--out', str(out), '--grid', '8x10', '--ratio', '0.6', '--seed', '3',
                 '--rows', '2', '--cols', '3', '--set', 'color=red', '--set', 'bank_size=8'])
  assert rc == 0
  data = out.read_bytes()
  assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) < 150_000
  printed = capsys.readouterr().out
  assert 'color=red' in printed and 'grid 8x10' in printed and '48 masked' in printed


def test_show_reports_bad_settings(tmp_path, capsys):
  assert cli.main(['--show', 'block', '--out', str(tmp_path / 'x.png'), '--set', 'fill=sideways']) == 2
  assert 'fill' in capsys.readouterr().err
  assert cli.main(['--show', 'nope', '--out', str(tmp_path / 'x.png')]) == 2


def test_settings_parse_python_literals():
  assert cli.parse_settings(['ratio=0.5', 'color=red', 'max_block=None', 'flips=False', 'scale=2']) == {
      'ratio': 0.5, 'color': 'red', 'max_block': None, 'flips': False, 'scale': 2}
  assert cli.parse_grid('14') == Grid(14, 14) and cli.parse_grid('7x9') == Grid(7, 9)


def test_module_entry_point_runs():
  res = subprocess.run([sys.executable, '-m', 'mim_jax.masking', '--list'], capture_output=True, text=True,
                       check=True, timeout=120)
  assert 'block' in res.stdout and 'gmml' in res.stdout
