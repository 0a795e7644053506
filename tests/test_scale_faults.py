"""Faults a long run meets: SIGKILL in the middle of a checkpoint save, SIGTERM from a scheduler, a NaN.

Each run is the real CLI in a subprocess on the tiny digits config. The runs share a persistent compilation
cache, so only the first one compiles the train step; still minutes on a loaded 2-core machine: slow tests.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import REPO
from mim_jax import workdir as workdir_lib

ARGS = ['--config=configs/mae/digits.py:tiny', '--mode=train', '--config.total_steps=8',
        '--config.checkpoint.every_steps=2', '--config.log_every=1']


@pytest.fixture(scope='module')
def compile_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp('jax_cache'))


def _env(cache: str, devices: int = 1, **extra) -> dict:
  return {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}', 'JAX_PLATFORMS': 'cpu',
          'JAX_COMPILATION_CACHE_DIR': cache, 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
          'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '-1', **extra}


def _cli(workdir, cache, *extra, timeout=600):
  proc = subprocess.run([sys.executable, '-m', 'mim_jax.main', *ARGS, f'--workdir={workdir}', *extra], cwd=REPO,
                        env=_env(cache), capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
  return proc.stdout


def _final_params(workdir, step=None):
  params, restored_step = workdir_lib.read_params(str(workdir), step)
  return restored_step, params


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


# Runs the CLI with orbax's final rename of one step's checkpoint held back forever: the process is then killed
# exactly between "data written" and "checkpoint committed".
HANG_IN_SAVE = r'''
import asyncio, os, pathlib, runpy, sys
from orbax.checkpoint._src.path import atomicity
finalize = atomicity.AtomicRenameTemporaryPath.finalize
async def hang_before_commit(self):
  if self.get_final().name == os.environ['HANG_AT_STEP']:
    pathlib.Path(os.environ['HANG_MARKER']).write_text(str(self.get()))
    await asyncio.sleep(3600)
  return await finalize(self)
atomicity.AtomicRenameTemporaryPath.finalize = hang_before_commit
sys.argv = ['mim_jax.main'] + sys.argv[1:]
runpy.run_module('mim_jax.main', run_name='__main__')
'''


@pytest.mark.slow
def test_sigkill_mid_save_keeps_the_previous_checkpoint_and_resume_matches(tmp_path, compile_cache):
  _cli(tmp_path / 'reference', compile_cache)

  workdir, marker = tmp_path / 'killed', tmp_path / 'in_save'
  proc = subprocess.Popen([sys.executable, '-c', HANG_IN_SAVE, *ARGS, f'--workdir={workdir}'], cwd=REPO,
                          env=_env(compile_cache, HANG_AT_STEP='4', HANG_MARKER=str(marker)),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 600
  while not marker.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.2)
  assert marker.exists(), proc.communicate(timeout=60)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  names = sorted(os.listdir(workdir / 'checkpoints'))
  assert '2' in names and '4' not in names, names
  assert any(n.startswith('4.orbax-checkpoint-tmp') for n in names), names  # the save the kill interrupted

  out = _cli(workdir, compile_cache)  # the same command again
  assert f'Resumed from {workdir / "checkpoints"}/2 ' in out, out
  names = sorted(os.listdir(workdir / 'checkpoints'))
  assert not any('tmp' in n for n in names) and names[-1] == '8', names
  step, resumed = _final_params(workdir)
  ref_step, reference = _final_params(tmp_path / 'reference')
  assert step == ref_step == 8
  _assert_same(resumed, reference)


@pytest.mark.slow
def test_sigterm_checkpoints_the_interrupted_step_and_exits_143(tmp_path, compile_cache):
  workdir = tmp_path / 'run'
  # A long schedule with no periodic checkpoint: the only one is the preemption's.
  args = [*ARGS, '--config.total_steps=100000', '--config.checkpoint.every_steps=100000', f'--workdir={workdir}']
  proc = subprocess.Popen([sys.executable, '-m', 'mim_jax.main', *args], cwd=REPO, env=_env(compile_cache),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
  for line in proc.stdout:  # progress lines: 'step      3/100000 | loss ...'
    if line.startswith('step') and int(line.split('/')[0].split()[1]) >= 3:
      proc.send_signal(signal.SIGTERM)
      break
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
  assert 'preempted: stopped by SIGTERM after step' in err, err[-3000:]
  step = int(err.split('after step ')[1].split(';')[0])
  assert step >= 3
  assert sorted(os.listdir(workdir / 'checkpoints')) == [str(step)]
  restored_step, params = _final_params(workdir)
  assert restored_step == step
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
  rows = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  assert rows[-1]['step'] == step  # the interrupted step was logged (log_every=1) before the checkpoint


# Runs loop.train with a NaN injected into the 3rd batch (index 2) under both non-finite policies.
NAN_RUNS = r'''
import json, sys
sys.path.insert(0, 'tests')
import jax, numpy as np
from conftest import load_config
from mim_jax.train import checkpoint as ckpt_lib, loop

make_iterator = loop._train_iterator

class PoisonThirdBatch:
  """The real iterator, with NaN pixels in batch 2; checkpointable like it (grain's handler needs bytes)."""
  def __init__(self, inner):
    self.inner, self.count = inner, 0
  def __iter__(self):
    return self
  def __next__(self):
    batch = dict(next(self.inner))
    if self.count == 2:
      batch['image'] = np.full_like(batch['image'], np.nan)
    self.count += 1
    return batch
  def get_state(self):
    return json.dumps({'inner': self.inner.get_state(), 'count': self.count}).encode()
  def set_state(self, state):
    state = json.loads(state)
    self.inner.set_state(state['inner'])
    self.count = state['count']
  def start_prefetch(self):
    pass

loop._train_iterator = lambda job, per_host: PoisonThirdBatch(make_iterator(job, per_host))
workdir = sys.argv[1]
config = load_config('configs/mae/digits.py', 'tiny')
config.checkpoint.every_steps = 1
config.log_every = 100
try:
  loop.train(config, workdir + '/stop')
  raise SystemExit('the stop policy did not stop')
except loop.NonFiniteLossError as e:
  print('STOPPED', e)
ck = ckpt_lib.Checkpointer(workdir + '/stop/checkpoints', every_steps=1)
print('STOP_STEPS', ck.all_steps())
ck.close()
config.nonfinite = 'skip'
result = loop.train(config, workdir + '/skip')
finite = all(bool(np.isfinite(x).all()) for x in jax.tree.leaves(jax.device_get(result.state.params)))
print('SKIP', int(result.state.step), int(result.state.nonfinite_steps), finite)
'''


@pytest.mark.slow
def test_nonfinite_loss_stops_without_a_poisoned_checkpoint_or_is_skipped(tmp_path, compile_cache):
  proc = subprocess.run([sys.executable, '-c', NAN_RUNS, str(tmp_path)], cwd=REPO, env=_env(compile_cache),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
  lines = {line.split(' ', 1)[0]: line for line in proc.stdout.splitlines()}
  assert 'non-finite loss or gradient at or before step 3' in lines['STOPPED'], proc.stdout
  # Steps 1 and 2 were checkpointed; step 3 (the NaN batch) was not, nor anything after it.
  assert lines['STOP_STEPS'] == 'STOP_STEPS [1, 2]', proc.stdout
  step, params = _final_params(tmp_path / 'stop')
  assert step == 2 and all(np.isfinite(x).all() for x in jax.tree.leaves(params))
  assert lines['SKIP'] == 'SKIP 6 1 True', proc.stdout  # 6 steps, one update skipped, parameters finite
  assert 'warning: 1 of 6 steps had a non-finite loss or gradient and were skipped' in proc.stdout + proc.stderr
  def refuse(token):
    raise ValueError(f'non-standard JSON constant {token}')
  for line in (tmp_path / 'skip' / 'metrics.jsonl').read_text().splitlines():  # strict JSON: no NaN / Infinity
    json.loads(line, parse_constant=refuse)


def test_damaged_checkpoint_is_a_clear_error_whose_advice_works(tmp_path, compile_cache):
  """The newest checkpoint's array files are truncated (a bad copy, a full disk): resuming names it, says how
  to fall back to the previous one, and following that advice resumes from it."""
  _cli(tmp_path, compile_cache, '--config.total_steps=6', '--config.stop_after_steps=4')  # the same schedule
  damaged = tmp_path / 'checkpoints' / '4'
  data_files = [f for f in (damaged / 'state').rglob('*') if f.is_file() and f.parent.name == 'd']
  assert data_files
  for f in data_files:
    f.write_bytes(b'')
  proc = subprocess.run([sys.executable, '-m', 'mim_jax.main', *ARGS, f'--workdir={tmp_path}',
                         '--config.total_steps=6'], cwd=REPO, env=_env(compile_cache), capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-6000:]
  (line,) = [x for x in proc.stderr.splitlines() if x.startswith('error:')]
  # the checksums catch it first (orbax alone reported a read error here)
  assert f'checkpoint {damaged} is damaged' in line and 'resume from step 2' in line, line
  move = line.split('(mv ')[1].rstrip(').').split()
  os.rename(move[0], move[1])
  out = _cli(tmp_path, compile_cache, '--config.total_steps=6')
  assert 'resum' in out.lower() and sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir()
                                           if p.name.isdigit()) == [2, 4, 6]


@pytest.mark.slow  # the truncated-files test above runs by default and goes through the same checksum check
def test_flipped_bytes_in_a_checkpoint_are_caught_by_its_checksums(tmp_path, compile_cache):
  """Issue 27, item 4: a byte flipped inside a finished checkpoint's array data (the file keeps its size, so the
  storage library would read it as weights) is caught by the checksums written after the save: the error names
  the step and the way back, and following it resumes from the previous checkpoint."""
  _cli(tmp_path, compile_cache, '--config.total_steps=6')
  step_dir = tmp_path / 'checkpoints' / '6'
  data = max((f for f in (step_dir / 'state').rglob('*') if f.is_file() and f.parent.name == 'd'),
             key=lambda f: f.stat().st_size)
  raw = bytearray(data.read_bytes())
  raw[len(raw) // 2] ^= 0x40
  data.write_bytes(bytes(raw))
  proc = subprocess.run([sys.executable, '-m', 'mim_jax.main', *ARGS, f'--workdir={tmp_path}',
                         '--config.total_steps=6'], cwd=REPO, env=_env(compile_cache), capture_output=True,
                        text=True, timeout=600)
  lines = [x for x in proc.stderr.splitlines() if x.startswith('error:')]
  assert proc.returncode == 2 and len(lines) == 1, proc.stdout[-3000:] + proc.stderr[-6000:]
  assert f'checkpoint {step_dir} is damaged' in lines[0] and 'resume from step 4' in lines[0], lines[0]
  move = lines[0].split('(mv ')[1].rstrip(').').split()
  os.rename(move[0], move[1])
  out = _cli(tmp_path, compile_cache, '--config.total_steps=6')
  assert 'Resumed from' in out and (tmp_path / 'checkpoints' / '6' / 'mim_jax_checksums.json').exists()


FULL_DISK_AT_SAVE = r'''
import errno, os, runpy, sys
from orbax.checkpoint._src.path import atomicity
finalize = atomicity.AtomicRenameTemporaryPath.finalize
async def disk_full(self):
  if self.get_final().name == os.environ['FULL_AT_STEP']:
    raise OSError(errno.ENOSPC, 'No space left on device', str(self.get()))
  return await finalize(self)
atomicity.AtomicRenameTemporaryPath.finalize = disk_full
sys.argv = ['mim_jax.main'] + sys.argv[1:]
runpy.run_module('mim_jax.main', run_name='__main__')
'''


@pytest.mark.slow
def test_a_full_disk_during_a_save_is_one_line_and_the_resume_matches(tmp_path, compile_cache):
  """Issue 27, item 3, end to end: the disk fills while step 4 is being committed. The run ends with one line that
  names the file and the way out, keeps step 2, and the same command then finishes bitwise equal to a run that was
  never interrupted."""
  _cli(tmp_path / 'reference', compile_cache)
  workdir = tmp_path / 'full'
  proc = subprocess.run([sys.executable, '-c', FULL_DISK_AT_SAVE, *ARGS, f'--workdir={workdir}'], cwd=REPO,
                        env=_env(compile_cache, FULL_AT_STEP='4'), capture_output=True, text=True, timeout=600)
  lines = [x for x in proc.stderr.splitlines() if x.startswith('error:')]
  assert proc.returncode == 2 and len(lines) == 1, proc.stdout[-3000:] + proc.stderr[-6000:]
  assert lines[0].startswith('error: out of disk space writing') and 'move --workdir' in lines[0], lines[0]
  assert 'Traceback' not in proc.stderr  # orbax's own traces of it are dropped: the one line says it all
  assert '2' in os.listdir(workdir / 'checkpoints')
  rows = (workdir / 'metrics.jsonl').read_text().splitlines()
  assert all(json.loads(r) for r in rows)  # every row whole
  out = _cli(workdir, compile_cache)  # free space, the same command
  assert 'Resumed from' in out
  step, resumed = _final_params(workdir)
  ref_step, reference = _final_params(tmp_path / 'reference')
  assert step == ref_step == 8
  _assert_same(resumed, reference)


@pytest.mark.slow
@pytest.mark.parametrize('kill_after', [3, 5])  # between saves (every 2 steps): work since the last one is lost
def test_sigkill_between_saves_resumes_bitwise(tmp_path, compile_cache, kill_after):
  """Issue 27: kill -9 at a step that is not a save, then the same command: it resumes from the last checkpoint and
  ends bitwise equal to an uninterrupted run."""
  _cli(tmp_path / 'reference', compile_cache)
  workdir = tmp_path / 'killed'
  proc = subprocess.Popen([sys.executable, '-m', 'mim_jax.main', *ARGS, f'--workdir={workdir}'], cwd=REPO,
                          env=_env(compile_cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  metrics, deadline = workdir / 'metrics.jsonl', time.time() + 600
  while proc.poll() is None and time.time() < deadline:
    rows = metrics.read_text().splitlines() if metrics.exists() else []
    if any(json.loads(r).get('step', 0) >= kill_after for r in rows if r.strip()):
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL, 'the run finished before it could be killed'
  ckpt = workdir / 'checkpoints'
  done = sorted(int(n) for n in os.listdir(ckpt) if n.isdigit()) if ckpt.exists() else []
  out = _cli(workdir, compile_cache)
  if done:  # a save still committing in the background when the kill came does not count (and is not used)
    assert f'Resumed from {ckpt}/{done[-1]} ' in out, out
  step, resumed = _final_params(workdir)
  ref_step, reference = _final_params(tmp_path / 'reference')
  assert step == ref_step == 8
  _assert_same(resumed, reference)
