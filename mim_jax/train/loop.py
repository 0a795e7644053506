"""The pre-training loop: sharded init, resume, jitted steps, logging, checkpoints.

``train(config, workdir)`` is importable (the end-to-end tests call it) and is what ``mim_jax.main`` runs.
Re-running with the same workdir resumes from the latest checkpoint (model state and data iterator).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mim_jax import config as config_lib
from mim_jax import methods
from mim_jax.data import device as data_device
from mim_jax.data import pipeline
from mim_jax.eval import monitors as monitors_lib
from mim_jax.models import vit
from mim_jax.train import aot
from mim_jax.train import checkpoint as ckpt_lib
from mim_jax.train import distributed
from mim_jax.train import metrics as metrics_lib
from mim_jax.train import optim
from mim_jax.train import preemption
from mim_jax.train import sharding as shd
from mim_jax.train import state as state_lib


class NonFiniteLossError(RuntimeError):
  pass


@dataclasses.dataclass
class TrainResult:
  state: state_lib.TrainState
  method: methods.Method
  data_info: pipeline.DatasetInfo
  mesh: Any
  total_steps: int
  resumed_from: Optional[int]


def log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def resolve_steps(config, info: pipeline.DatasetInfo) -> tuple[int, int]:
  """(total_steps, warmup_steps) from explicit steps or from epochs over the train split."""
  per_epoch = info.steps_per_epoch(config.batch_size)
  total = config.total_steps if config.get('total_steps', -1) > 0 else int(round(config.epochs * per_epoch))
  warm = config.get('warmup_steps', -1)
  warm = warm if warm >= 0 else int(round(config.warmup_epochs * per_epoch))
  if total < 1:
    raise ValueError('the run has no steps: set config.total_steps > 0 or config.epochs > 0.')
  return total, min(warm, total)


def build_optimizer(config, info: pipeline.DatasetInfo):
  total, warmup = resolve_steps(config, info)
  peak = optim.scaled_lr(config.optimizer.base_lr, config.batch_size)
  schedule = optim.make_schedule(config.optimizer, peak, total, warmup)
  return optim.make_optimizer(config.optimizer, schedule), schedule, total, warmup, peak


def param_count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def train(config: ml_collections.ConfigDict, workdir: str) -> TrainResult:
  distributed.maybe_initialize()
  config_lib.validate(config)
  os.makedirs(workdir, exist_ok=True)
  save_config(config, workdir)
  info = pipeline.dataset_info(config.data)
  mesh = shd.make_mesh(config.mesh.data, config.mesh.fsdp)
  rules = shd.rules_from_config(config.mesh.get('rules', None))
  shd.check_batch_divisible(config.batch_size, mesh)
  vit.check_attention_impl(config.get('attention_impl', 'auto'), mesh.devices.flat[0].platform)
  method = methods.build(config, info.image_shape)
  tx, schedule, total_steps, warmup_steps, peak_lr = build_optimizer(config, info)

  rng = jax.random.PRNGKey(config.seed)
  # numpy: the same value on every process, placed by jit / make_array (a local device array would not be).
  init_rng, base_rng = np.asarray(jax.random.split(rng))
  example = jnp.zeros((2, *info.image_shape), jnp.float32)
  init_fn = state_lib.make_init_fn(method, tx, example)
  abstract, shardings = aot.abstract_train_state(init_fn, init_rng, mesh, rules)
  base_rng = _replicated_array(base_rng, mesh)
  step_fn = state_lib.jit_train_step(state_lib.make_train_step(method, tx, schedule), shardings, mesh, rules)

  ck = config.checkpoint
  checkpointer = ckpt_lib.Checkpointer(checkpoint_dir(config, workdir), every_steps=ck.every_steps, keep=ck.keep,
                                       async_save=ck.get('async_save', True))
  writer = None
  try:
    resumed_from = checkpointer.latest_step()
    start = resumed_from or 0
    stop_at = min(total_steps, config.get('stop_after_steps', -1)) if config.get('stop_after_steps', -1) > 0 \
        else total_steps
    compiled, batch_spec = None, None
    if start < stop_at:  # compile before allocating the state: a step that cannot fit fails here, in seconds
      batch_spec = aot.batch_spec(info.image_shape, config.batch_size, mesh, config.data.get('return_index', False))
      compiled = _compile_and_report(step_fn, abstract, batch_spec, base_rng, mesh, workdir)

    per_host = config.batch_size // jax.process_count()
    iterator = _train_iterator(config, per_host)
    distributed.barrier('state')
    if resumed_from is not None:
      state = checkpointer.restore(resumed_from, abstract, iterator)
      log(f'Resumed from {checkpointer.directory}/{resumed_from} (step {int(state.step)}).')
    else:
      state, _ = state_lib.create_sharded_state(init_fn, init_rng, mesh, rules)

    log(f'{config.method}: encoder {param_count(method.encoder_params(state.params)) / 1e6:.2f}M params, '
        f'total {param_count(state.params) / 1e6:.2f}M | data {info.name} {info.num_train} train images '
        f'{info.image_shape} | mesh {dict(mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform} devices'
        + (f' in {jax.process_count()} processes' if jax.process_count() > 1 else ''))
    log(f'lr = base_lr {config.optimizer.base_lr:g} x batch {config.batch_size} / 256 = {peak_lr:.3e}; '
        f'{total_steps} steps ({total_steps / info.steps_per_epoch(config.batch_size):.1f} epochs), '
        f'{warmup_steps} warmup')

    writer = metrics_lib.MetricWriter(workdir)
    monitors = monitors_lib.build(config.get('monitors', None), method=method, config=config, workdir=workdir)
    progress = metrics_lib.Progress(total_steps, config.batch_size, start)
    pending: list[dict] = []
    policy = config.get('nonfinite', 'stop')
    transfer_guard = config.get('transfer_guard', 'allow')
    distributed.barrier('train')
    t0 = time.perf_counter()
    with preemption.PreemptionGuard() as guard:
      for step in range(start, stop_at):
        host_batch = next(iterator)
        # transfer_guard 'disallow' (tests) turns any implicit host<->device copy of the step into an error: the
        # batch goes up once, explicitly, and nothing comes back until a log step fetches the metrics.
        with jax.transfer_guard(transfer_guard):
          # uint8 pixels from the host are finished on the device (data.normalize_on_device / resize_on_device)
          batch = data_device.preprocess(shd.global_batch(host_batch, mesh), info)
          if step == start and compiled is not None and not _same_avals(batch, batch_spec):
            log('note: the batch differs from the compiled spec; compiling the step again for it.')
            compiled = None
          state, m = (compiled or step_fn)(state, batch, base_rng)
        pending.append(m)  # stays on the device until the next log step: no per-step host sync or transfer
        done = step + 1
        if done % config.log_every == 0 or done == stop_at or done == start + 1:
          rows = jax.device_get(pending)
          pending = []
          avg = average_train_rows(rows)
          img_s, steps_s = progress.rate(done)
          avg['perf/images_per_s'] = img_s
          writer.write(done, avg)
          log(progress.line(done, avg, img_s, steps_s))
          _check_finite(avg['train/nonfinite_steps'], policy, done)
        for monitor in monitors:
          if done % monitor.every_steps == 0 or done == stop_at:
            values = monitor(done, state.params)
            writer.write(done, {f'monitor/{monitor.name}/{k}': v for k, v in values.items()})
        preempted = guard.should_stop(done) and done != stop_at
        if (preempted or checkpointer.should_save(done)) and done != stop_at:
          _check_finite(int(jax.device_get(state.nonfinite_steps)), policy, done)
          checkpointer.save(done, state, iterator)
        if preempted:
          checkpointer.wait()
          log(f'Stopped by {signal.Signals(guard.signum).name}: checkpoint of step {done} saved in '
              f'{checkpointer.directory}; the same command resumes from it.')
          raise preemption.Preempted(done, guard.signum)
    _check_finite(int(jax.device_get(state.nonfinite_steps)), policy, stop_at)
    if start < stop_at:
      checkpointer.save(stop_at, state, iterator)
    checkpointer.wait()
  finally:
    checkpointer.close()
    if writer is not None:
      writer.close()
  if start < stop_at:
    log(f'Trained steps {start}..{stop_at} in {time.perf_counter() - t0:.1f}s; checkpoints in '
        f'{checkpointer.directory}')
  return TrainResult(state, method, info, mesh, total_steps, resumed_from)


def checkpoint_dir(config, workdir: str) -> str:
  """``config.checkpoint.directory`` (e.g. gs://... shared by all hosts of a pod), else ``<workdir>/checkpoints``."""
  return config.checkpoint.get('directory', None) or os.path.join(workdir, 'checkpoints')


def _train_iterator(config, per_host: int):
  """This process's shard of the train data: block ``process_index`` of each global batch (see data/pipeline.py)."""
  return pipeline.train_iterator(config.data, per_host, seed=config.seed, process_index=jax.process_index(),
                                 process_count=jax.process_count(), allow_uint8_images=True)


def _replicated_array(value: np.ndarray, mesh) -> jax.Array:
  value = np.asarray(value)
  return jax.make_array_from_callback(value.shape, shd.replicated(mesh), lambda index: value[index])


def _same_avals(batch, spec) -> bool:
  if jax.tree.structure(batch) != jax.tree.structure(spec):
    return False
  return all(a.shape == b.shape and a.dtype == b.dtype for a, b in zip(jax.tree.leaves(batch), jax.tree.leaves(spec)))


def _compile_and_report(step_fn, abstract, batch_spec, base_rng, mesh, workdir: str):
  """Compiles the step once, logs per-device memory and FLOPs, writes compile_report.json, fails early when
  the step cannot fit in device memory."""
  t = time.perf_counter()
  compiled, report = aot.compile_train_step(step_fn, abstract, batch_spec, base_rng, mesh)
  log(f'Compiled the train step in {time.perf_counter() - t:.1f}s.')
  for line in report.lines():
    log(line)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'compile_report.json'), 'w') as f:
      json.dump(report.as_dict(), f, indent=2, sort_keys=True)
  if aot.fit_check_enabled():
    aot.check_fits(report)
  return compiled


def host_params(tree):
  """A host (numpy) copy of ``tree`` on every process, also when its arrays are sharded over several processes
  (FSDP across hosts), for evaluation and export."""
  leaves = [x for x in jax.tree.leaves(tree) if isinstance(x, jax.Array)]
  if all(x.is_fully_addressable or x.is_fully_replicated for x in leaves):
    return jax.device_get(tree)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree, tiled=True)


def average_train_rows(rows: list[dict]) -> dict[str, float]:
  """One metrics row for a log interval: the mean of each step metric, except for the counters and the loss
  scale, which are running state (the interval's last value)."""
  avg = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
  avg['train/nonfinite_steps'] = int(rows[-1]['train/nonfinite_steps'])
  if 'train/loss_scale' in avg:  # float16 loss scaling (state.DynamicLossScale)
    avg['train/loss_scale'] = float(rows[-1]['train/loss_scale'])
    avg['train/overflow_steps'] = int(rows[-1]['train/overflow_steps'])
    # An overflow step's grad norm is inf by design (its update was skipped): average the steps that updated.
    norms = [float(r['train/grad_norm']) for r in rows]
    finite = [n for n in norms if np.isfinite(n)]
    avg['train/grad_norm'] = float(np.mean(finite)) if finite else float(np.mean(norms))
  return avg


def _check_finite(nonfinite_steps: int, policy: str, step: int) -> None:
  """Overflows under float16 loss scaling are not counted in ``nonfinite_steps`` (``train/overflow_steps``):
  they are part of how the scale is found, so they never stop a run."""
  if nonfinite_steps and policy == 'stop':
    raise NonFiniteLossError(
        f'non-finite loss or gradient at or before step {step}: the update was skipped and no checkpoint '
        'holds it. Lower optimizer.base_lr, enable optimizer.grad_clip_norm, or use compute_dtype=float32; '
        "set config.nonfinite='skip' to skip such steps and keep training.")


def load_params(workdir: str, config: ml_collections.ConfigDict, step: Optional[int] = None):
  """Params of a finished (or interrupted) run, on the default device, for evaluation and export."""
  info = pipeline.dataset_info(config.data)
  method = methods.build(config, info.image_shape)
  tx, *_ = build_optimizer(config, info)
  init_fn = state_lib.make_init_fn(method, tx, jnp.zeros((2, *info.image_shape), jnp.float32))
  mesh = shd.make_mesh(-1, 1)
  abstract = nn.meta.unbox(jax.eval_shape(init_fn, jax.random.PRNGKey(0)))
  rep = shd.replicated(mesh)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), abstract)
  checkpointer = ckpt_lib.Checkpointer(checkpoint_dir(config, workdir), every_steps=1, read_only=True)
  try:
    step = checkpointer.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint under {checkpointer.directory}; train first.')
    state = checkpointer.restore(step, abstract)
  finally:
    checkpointer.close()
  return method, state.params, step, info


def summary_path(workdir: str) -> str:
  return os.path.join(workdir, 'summary.json')


def update_summary(workdir: str, values: dict) -> dict:
  """Merges ``values`` into the workdir's flat ``summary.json`` (process 0 writes)."""
  path = summary_path(workdir)
  summary = {}
  if os.path.exists(path):
    with open(path) as f:
      summary = json.load(f)
  summary.update(values)
  if jax.process_index() == 0:
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      json.dump(summary, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
  return summary
