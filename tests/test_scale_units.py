"""Fast checks of the scale-out pieces that need no extra devices: mesh arithmetic, the divisibility check,
distributed settings from the environment, TPU topology names, the fit check, the signal guard."""

import os
import signal
import types

import pytest

from mim_jax.train import aot, distributed, preemption
from mim_jax.train import sharding as shd


def test_mesh_shape_resolves_and_rejects():
  assert shd.mesh_shape(-1, 1, 8) == (8, 1)
  assert shd.mesh_shape(-1, 4, 8) == (2, 4)
  assert shd.mesh_shape(2, -1, 8) == (2, 4)
  with pytest.raises(ValueError, match='does not use the 8 available devices'):
    shd.mesh_shape(3, 1, 8)
  with pytest.raises(ValueError, match='does not use the 8 available devices'):
    shd.mesh_shape(-1, 3, 8)
  with pytest.raises(ValueError, match='only one of'):
    shd.mesh_shape(-1, -1, 8)


def _fake_sharding(spec, **axes):
  return types.SimpleNamespace(mesh=types.SimpleNamespace(shape=axes), spec=spec)


def test_check_divisible_names_the_array_and_the_fix():
  leaf = types.SimpleNamespace(shape=(36, 96))
  shd.check_divisible({'qkv': leaf}, {'qkv': _fake_sharding(('fsdp', None), data=1, fsdp=4)})  # 36 % 4 == 0
  with pytest.raises(ValueError, match=r"\['qkv'\] \(36, 96\) over fsdp=8.*config.mesh.fsdp"):
    shd.check_divisible({'qkv': leaf}, {'qkv': _fake_sharding(('fsdp', None), data=1, fsdp=8)})
  with pytest.raises(ValueError, match=r"over \('data', 'fsdp'\)=16"):
    shd.check_divisible({'x': types.SimpleNamespace(shape=(8,))},
                        {'x': _fake_sharding((('data', 'fsdp'),), data=2, fsdp=8)})


def test_distributed_settings_from_env():
  assert distributed.settings_from_env({}) is None
  assert distributed.settings_from_env({'MIM_JAX_DISTRIBUTED': '0', 'SLURM_NTASKS': '4', 'SLURM_JOB_ID': '1'}) is None
  s = distributed.settings_from_env({'MIM_JAX_COORDINATOR': '10.0.0.1:1234', 'MIM_JAX_NUM_PROCESSES': '4',
                                     'MIM_JAX_PROCESS_ID': '3', 'MIM_JAX_LOCAL_DEVICE_IDS': '0,1'})
  assert (s.coordinator_address, s.num_processes, s.process_id, s.local_device_ids) == ('10.0.0.1:1234', 4, 3, (0, 1))
  # One process configured explicitly is a single-process run.
  assert distributed.settings_from_env({'MIM_JAX_COORDINATOR': 'h:1', 'MIM_JAX_NUM_PROCESSES': '1',
                                        'MIM_JAX_PROCESS_ID': '0'}) is None
  slurm = distributed.settings_from_env({'SLURM_NTASKS': '8', 'SLURM_JOB_ID': '7'})
  assert slurm.source == 'SLURM' and slurm.coordinator_address is None  # JAX reads the rest from SLURM
  assert distributed.settings_from_env({'SLURM_NTASKS': '1', 'SLURM_JOB_ID': '7'}) is None
  assert distributed.settings_from_env({'MIM_JAX_DISTRIBUTED': '1'}).coordinator_address is None  # TPU auto-detect
  with pytest.raises(ValueError, match='MIM_JAX_PROCESS_ID missing'):
    distributed.settings_from_env({'MIM_JAX_COORDINATOR': 'h:1', 'MIM_JAX_NUM_PROCESSES': '2'})
  with pytest.raises(ValueError, match='must be host:port'):
    distributed.settings_from_env({'MIM_JAX_COORDINATOR': 'h', 'MIM_JAX_NUM_PROCESSES': '2', 'MIM_JAX_PROCESS_ID': '0'})
  with pytest.raises(ValueError, match='0 <= MIM_JAX_PROCESS_ID < MIM_JAX_NUM_PROCESSES'):
    distributed.settings_from_env({'MIM_JAX_COORDINATOR': 'h:1', 'MIM_JAX_NUM_PROCESSES': '2',
                                   'MIM_JAX_PROCESS_ID': '2'})
  with pytest.raises(ValueError, match="MIM_JAX_NUM_PROCESSES='two' must be an integer"):
    distributed.settings_from_env({'MIM_JAX_COORDINATOR': 'h:1', 'MIM_JAX_NUM_PROCESSES': 'two',
                                   'MIM_JAX_PROCESS_ID': '0'})


def test_tpu_topology_names():
  assert aot.tpu_topology_args('v5e-256')['topology_name'] == 'v5e:16x16'
  assert aot.tpu_topology_args('v5litepod-16')['topology_name'] == 'v5e:4x4'
  v4 = aot.tpu_topology_args('v4-64')  # 64 TensorCores = 32 chips
  assert v4['topology_name'] == 'v4:2x4x4' and v4['chip_config_name'] == 'megacore'
  assert aot.tpu_topology_args('v5p-128')['topology_name'] == 'v5p:4x4x4'
  with pytest.raises(ValueError, match='no topology known'):
    aot.tpu_topology_args('v5e-48')
  with pytest.raises(ValueError, match='unknown TPU accelerator type'):
    aot.tpu_topology_args('tpu')


def _report(**kw):
  base = dict(num_devices=256, mesh={'data': 16, 'fsdp': 16}, device_kind='TPU v5 lite', params_bytes=2 << 30,
              opt_state_bytes=4 << 30, other_state_bytes=8, batch_bytes=1 << 20, argument_bytes=6 << 30,
              output_bytes=6 << 30, alias_bytes=6 << 30, temp_bytes=8 << 30, code_bytes=0, flops=1e12,
              memory_limit=16 << 30, limit_source='TPU v5 lite HBM')
  return aot.StepReport(**{**base, **kw})


def test_fit_check():
  fits = _report()
  assert fits.peak_bytes == 14 << 30
  aot.check_fits(fits)
  with pytest.raises(aot.DoesNotFitError, match=r'needs about 22.00 GiB per device.*holds 16.00 GiB.*remat'):
    aot.check_fits(_report(temp_bytes=16 << 30))
  aot.check_fits(_report(temp_bytes=64 << 30, memory_limit=None))  # unknown limit (CPU): nothing to compare with
  text = '\n'.join(fits.lines())
  assert 'params 2.00 GiB + optimizer state 4.00 GiB' in text and '88%' in text and '256.00 TFLOP per step' in text


def test_preemption_guard_turns_sigterm_into_a_step_boundary_stop():
  before = signal.getsignal(signal.SIGTERM)
  with preemption.PreemptionGuard() as guard:
    assert not guard.should_stop(1)
    os.kill(os.getpid(), signal.SIGTERM)  # handled in Python: the process keeps running
    assert guard.should_stop(2) and guard.signum == signal.SIGTERM
  assert signal.getsignal(signal.SIGTERM) is before
  err = preemption.Preempted(7, signal.SIGTERM)
  assert err.exit_code == 143 and 'after step 7' in str(err)


def test_second_ctrl_c_interrupts_at_once():
  with preemption.PreemptionGuard() as guard:
    os.kill(os.getpid(), signal.SIGINT)
    assert guard.should_stop(1)
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)


def test_checksums_skip_unfinished_files_and_a_bad_manifest_is_one_line(tmp_path):
  import pytest as _pytest

  from mim_jax import workdir as workdir_lib

  step = tmp_path / '4'
  (step / 'state').mkdir(parents=True)
  (step / 'state' / 'a').write_bytes(b'x' * 100)
  (step / 'mim_jax_checksums.json.tmp').write_text('half written')  # a seal cut short by a full disk
  workdir_lib.seal_step(str(tmp_path), 4)
  manifest = step / workdir_lib.CHECKSUM_FILE
  assert list(__import__('json').loads(manifest.read_text())) == ['state/a']
  workdir_lib.verify_step(str(tmp_path), 4, [2, 4])  # intact
  manifest.write_text('{not json')
  with _pytest.raises(workdir_lib.DamagedCheckpointError, match='checksum file .* cannot be read'):
    workdir_lib.verify_step(str(tmp_path), 4, [2, 4])
