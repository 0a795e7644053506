"""End to end: the CLI entry point on the bundled data, resume equality, clear errors for bad input."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, load_config
from mim_jax import main as main_lib
from mim_jax.train import loop


def _params(result):
  return jax.tree.map(np.asarray, jax.device_get(result.state.params))


def test_quick_run_writes_everything(tmp_path):
  config = load_config('configs/mae/digits.py', 'tiny')
  summary = main_lib.run(config, str(tmp_path))
  for name in ('config.json', 'metrics.jsonl', 'summary.json', 'reconstruction.png'):
    assert (tmp_path / name).exists(), name
  assert (tmp_path / 'tensorboard').is_dir() and os.listdir(tmp_path / 'tensorboard')
  assert sorted(os.listdir(tmp_path / 'checkpoints'))[-1] == '6'
  rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  train_rows = [r for r in rows if 'train/loss' in r]
  assert train_rows[-1]['step'] == 6 and np.isfinite(train_rows[-1]['train/loss'])
  on_disk = json.load(open(tmp_path / 'summary.json'))
  assert on_disk == summary
  for key in ('linear_probe/top1', 'random_init/linear_probe/top1', 'knn/top1', 'random_init/knn/top1',
              'raw_pixels/logreg/top1', 'raw_pixels/knn/top1'):
    assert 0.0 <= on_disk[key] <= 1.0, key
  assert on_disk['checkpoint_step'] == 6 and on_disk['method'] == 'mae'


def test_resume_after_interruption_is_bitwise_identical(tmp_path, tiny_config):
  full = loop.train(tiny_config, str(tmp_path / 'full'))
  interrupted = tiny_config.copy_and_resolve_references()
  interrupted.stop_after_steps = 3
  first = loop.train(interrupted, str(tmp_path / 'resumed'))
  assert int(first.state.step) == 3 and first.resumed_from is None
  second = loop.train(tiny_config, str(tmp_path / 'resumed'))  # the same command again: resumes at step 3
  assert second.resumed_from == 3 and int(second.state.step) == 6
  a, b = _params(full), _params(second)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  # Re-running a finished run trains nothing and keeps the parameters.
  third = loop.train(tiny_config, str(tmp_path / 'resumed'))
  assert third.resumed_from == 6
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(_params(third))):
    np.testing.assert_array_equal(x, y)


def test_bad_image_shape_is_a_clear_error(tiny_config):
  from mim_jax import methods
  method = methods.build(tiny_config, methods.Facts.for_images((16, 16, 1)))
  params, _ = method.init(jax.random.key(0), {'image': jnp.zeros((2, 16, 16, 1))})
  with pytest.raises(ValueError, match=r'expected images of shape \[batch, 16, 16, 1\].*NHWC'):
    method.loss_fn(params, {}, {'image': jnp.zeros((2, 1, 16, 16))}, jax.random.key(0), 0)
  with pytest.raises(ValueError, match='not divisible by the patch size'):
    methods.build(tiny_config, methods.Facts.for_images((18, 18, 1)))


def _cli(*args, timeout=300):
  return subprocess.run([sys.executable, '-m', 'mim_jax.main', *args], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout)


def test_cli_rejects_unknown_config_key(tmp_path):
  proc = _cli('--config=configs/mae/digits.py:tiny', f'--workdir={tmp_path}', '--config.optimizer.base_lrr=1.0')
  assert proc.returncode != 0
  assert 'base_lrr' in proc.stderr


def test_cli_bad_input_is_one_line_and_leaves_nothing(tmp_path):
  # Issue 27, items 5, 10, 11: each a one-line error with exit status 2, no traceback, no files written.
  afile = tmp_path / 'a_file'
  afile.write_text('x')
  junk = tmp_path / 'junk.safetensors'  # item 12: a file that is not what its name says
  junk.write_text('not a safetensors file')
  cases = [
      (['--config=configs/eval/knn.py:digits', f'--config.init={junk}', f'--workdir={tmp_path / "w5"}'],
       'is not a readable .safetensors weights file'),
      (['--config=configs/mae/digits.py:tinyy', f'--workdir={tmp_path / "w1"}'], "unknown argument 'tinyy'"),
      (['--config=configs/mae/nope.py', f'--workdir={tmp_path / "w2"}'], 'configs/mae/nope.py does not exist'),
      (['--config=configs/mae/digits.py:tiny', '--config.total_steps=0', f'--workdir={tmp_path / "w3"}'],
       'config.total_steps=0: a run needs at least one step'),
      (['--config=configs/mae/digits.py:tiny', f'--workdir={afile}'], 'is a file, not a directory'),
      (['--config=configs/mae/digits.py:tiny', f'--workdir={afile / "sub"}'], 'which is a file'),
      (['--config=configs/mae/digits.py:tiny', '--workdir='], '--workdir is empty'),
      (['--config=configs/mae/digits.py:tiny', '--config.mask.ratio=0.0', f'--workdir={tmp_path / "w4"}'],
       'hides no token'),  # item 6: a loss on hidden tokens would be 0 at every step
  ]
  for args, message in cases:
    proc = _cli(*args)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], (args, proc.stderr[-2000:])
    assert 'Traceback' not in proc.stderr and '..' not in lines[0]  # item 15: no doubled full stop
  assert sorted(p.name for p in tmp_path.iterdir()) == ['a_file', 'junk.safetensors']


@pytest.mark.slow
def test_cli_non_finite_loss_is_one_line(tmp_path):
  # Issue 27, item 9: nonfinite='stop' ends with the advice on one line (exit 2), not a traceback.
  proc = _cli('--config=configs/mae/digits.py:tiny', '--config.optimizer.base_lr=1e10', '--mode=train',
              f'--workdir={tmp_path}')
  lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
  assert lines[0].startswith('error: non-finite loss or gradient') and 'Lower optimizer.base_lr' in lines[0]


@pytest.mark.slow
def test_a_failed_resume_leaves_the_workdir_as_it_was(tmp_path):
  # Issue 27, item 1: a resume whose checkpoint does not fit the config fails before anything is rewritten.
  assert _cli('--config=configs/mae/digits.py:tiny', '--mode=train', f'--workdir={tmp_path}').returncode == 0
  before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob('*') if p.is_file()}
  proc = _cli('--config=configs/mae/digits.py:tiny', '--config.model.encoder.width=64',
              '--mode=train', f'--workdir={tmp_path}')
  assert proc.returncode == 2 and 'could not be read into this run' in proc.stderr
  # item 13: the changed field is named; the storage library's advice (restore a different model) is not passed on
  assert 'model.encoder.width (32 -> 64)' in proc.stderr and 'strict=False' not in proc.stderr
  assert 'enable_padding_and_truncation' not in proc.stderr
  after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob('*') if p.is_file()}
  assert after == before


def test_cli_rejects_bad_config_value(tmp_path):
  proc = _cli('--config=configs/mae/digits.py:tiny', f'--workdir={tmp_path}', '--config.compute_dtype=float8')
  assert proc.returncode == 2
  assert "config.compute_dtype='float8'" in proc.stderr
  proc = _cli('--config=configs/mae/digits.py:tiny', f'--workdir={tmp_path}', '--config.mask.name=blob')
  assert proc.returncode == 2 and 'config.mask.name' in proc.stderr


def test_a_workdir_is_owned_by_one_run_and_a_killed_run_leaves_no_lock(tmp_path):
  # Issue 27, item 2: a second run on a busy workdir stops at once with one line; the lock dies with its holder.
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time\nfrom mim_jax.workdir import run_lock\n'
       f'with run_lock({str(tmp_path)!r}):\n  print("locked", flush=True)\n  time.sleep(600)'],
      cwd=REPO, env={**os.environ, 'PYTHONPATH': str(REPO)}, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    proc = _cli('--config=configs/mae/digits.py:tiny', '--mode=train', f'--workdir={tmp_path}')
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and 'is in use by another run' in lines[0], proc.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []  # the refused run wrote nothing
  finally:
    holder.kill()  # kill -9: no clean-up runs
    holder.wait()
  from mim_jax.workdir import run_lock
  with run_lock(str(tmp_path)):  # free again
    pass
  fresh = tmp_path / 'new'
  with run_lock(str(fresh)):
    assert fresh.is_dir()
  assert not fresh.exists()  # made for a run that wrote nothing: removed again


@pytest.mark.slow
def test_a_resume_names_config_changes_and_refuses_a_new_schedule(tmp_path):
  # Issue 27, item 7: batch size / steps / optimizer changes break an exact resume: refused unless accepted.
  base = ['--config=configs/mae/digits.py:tiny', '--mode=train', f'--workdir={tmp_path}']
  assert _cli(*base, '--config.stop_after_steps=2').returncode == 0
  before = (tmp_path / 'config.json').read_bytes()
  proc = _cli(*base, '--config.optimizer.base_lr=0.01', '--config.batch_size=8')
  lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
  assert 'batch_size (16 -> 8)' in lines[0] and 'optimizer.base_lr' in lines[0]
  assert 'accept_schedule_change=True' in lines[0]
  assert (tmp_path / 'config.json').read_bytes() == before
  proc = _cli(*base, '--config.log_every=1')  # not a schedule change: said, and the run goes on
  assert proc.returncode == 0 and 'with config changes: log_every' in proc.stdout + proc.stderr
  proc = _cli(*base, '--config.total_steps=8', '--config.accept_schedule_change=True')
  assert proc.returncode == 0 and 'total_steps' in proc.stdout + proc.stderr
