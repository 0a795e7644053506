"""metrics.jsonl is strict JSON (a skipped step's non-finite loss is null) and a torn last row is tolerated."""

import json

import numpy as np
import pytest

from mim_jax.train.metrics import MetricWriter, read_metrics


def test_non_finite_values_are_written_as_null(tmp_path):
  writer = MetricWriter(str(tmp_path), enabled=True)
  writer.write(3, {'train/loss': float('nan'), 'train/grad_norm': np.float32(np.inf), 'train/lr': 0.5})
  writer.close()
  line = (tmp_path / 'metrics.jsonl').read_text().strip()

  def refuse(token):
    raise ValueError(token)

  row = json.loads(line, parse_constant=refuse)
  assert row == {'step': 3, 'train/loss': None, 'train/grad_norm': None, 'train/lr': 0.5}


def test_a_torn_last_row_is_ignored_but_a_torn_middle_row_is_an_error(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "a": 1.0}\n{"step": 2, "a": 2.0}\n{"step": 3, "a"')
  assert [r['step'] for r in read_metrics(str(path))] == [1, 2]
  path.write_text('{"step": 1, "a"\n{"step": 2, "a": 2.0}\n')
  with pytest.raises(ValueError, match=r'metrics.jsonl, line 1: not a JSON row'):
    read_metrics(str(path))


def test_a_full_disk_is_one_line_naming_the_file(tmp_path):
  # Issue 27, item 3: ENOSPC, however deep the storage libraries wrap it, is one line with the way out.
  import errno
  import os

  from mim_jax import main as main_lib
  from mim_jax.train.metrics import MetricWriter

  if not os.path.exists('/dev/full'):
    pytest.skip('/dev/full (a device that is always full) is Linux-only')
  writer = MetricWriter(str(tmp_path), enabled=True)
  writer.path = '/dev/full'
  with pytest.raises(OSError) as e:
    writer.write(1, {'train/loss': 1.0})
  assert e.value.errno == errno.ENOSPC
  try:
    raise RuntimeError('orbax: async save failed') from OSError(errno.ENOSPC, 'No space left on device',
                                                                '/w/checkpoints/8/state/d/abc')
  except RuntimeError as wrapped:
    message = main_lib.out_of_space(wrapped)
  assert message.startswith('out of disk space writing /w/checkpoints/8/state/d/abc') and '\n' not in message
  assert main_lib.out_of_space(ValueError('something else')) is None
