"""The TPU "will it fit" check on this CPU host: compile the train step for a TPU slice (compile-only devices).

Needs libtpu matching jax (jax 0.10.2: libtpu 0.0.42.*), installed or pointed at with TPU_LIBRARY_PATH; without
it the CLI must say how to get it.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import REPO
from mim_jax.train import aot

HAS_LIBTPU = bool(os.environ.get('TPU_LIBRARY_PATH')) or importlib.util.find_spec('libtpu') is not None
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU, reason='libtpu not installed (pip install libtpu==0.0.42.*)')


def _aot(*args):
  proc = subprocess.run([sys.executable, '-m', 'mim_jax.train.aot', '--config=configs/mae/digits.py:tiny', *args],
                        cwd=REPO, capture_output=True, text=True, timeout=900)
  return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.skipif(HAS_LIBTPU, reason='checks the message shown when libtpu is missing')
def test_missing_libtpu_is_a_clear_error(monkeypatch):
  for key in ('TPU_SKIP_MDS_QUERY', 'TPU_ACCELERATOR_TYPE', 'TPU_WORKER_HOSTNAMES', 'TPU_WORKER_ID'):
    monkeypatch.setenv(key, os.environ.get(key, ''))  # restored after the test (tpu_devices sets defaults)
  with pytest.raises(RuntimeError, match=r"libtpu is not available.*libtpu==0\.0\.42\.\*.*TPU_LIBRARY_PATH"):
    aot.tpu_devices('v5e-8')


@pytest.mark.slow
@needs_libtpu
def test_compiles_for_a_tpu_slice_and_reports_per_device_memory():
  code, out, err = _aot('--topology=v5e-8', '--config.mesh.fsdp=2')
  assert code == 0, out + err[-3000:]
  assert "compiled train step for 8 x TPU v5 lite, mesh {'data': 4, 'fsdp': 2}" in out
  assert 'of 16.00 GiB (TPU v5 lite HBM)' in out and 'fits: yes' in out and 'per device per step' in out


@pytest.mark.slow
@needs_libtpu
def test_a_step_that_cannot_fit_fails_with_the_fix():
  code, out, err = _aot('--topology=v5e-8', '--config.batch_size=4194304')  # ~70 GB of activations per chip
  assert code == 1, out + err[-3000:]
  assert 'fits: NO' in out and 'RESOURCE_EXHAUSTED' in out and 'config.remat=full' in out


def test_every_method_compiles_without_its_dataset(tmp_path):
  """The fit check compiles a recipe on a host that does not have its data: no method may open the dataset
  (HPM used to, for its schedule length, while the step was traced)."""
  import jax
  from conftest import load_config

  from mim_jax.data.pipeline import default_data_config

  for path in ('configs/mae/digits.py', 'configs/simmim/digits.py', 'configs/hpm/digits.py'):
    config = load_config(path, 'tiny')
    config.data = default_data_config('imagenet2012')
    config.data.data_dir, config.data.image_size = str(tmp_path / 'no_such_data'), 16
    config.total_steps, config.epochs = -1, 800.0  # a length that needs the split size, as the recipes have
    report = aot.compile_for_devices(config, jax.devices()[:1], aot.config_image_shape(config))
    assert report.flops and report.batch_bytes == 16 * 16 * 16 * 3 * 4 + 16 * 4, path
  assert not (tmp_path / 'no_such_data').exists()
