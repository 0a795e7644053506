"""Multi-process and resharded runs on fake CPU devices (slow: several compilations of the train step).

* 2 processes x 4 devices (launch/local_multiprocess.sh, parameters FSDP-sharded across both processes) train
  the same parameters as 1 process x 8 devices.
* SIGTERM to one of the processes makes both checkpoint the same step and exit with 143.
* A run checkpointed on 8 devices resumes on 4 (the state is resharded on restore) and ends where the
  uninterrupted 8-device run ends.
"""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO
from mim_jax import workdir as workdir_lib
from mim_jax.train import checkpoint as ckpt_lib

ARGS = ['--config=configs/mae/digits.py:tiny', '--mode=train', '--config.checkpoint.every_steps=2',
        '--config.log_every=1']


def _env(cache, devices=None, **extra):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'JAX_COMPILATION_CACHE_DIR': str(cache),
         'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0', 'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '-1', **extra}
  if devices:
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  return env


def _run(cmd, env, timeout=1200):
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
  return proc.stdout


def _params(workdir):
  params, step = workdir_lib.read_params(str(workdir))
  return step, params


def _losses(workdir):
  return {r['step']: r['train/loss'] for r in map(json.loads, open(os.path.join(workdir, 'metrics.jsonl')))}


@pytest.mark.slow
def test_two_processes_train_the_same_parameters_as_one(tmp_path):
  cache = tmp_path / 'cache'
  run = [*ARGS, '--config.total_steps=4', '--config.mesh.fsdp=8']  # parameters sharded over both processes
  logs = tmp_path / 'logs'
  out = _run(['launch/local_multiprocess.sh', '-n', '2', '-d', '4', '-l', str(logs), '--', sys.executable, '-m',
              'mim_jax.main', *run, f'--workdir={tmp_path / "two"}'], _env(cache))
  assert '2 processes, 8 devices (4 per process)' in out and 'step 4/4' in out
  # The reference is a plain 1-process run: the pipeline gives every host a block of each global batch, so the
  # global batches (and with them the masks) do not depend on the process count.
  _run([sys.executable, '-m', 'mim_jax.main', *run, f'--workdir={tmp_path / "one"}'], _env(cache, devices=8))

  two, one = tmp_path / 'two', tmp_path / 'one'
  # Process 0 alone logs and writes metrics; both wrote their shards and their data positions.
  assert 'step 1/4' not in (logs / 'process_1.log').read_text()
  assert sorted(_losses(two)) == [1, 2, 3, 4]
  ckpt = two / 'checkpoints' / '4'
  assert sorted(os.listdir(ckpt / 'data')) == ['commit_success.txt', 'process_0-of-2.json', 'process_1-of-2.json']
  assert {'ocdbt.process_0', 'ocdbt.process_1'} <= set(os.listdir(ckpt / 'state'))

  # Same batches and masks: the per-step losses agree to float32 rounding (a run that paired rows with other
  # masks differs by ~1e-2 already at step 1).
  for step in range(1, 5):
    assert abs(_losses(two)[step] - _losses(one)[step]) < 1e-5, (step, _losses(two), _losses(one))
  (s2, p2), (s1, p1) = _params(two), _params(one)
  assert s2 == s1 == 4
  # The all-reduce sums in another order across processes; Adam's m / sqrt(v) enlarges that rounding for
  # parameters with tiny gradients (measured 6e-6 after 4 steps; one update moves a parameter by up to ~1e-4).
  diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(p2), jax.tree.leaves(p1)))
  assert diff < 5e-5, diff

  # The data positions were saved per process: resuming them with another process count is refused clearly.
  with pytest.raises(ValueError, match='written by 2 processes and this run has 1'):
    ckpt_lib.Checkpointer(str(two / 'checkpoints'), every_steps=2).restore(4, None, data_iterator=object())


@pytest.mark.slow
def test_resume_on_fewer_devices_reshards_the_state(tmp_path):
  cache = tmp_path / 'cache'
  run = [*ARGS, '--config.total_steps=6', '--config.mesh.fsdp=2']
  _run([sys.executable, '-m', 'mim_jax.main', *run, f'--workdir={tmp_path / "full"}'], _env(cache, devices=8))
  _run([sys.executable, '-m', 'mim_jax.main', *run, '--config.stop_after_steps=4',
        f'--workdir={tmp_path / "moved"}'], _env(cache, devices=8))
  out = _run([sys.executable, '-m', 'mim_jax.main', *run, f'--workdir={tmp_path / "moved"}'], _env(cache, devices=4))
  assert f'Resumed from {tmp_path / "moved" / "checkpoints"}/4 ' in out
  assert "mesh {'data': 2, 'fsdp': 2} on 4 cpu devices" in out
  (s_full, full), (s_moved, moved) = _params(tmp_path / 'full'), _params(tmp_path / 'moved')
  assert s_full == s_moved == 6
  # Same math, different partial sums per device: equal up to float32 rounding (measured 1.8e-6).
  diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(moved)))
  assert diff < 5e-5, diff
  assert abs(_losses(tmp_path / 'full')[6] - _losses(tmp_path / 'moved')[6]) < 1e-5


@pytest.mark.slow
def test_sigterm_to_one_process_checkpoints_the_same_step_on_all(tmp_path):
  logs, workdir = tmp_path / 'logs', tmp_path / 'run'
  cmd = ['launch/local_multiprocess.sh', '-n', '2', '-d', '4', '-l', str(logs), '--', sys.executable, '-m',
         'mim_jax.main', *ARGS, '--config.total_steps=100000', '--config.checkpoint.every_steps=100000',
         f'--workdir={workdir}']
  proc = subprocess.Popen(cmd, cwd=REPO, env=_env(tmp_path / 'cache'), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1)
  for line in proc.stdout:  # process 0's progress lines
    if line.startswith('step') and int(line.split('/')[0].split()[1]) >= 3:
      os.kill(int((logs / 'process_1.pid').read_text()), signal.SIGTERM)  # one host is preempted
      break
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 128 + signal.SIGTERM, out[-4000:]
  step = int(out.split('stopped by SIGTERM after step ')[1].split(';')[0])  # process 0 stopped too
  assert f'stopped by SIGTERM after step {step};' in (logs / 'process_1.log').read_text()
  assert sorted(os.listdir(workdir / 'checkpoints')) == [str(step)]
  assert {'process_0-of-2.json', 'process_1-of-2.json'} <= set(os.listdir(workdir / 'checkpoints' / str(step) / 'data'))
