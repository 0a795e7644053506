"""Multi-process (multi-host) start-up: ``jax.distributed.initialize`` when more than one process is configured.

JAX's multi-controller runtime runs one Python process per host (or per GPU); every process runs the same
program on its own devices and the arrays span all of them. This module decides whether and how to join:

* explicit: ``MIM_JAX_COORDINATOR=host:port`` (process 0's address), ``MIM_JAX_NUM_PROCESSES=N``,
  ``MIM_JAX_PROCESS_ID=i`` and optionally ``MIM_JAX_LOCAL_DEVICE_IDS=0,1`` (what launch/local_multiprocess.sh
  and launch/slurm_gpu.sbatch with one process per GPU set);
* ``MIM_JAX_DISTRIBUTED=1``: let JAX detect everything (Cloud TPU VMs, SLURM, Open MPI) - launch/tpu_pod.sh;
* auto: a SLURM step with more than one task (``SLURM_NTASKS`` > 1) is detected without being asked;
* ``MIM_JAX_DISTRIBUTED=0`` never initializes (a single process, e.g. a debug run inside an allocation).

It must run before anything touches a JAX device; ``python -m mim_jax.main`` and ``loop.train`` call
:func:`maybe_initialize`, which is a no-op when already initialized or when nothing asks for it.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Mapping, Optional

import jax

from mim_jax.utils.logging import log

ENV_COORDINATOR = 'MIM_JAX_COORDINATOR'
ENV_NUM_PROCESSES = 'MIM_JAX_NUM_PROCESSES'
ENV_PROCESS_ID = 'MIM_JAX_PROCESS_ID'
ENV_LOCAL_DEVICE_IDS = 'MIM_JAX_LOCAL_DEVICE_IDS'
ENV_DISTRIBUTED = 'MIM_JAX_DISTRIBUTED'
ENV_INIT_TIMEOUT = 'MIM_JAX_INIT_TIMEOUT'


@dataclasses.dataclass(frozen=True)
class Settings:
  """Arguments for ``jax.distributed.initialize``; None lets JAX detect them (TPU, SLURM, MPI)."""

  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None
  local_device_ids: Optional[tuple[int, ...]] = None
  source: str = 'auto-detect'
  initialization_timeout: int = 300


def _int(env: Mapping[str, str], key: str) -> int:
  try:
    return int(env[key])
  except ValueError:
    raise ValueError(f'{key}={env[key]!r} must be an integer.') from None


def settings_from_env(env: Mapping[str, str] = os.environ) -> Optional[Settings]:
  """The distributed settings the environment asks for, or None for a single process."""
  mode = env.get(ENV_DISTRIBUTED, 'auto').strip().lower()
  if mode not in ('auto', '1', 'true', '0', 'false'):
    raise ValueError(f"{ENV_DISTRIBUTED}={env[ENV_DISTRIBUTED]!r} must be 'auto', '1' or '0'.")
  if mode in ('0', 'false'):
    return None
  timeout = _int(env, ENV_INIT_TIMEOUT) if ENV_INIT_TIMEOUT in env else 300
  explicit = [k for k in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID) if k in env]
  if explicit:
    missing = sorted({ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID} - set(explicit))
    if missing:
      raise ValueError(f'{", ".join(explicit)} set but {", ".join(missing)} missing: a multi-process run needs the '
                       f'coordinator address (host:port of process 0), the process count and this process id.')
    num, pid = _int(env, ENV_NUM_PROCESSES), _int(env, ENV_PROCESS_ID)
    if num < 1 or not 0 <= pid < num:
      raise ValueError(f'need {ENV_NUM_PROCESSES} >= 1 and 0 <= {ENV_PROCESS_ID} < {ENV_NUM_PROCESSES}, got '
                       f'{num} and {pid}.')
    if ':' not in env[ENV_COORDINATOR]:
      raise ValueError(f'{ENV_COORDINATOR}={env[ENV_COORDINATOR]!r} must be host:port (process 0 listens there).')
    ids = None
    if env.get(ENV_LOCAL_DEVICE_IDS, '').strip():
      ids = tuple(_int({ENV_LOCAL_DEVICE_IDS: x}, ENV_LOCAL_DEVICE_IDS)
                  for x in env[ENV_LOCAL_DEVICE_IDS].split(','))
    if num == 1:
      return None
    return Settings(env[ENV_COORDINATOR], num, pid, ids, source='MIM_JAX_* environment',
                    initialization_timeout=timeout)
  if mode in ('1', 'true'):
    return Settings(initialization_timeout=timeout)
  if int(env.get('SLURM_NTASKS', env.get('SLURM_NPROCS', '1')) or 1) > 1 and 'SLURM_JOB_ID' in env:
    return Settings(source='SLURM', initialization_timeout=timeout)
  return None


def is_initialized() -> bool:
  from jax._src import distributed as jax_distributed  # no public query in jax 0.10
  return jax_distributed.global_state.client is not None


def maybe_initialize(env: Mapping[str, str] = os.environ) -> bool:
  """Joins the multi-process run the environment describes; returns True when running multi-process."""
  if is_initialized():
    return jax.process_count() > 1
  settings = settings_from_env(env)
  if settings is None:
    return False
  jax.distributed.initialize(coordinator_address=settings.coordinator_address,
                             num_processes=settings.num_processes, process_id=settings.process_id,
                             local_device_ids=list(settings.local_device_ids) if settings.local_device_ids else None,
                             initialization_timeout=settings.initialization_timeout)
  log(f'jax.distributed ({settings.source}): {jax.process_count()} processes, {jax.device_count()} devices '
      f'({jax.local_device_count()} per process)')
  return jax.process_count() > 1


_barrier_ids = itertools.count()


def barrier(name: str, timeout_s: int = 1800) -> None:
  """Waits until every process gets here, through the coordinator (no device computation).

  Used before the first collective of a phase: processes that drift apart (one compiling longer, process 0
  writing logs) would otherwise meet in a device collective, and the CPU collectives (gloo) give up after 30 s.
  Every process must call the same barriers in the same order."""
  if jax.process_count() == 1:
    return
  from jax._src import distributed as jax_distributed
  jax_distributed.global_state.client.wait_at_barrier(f'mim_jax/{next(_barrier_ids)}/{name}', timeout_s * 1000)
