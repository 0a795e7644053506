"""Shared test helpers. Tests run on the CPU; multi-device tests start subprocesses with fake devices."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# Tensors produced by the official PyTorch code (tools/fixtures/; tests/fixtures/README.md).
FIXTURE_ROOT = REPO / 'tests' / 'fixtures'
FIXTURES = REPO / 'tests' / 'fixtures' / 'official_mae'


def load_config(path: str, arg: str | None = None):
  """Loads configs/<path>.py:get_config(arg) the way the CLI does."""
  import importlib.util
  spec = importlib.util.spec_from_file_location('cfg_' + path.replace('/', '_'), REPO / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def run_python(code: str, *, devices: int = 1, timeout: int = 600, env: dict | None = None) -> str:
  """Runs ``code`` in a fresh interpreter with ``devices`` fake CPU devices; returns stdout, fails with stderr."""
  full_env = {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
              'JAX_PLATFORMS': 'cpu', **(env or {})}
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=full_env, capture_output=True, text=True,
                        timeout=timeout)
  if proc.returncode != 0:
    pytest.fail(f'subprocess failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}')
  return proc.stdout


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """A private tfds data_dir holding the bundled digits dataset, built once per test session."""
  from mim_jax.data import digits
  d = str(tmp_path_factory.mktemp('tfds'))
  digits.ensure_digits(d)
  return d


@pytest.fixture
def tiny_config():
  c = load_config('configs/mae/digits.py', 'tiny')
  c.eval.enabled = False
  return c
