"""Ahead-of-time compilation of the train step: per-device memory, FLOPs per step, and whether it fits.

The trainer compiles its step once before the loop (``compile_train_step``) from abstract shapes, logs the
report and stops with a clear message when the step cannot fit in device memory - before any parameter is
allocated. The same code compiles the step for a TPU slice this host does not have (compile-only devices from
libtpu), the "will it fit on the pod" check before renting one:

  TPU_LIBRARY_PATH=/path/to/libtpu.so python -m mim_jax.train.aot \
      --config=configs/mae/vit_large_in1k.py --topology=v5e-256 [--config.mesh.fsdp=16] [--config.remat=full]

``libtpu`` must match jax (jax 0.10.2 pins ``libtpu==0.0.42.*`` in its ``[tpu]`` extra). Install it into a
separate directory so that plain runs on this host do not try to start a TPU backend:
``pip install --target ~/libtpu 'libtpu==0.0.42.*'`` and point ``TPU_LIBRARY_PATH`` at ``~/libtpu/libtpu/libtpu.so``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax.train import sharding as shd

GiB = 1 << 30

# HBM per chip for compile-only TPU devices (no memory_stats() without the hardware), by device_kind.
TPU_HBM_BYTES = {
    'TPU v4': 32 * GiB,
    'TPU v5 lite': 16 * GiB,  # v5e
    'TPU v5': 95 * GiB,  # v5p
    'TPU v6 lite': 32 * GiB,  # v6e (Trillium)
}


_HOW_TO_FIT = ('To fit: shard parameters and optimizer state with a larger config.mesh.fsdp, set config.remat=full '
               '(recompute activations per block), lower config.batch_size, or use config.compute_dtype=bfloat16.')


class DoesNotFitError(ValueError):
  pass


def format_bytes(n: float) -> str:
  for unit, size in (('GiB', GiB), ('MiB', 1 << 20), ('KiB', 1 << 10)):
    if abs(n) >= size:
      return f'{n / size:,.2f} {unit}'
  return f'{int(n)} B'


def format_flops(n: float) -> str:
  for unit, size in (('PFLOP', 1e15), ('TFLOP', 1e12), ('GFLOP', 1e9), ('MFLOP', 1e6)):
    if abs(n) >= size:
      return f'{n / size:,.2f} {unit}'
  return f'{n:,.0f} FLOP'


@dataclasses.dataclass(frozen=True)
class StepReport:
  """What one device holds and computes for one train step (bytes are per device)."""

  num_devices: int
  mesh: dict[str, int]
  device_kind: str
  params_bytes: int  # from the state's shardings: exact shard sizes
  opt_state_bytes: int
  other_state_bytes: int  # step counters, method extras (EMA teachers, ...)
  batch_bytes: int
  argument_bytes: int  # XLA memory_analysis() of the compiled step from here on
  output_bytes: int
  alias_bytes: int  # outputs written into donated arguments (the new state reuses the old state's buffers)
  temp_bytes: int  # activations kept for the backward pass, gathered FSDP weights, workspace
  code_bytes: int
  flops: Optional[float]  # XLA cost analysis of the per-device program, one step
  memory_limit: Optional[int]  # bytes the device can hold, where known
  limit_source: str

  @property
  def peak_bytes(self) -> int:
    """XLA's estimate of the live bytes while the step runs."""
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

  def lines(self) -> list[str]:
    b = format_bytes
    out = [f'compiled train step for {self.num_devices} x {self.device_kind}, mesh {self.mesh}; per device:',
           f'  params {b(self.params_bytes)} + optimizer state {b(self.opt_state_bytes)} + other state '
           f'{b(self.other_state_bytes)} + batch {b(self.batch_bytes)} = arguments {b(self.argument_bytes)}',
           f'  temporaries (activations, gathered weights) {b(self.temp_bytes)}, outputs {b(self.output_bytes)} '
           f'({b(self.alias_bytes)} reuse donated inputs), code {b(self.code_bytes)}',
           f'  peak estimate {b(self.peak_bytes)}' + (
               f' of {b(self.memory_limit)} ({self.limit_source}), {100 * self.peak_bytes / self.memory_limit:.0f}%'
               if self.memory_limit else f' ({self.limit_source})')]
    if self.flops:
      out.append(f'  {format_flops(self.flops)} per device per step, {format_flops(self.flops * self.num_devices)} '
                 'per step over all devices (XLA cost analysis)')
    return out

  def as_dict(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), 'peak_bytes': self.peak_bytes}


def abstract_train_state(init_fn, rng, mesh, rules) -> tuple[Any, Any]:
  """(state as ShapeDtypeStructs carrying their shardings, shardings): nothing is allocated."""
  boxed = jax.eval_shape(init_fn, rng)
  shardings = shd.logical_shardings(boxed, mesh, rules)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          nn.meta.unbox(boxed), shardings)
  shd.check_divisible(abstract, shardings)
  return abstract, shardings


def batch_spec(fields, global_batch_size: int, mesh, with_index: bool = False) -> dict[str, Any]:
  """The global batch of a method's declared ``fields`` (``mim_jax.data.batch``) as it reaches the step (pixel
  fields float32 after device preprocessing), as ShapeDtypeStructs split over the mesh's batch axes."""
  sharding = shd.batch_sharding(mesh)
  spec = {k: jax.ShapeDtypeStruct((global_batch_size, *f.shape), jnp.dtype(f.dtype), sharding=sharding)
          for k, f in fields.items()}
  if with_index:
    spec['index'] = jax.ShapeDtypeStruct((global_batch_size,), jnp.dtype(jnp.int64 if jax.config.jax_enable_x64
                                                                          else jnp.int32), sharding=sharding)
  return spec


def rng_spec(mesh) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=shd.replicated(mesh))


def compile_train_step(step_fn, abstract_state, batch, rng, mesh) -> tuple[Any, StepReport]:
  """``step_fn.lower(...).compile()`` (``state.jit_train_step``) and its per-device report.

  Raises :class:`DoesNotFitError` when the compiler itself finds that the step cannot fit (the TPU compiler
  does; GPU and CPU compile anyway and :func:`check_fits` compares the estimate with the device)."""
  lowered = step_fn.lower(abstract_state, batch, rng)
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    message = str(e).strip().splitlines()[0]
    raise DoesNotFitError(f'the train step does not fit in device memory ({message}). {_HOW_TO_FIT}') from None
  return compiled, report_for(compiled, abstract_state, batch, mesh)


def report_for(compiled, abstract_state, batch, mesh) -> StepReport:
  mem = compiled.memory_analysis()
  cost = _cost(compiled)
  devices = mesh.devices.reshape(-1)
  limit, source = device_memory_limit(devices[0])
  other = shd.shard_bytes((abstract_state.step, abstract_state.extras, abstract_state.nonfinite_steps))
  return StepReport(
      num_devices=int(devices.size), mesh={k: int(v) for k, v in mesh.shape.items()},
      device_kind=devices[0].device_kind, params_bytes=shd.shard_bytes(abstract_state.params),
      opt_state_bytes=shd.shard_bytes(abstract_state.opt_state), other_state_bytes=other,
      batch_bytes=shd.shard_bytes(batch),
      argument_bytes=int(getattr(mem, 'argument_size_in_bytes', 0)),
      output_bytes=int(getattr(mem, 'output_size_in_bytes', 0)),
      alias_bytes=int(getattr(mem, 'alias_size_in_bytes', 0)),
      temp_bytes=int(getattr(mem, 'temp_size_in_bytes', 0)),
      code_bytes=int(getattr(mem, 'generated_code_size_in_bytes', 0)),
      flops=cost, memory_limit=limit, limit_source=source)


def _cost(compiled) -> Optional[float]:
  try:
    cost = compiled.cost_analysis()
  except NotImplementedError:
    return None
  if isinstance(cost, (list, tuple)):  # older jax returned one dict per program
    cost = cost[0] if cost else None
  flops = (cost or {}).get('flops')
  return float(flops) if flops is not None and flops >= 0 else None


def device_memory_limit(device) -> tuple[Optional[int], str]:
  """(bytes, where the number comes from). GPU/TPU report their allocator limit; compile-only TPU devices use
  the chip's HBM size; the CPU reports nothing (host RAM is shared with everything else)."""
  if device.platform == 'cpu':
    return None, 'CPU: no per-device memory limit, fit check skipped'
  try:
    stats = device.memory_stats()
  except Exception:  # compile-only devices (a TPU topology on another host) have no runtime
    stats = None
  if stats and stats.get('bytes_limit'):
    return int(stats['bytes_limit']), f'{device.device_kind} allocator limit'
  if device.device_kind in TPU_HBM_BYTES:
    return TPU_HBM_BYTES[device.device_kind], f'{device.device_kind} HBM'
  return None, f'{device.device_kind}: memory limit unknown, fit check skipped'


def check_fits(report: StepReport) -> None:
  """Raises :class:`DoesNotFitError` when XLA's peak estimate exceeds the device memory (where known)."""
  if report.memory_limit is None or report.peak_bytes <= report.memory_limit:
    return
  b = format_bytes
  raise DoesNotFitError(
      f'the train step needs about {b(report.peak_bytes)} per device (params {b(report.params_bytes)}, '
      f'optimizer {b(report.opt_state_bytes)}, temporaries/activations {b(report.temp_bytes)}) but a '
      f'{report.device_kind} holds {b(report.memory_limit)}. {_HOW_TO_FIT} Set MIM_JAX_SKIP_FIT_CHECK=1 to try '
      'anyway.')


def fit_check_enabled() -> bool:
  return os.environ.get('MIM_JAX_SKIP_FIT_CHECK', '') in ('', '0')


# ----------------------------------------------------------------------------------------------------------
# Compile for a TPU slice on this host (compile-only devices).

_TPU_2D = {1: '1x1', 4: '2x2', 8: '2x4', 16: '4x4', 32: '4x8', 64: '8x8', 128: '8x16', 256: '16x16'}
_TPU_3D = {4: '2x2x1', 8: '2x2x2', 16: '2x2x4', 32: '2x4x4', 64: '4x4x4', 128: '4x4x8', 256: '4x8x8',
           512: '8x8x8', 1024: '8x8x16', 2048: '8x16x16', 4096: '16x16x16'}


def tpu_topology_args(accelerator: str) -> dict[str, Any]:
  """'v5e-256' / 'v4-64' / 'v5p-128' / 'v6e-64' (the gcloud accelerator type) -> get_topology_desc kwargs.

  v4 and v5p count TensorCores (2 per chip, one 'megacore' device each); v5e and v6e count chips."""
  try:
    gen, count = accelerator.lower().replace('v5litepod', 'v5e').split('-')
    count = int(count)
  except ValueError:
    raise ValueError(f'unknown TPU accelerator type {accelerator!r}; use e.g. v5e-256, v4-64, v5p-128, '
                     'v6e-64.') from None
  if gen in ('v5e', 'v6e') and count in _TPU_2D:
    return dict(topology_name=f'{gen}:{_TPU_2D[count]}', chip_config_name='default',
                chips_per_host_bounds=(2, 2, 1) if count >= 4 else (1, 1, 1))
  if gen in ('v4', 'v5p') and count // 2 in _TPU_3D and count % 2 == 0:
    return dict(topology_name=f'{gen}:{_TPU_3D[count // 2]}', chip_config_name='megacore',
                chips_per_host_bounds=(2, 2, 1))
  raise ValueError(f'no topology known for {accelerator!r}; v5e/v6e take {sorted(_TPU_2D)} chips, v4/v5p take '
                   f'2 x {sorted(_TPU_3D)} cores.')


def tpu_devices(accelerator: str, num_slices: int = 1) -> list:
  """Compile-only devices of a TPU slice (needs libtpu; no TPU hardware)."""
  from jax.experimental import topologies
  args = tpu_topology_args(accelerator)
  # Without these, libtpu probes the GCE metadata server for a TPU VM's identity (no network at run time).
  for key, value in (('TPU_SKIP_MDS_QUERY', '1'), ('TPU_ACCELERATOR_TYPE', accelerator),
                     ('TPU_WORKER_HOSTNAMES', 'localhost'), ('TPU_WORKER_ID', '0')):
    os.environ.setdefault(key, value)
  try:
    return list(topologies.get_topology_desc(platform='tpu', num_slices=num_slices, **args).devices)
  except RuntimeError as e:
    if 'TPU support not installed' in str(e):
      raise RuntimeError('libtpu is not available: install the version jax pins (jax 0.10.2: '
                         "pip install --target ~/libtpu 'libtpu==0.0.42.*') and set "
                         'TPU_LIBRARY_PATH=~/libtpu/libtpu/libtpu.so.') from e
    raise


def compile_for_devices(config, devices, image_shape) -> StepReport:
  """Compiles ``config``'s train step for ``devices`` (any platform, compile-only allowed) and reports. The
  dataset need not exist on this host: its facts come from the config (``image_shape``, an ImageNet-sized split),
  and the method is built from them without opening anything."""
  from mim_jax import config as config_lib
  from mim_jax import methods
  from mim_jax.data import pipeline
  from mim_jax.train import loop
  from mim_jax.train import state as state_lib

  config_lib.validate(config)
  mesh = shd.make_mesh(config.mesh.data, config.mesh.fsdp, devices=devices)
  rules = shd.rules_from_config(config.mesh.get('rules', None))
  # The lr schedule's length changes constants in the step, never its memory or FLOPs.
  c = image_shape[-1]
  info = pipeline.DatasetInfo(image_shape=tuple(image_shape), num_train=1000 * config.batch_size, num_eval=0,
                              num_classes=None, mean=(0.0,) * c, std=(1.0,) * c)
  total, warmup = config_lib.resolve_steps(config, info.steps_per_epoch(config.batch_size))
  method = methods.build(config, methods.Facts(info, total))
  tx, schedule, _ = loop.pretrain_optimizer(config, total, warmup, method.no_weight_decay)
  init_fn = state_lib.make_init_fn(method, tx, method.example_batch(2))
  abstract, shardings = abstract_train_state(init_fn, jax.random.PRNGKey(0), mesh, rules)
  step_fn = state_lib.jit_train_step(state_lib.make_train_step(method, tx, schedule), shardings, mesh, rules)
  batch = batch_spec(method.batch_fields(True), config.batch_size, mesh, config.data.get('return_index', False))
  _, report = compile_train_step(step_fn, abstract, batch, rng_spec(mesh), mesh)
  return report


def config_image_shape(config) -> tuple[int, int, int]:
  """(H, W, C) from the data config without opening the dataset (it need not exist on this host)."""
  channels = config.data.get('channels', None) or (1 if config.data.name.startswith('mim_digits') else 3)
  return (config.data.image_size, config.data.image_size, channels)


def main(argv) -> None:
  from absl import flags

  if len(argv) > 1:
    raise SystemExit(f'unexpected arguments: {argv[1:]}')
  config = flags.FLAGS.config
  topology = flags.FLAGS.topology
  if topology:
    jax.config.update('jax_platforms', 'cpu')  # the host's own backend; the TPU is only a compile target
  devices = tpu_devices(topology, flags.FLAGS.num_slices) if topology else jax.devices()
  try:
    report = compile_for_devices(config, devices, config_image_shape(config))
  except DoesNotFitError as e:
    print(f'fits: NO - {e}')
    sys.exit(1)
  print('\n'.join(report.lines()))
  print(f'global batch {config.batch_size} = {config.batch_size // report.num_devices} per device')
  if report.memory_limit is not None:
    fits = report.peak_bytes <= report.memory_limit
    print(f'fits: {"yes" if fits else "NO"} ({report.peak_bytes / GiB:.2f} of {report.memory_limit / GiB:.2f} GiB)')
    if not fits:
      sys.exit(1)


def _define_flags_and_run() -> None:
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file('config', None, 'Path to a config file, optionally FILE.py:ARG.', lock_config=True)
  flags.DEFINE_string('topology', None, 'TPU accelerator type to compile for (v5e-256, v4-64, v5p-128, v6e-64); '
                      'empty: the devices of this host.')
  flags.DEFINE_integer('num_slices', 1, 'TPU slices joined over the data-center network (multi-slice).')
  flags.mark_flag_as_required('config')
  app.run(main)


if __name__ == '__main__':
  _define_flags_and_run()
