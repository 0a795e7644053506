"""Video token masks: VideoMAE's tube (the same spatial mask in every frame) and VideoMAE V2's running cell (the
decoder reconstructs exactly half of every frame, each position in 2 of any 4 consecutive frames)."""

import jax
import numpy as np
import pytest

from mim_jax import masking
from mim_jax.masking.__main__ import main as masking_cli
from mim_jax.masking.video import VideoGrid


def _masks(name, grid, batch, **settings):
  gen = masking.build(name, grid, **settings)
  info = jax.jit(gen, static_argnums=1)(jax.random.key(0), batch)
  return gen, info, np.asarray(info.mask).reshape(batch, grid.frames, grid.height, grid.width).astype(bool)


def test_tube_masks_are_constant_over_time_with_the_official_count():
  grid = VideoGrid(8, 14, 14)
  gen, info, m = _masks('tube', grid, 512, ratio=0.9)
  assert gen.masked_per_frame == 176 and gen.len_keep == 8 * 20  # int(0.9 * 196), 20 visible per frame
  np.testing.assert_array_equal(m, np.repeat(m[:, :1], 8, axis=1))
  assert (m[:, 0].sum(axis=(1, 2)) == 176).all()
  rate = m[:, 0].mean(0)
  assert 0.84 < rate.min() and rate.max() < 0.96  # uniform over positions (0.9 +- 4 standard errors)
  keep = np.asarray(info.ids_keep)
  assert (np.diff(keep, axis=1) > 0).all()  # visible tokens in time-major order, as boolean indexing gives them
  visible = np.flatnonzero(~m[3].reshape(-1))
  np.testing.assert_array_equal(keep[3], visible)


def test_running_cell_decodes_half_of_every_frame_and_each_place_in_2_of_4_frames():
  grid = VideoGrid(8, 6, 4)
  gen, info, m = _masks('running_cell', grid, 32, ratio=0.5)
  kept = ~m
  assert gen.len_keep == 8 * 24 // 2 and info.ids_keep.shape == (32, 96)
  assert (kept.sum(axis=(2, 3)) == 12).all()  # half of every frame
  for t in range(grid.frames - 3):
    assert (kept[:, t:t + 4].sum(1) == 2).all()  # every position: 2 of any 4 consecutive frames
  # The official cell sequence (1 = masked, [[TL, TR], [BL, BR]]) for phase 0, frames 0..3, then period 4.
  cells = [[[1, 0], [0, 1]], [[0, 0], [1, 1]], [[0, 1], [1, 0]], [[1, 1], [0, 0]]]
  phases = set()
  for clip in m:
    for phase in range(4):
      if all((clip[t, :2, :2] == np.asarray(cells[(t + phase) % 4], bool)).all() for t in range(8)):
        phases.add(phase)
        break
    else:
      raise AssertionError('a clip that is no phase of the official running cell')
    np.testing.assert_array_equal(clip, np.tile(clip[:, :2, :2], (1, 3, 2)))  # the same cell everywhere
  assert phases == {0, 1, 2, 3}  # 32 clips draw every phase


def test_running_cell_ratio_sets_the_masked_share_of_each_cell():
  _, _, m = _masks('running_cell', VideoGrid(4, 2, 2), 8, ratio=0.75)
  assert (m.sum(axis=(2, 3)) == 3).all()


def test_video_masks_refuse_image_grids_and_impossible_settings():
  with pytest.raises(ValueError, match='VideoGrid'):
    masking.build('tube', masking.Grid(14, 14))
  with pytest.raises(ValueError, match='even sides'):
    masking.build('running_cell', VideoGrid(8, 7, 7))
  with pytest.raises(ValueError, match='between 1 and 3'):
    masking.build('running_cell', VideoGrid(8, 4, 4), ratio=0.1)
  with pytest.raises(ValueError, match=r'in \[0, 1\)'):
    masking.build('tube', VideoGrid(2, 2, 2), ratio=1.0)


def test_the_cli_draws_video_masks(tmp_path, capsys):
  out = tmp_path / 'cell.png'
  assert masking_cli(['--show', 'running_cell', '--grid', '4', '--frames', '4', '--rows', '2', '--out',
                      str(out)]) == 0
  assert out.stat().st_size > 0 and '4x4x4 (frames x h x w), 32 of 64 masked' in capsys.readouterr().out
