"""The training loop: sharded init, resume, the AOT fit check, jitted steps, hooks, logging, checkpoints.

One loop serves pre-training and fine-tuning. A :class:`TrainJob` says what to train (an
:class:`~mim_jax.methods.base.Objective`: a pre-training method, or fine-tuning's classifier objective), on which
data, with which optimizer and schedule, and where its checkpoints go; :func:`run` trains it with everything a
long run needs: preemption handling (SIGTERM/SIGINT save and exit), the non-finite policy, the transfer guard, the
compile-before-allocate fit check, bitwise-exact resume (model state and data iterator), external weights
reloaded after every init and restore, and hooks every N steps (online monitors, periodic evaluation).

``train(config, workdir)`` builds the pre-training job from a config and runs it; it is importable (the
end-to-end tests call it) and is what ``mim_jax.main`` runs. Re-running with the same workdir resumes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional, Protocol

import jax
import ml_collections
import numpy as np
import optax

from mim_jax import config as config_lib
from mim_jax import methods
from mim_jax import workdir as workdir_lib
from mim_jax.data import device as data_device
from mim_jax.data import pipeline
from mim_jax.models import vit
from mim_jax.train import aot
from mim_jax.train import checkpoint as ckpt_lib
from mim_jax.train import distributed
from mim_jax.train import metrics as metrics_lib
from mim_jax.train import optim
from mim_jax.train import preemption
from mim_jax.train import sharding as shd
from mim_jax.train import state as state_lib
from mim_jax.utils.logging import log


class NonFiniteLossError(RuntimeError):
  pass


class Hook(Protocol):
  """Runs every ``every_steps`` steps and at the last one; returns metrics to write (keys as given)."""

  name: str
  every_steps: int

  def __call__(self, step: int, state: state_lib.TrainState) -> dict[str, float] | None:
    ...


@dataclasses.dataclass(frozen=True)
class RunContext:
  """What hooks are built from: the objective, and where its state lives."""

  objective: methods.Objective
  mesh: Any
  rules: Any
  shardings: Any  # of the train state


MakeHooks = Callable[[RunContext], list[Hook]]


@dataclasses.dataclass
class TrainJob:
  """What to train and how; :func:`pretrain_job` builds one from a pre-training config."""

  objective: methods.Objective
  data_cfg: ml_collections.ConfigDict
  data_info: pipeline.DatasetInfo
  batch_size: int  # global, over all devices and processes
  total_steps: int
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  checkpoint_dir: str
  seed: int = 0
  mesh: dict = dataclasses.field(default_factory=lambda: {'data': -1, 'fsdp': 1})  # data, fsdp, rules
  checkpoint_every: int = 1000
  checkpoint_keep: int = 3
  async_save: bool = True
  log_every: int = 100
  stop_after_steps: int = -1  # stop early without changing the schedule (tests, time-boxed runs)
  nonfinite: str = 'stop'  # 'stop' | 'skip' (see mim_jax/config.py)
  transfer_guard: str = 'allow'
  attention_impl: str = 'auto'
  loss_scaling: Optional[state_lib.DynamicLossScale] = None
  metrics_prefix: str = ''  # fine-tuning writes 'finetune/train/loss', ...
  log_prefix: str = ''
  # After a fresh init (not after a restore): params -> params, e.g. fine-tuning places the pre-trained encoder.
  init_params: Optional[Callable[[Any, Any], Any]] = None
  init_extras: Optional[Callable[[Any, Any], Any]] = None  # the same for extras (pre-trained BatchNorm statistics)
  description: Sequence[str] = ()  # lines logged when the run starts
  # Called once the state is initialized or restored, before the first step: what a run records about itself
  # (pre-training's config.json) is written only then, so a run that fails its checks (a resume whose checkpoint
  # does not fit the config) leaves the workdir as it found it.
  on_start: Optional[Callable[[], None]] = None
  train_indices: Optional[np.ndarray] = None  # only these examples of the train split (a few-label fine-tune)


@dataclasses.dataclass
class TrainResult:
  state: state_lib.TrainState
  objective: methods.Objective
  data_info: pipeline.DatasetInfo
  mesh: Any
  rules: Any
  shardings: Any  # of the train state
  total_steps: int
  resumed_from: Optional[int]

  @property
  def method(self):
    return self.objective


# ----------------------------------------------------------------------------------------------------------
# Pre-training


def pretrain_optimizer(config, total_steps: int, warmup_steps: int, no_decay_names=()):
  """(tx, schedule, peak lr) of a pre-training config; ``no_decay_names``: the method's parameters exempt from
  weight decay (``Objective.no_weight_decay``) besides biases and vectors."""
  peak = optim.scaled_lr(config.optimizer.base_lr, config.batch_size)
  schedule = optim.make_schedule(config.optimizer, peak, total_steps, warmup_steps)
  tx = optim.make_optimizer(config.optimizer, schedule, no_decay_names=no_decay_names, total_steps=total_steps)
  return tx, schedule, peak


def pretrain_job(config: ml_collections.ConfigDict, workdir: str,
                 info: Optional[pipeline.DatasetInfo] = None) -> TrainJob:
  """The pre-training job of ``config``: its method (built from the config and the run's facts), AdamW with the
  recipe's schedule, and the data, mesh and checkpoint settings."""
  config_lib.validate(config)
  info = info or pipeline.dataset_info(config.data)
  per_epoch = info.steps_per_epoch(config.batch_size)
  total, warmup = config_lib.resolve_steps(config, per_epoch)
  method = methods.build(config, methods.Facts(info, total))
  tx, schedule, peak = pretrain_optimizer(config, total, warmup, method.no_weight_decay)
  ck = config.checkpoint
  lines = (f'lr = base_lr {config.optimizer.base_lr:g} x batch {config.batch_size} / 256 = {peak:.3e}; '
           f'{total} steps ({total / per_epoch:.1f} epochs), {warmup} warmup',)
  return TrainJob(
      objective=method, data_cfg=config.data, data_info=info, batch_size=config.batch_size, total_steps=total,
      tx=tx, schedule=schedule, checkpoint_dir=workdir_lib.checkpoint_dir(config, workdir), seed=config.seed,
      mesh=dict(config.mesh), checkpoint_every=ck.every_steps, checkpoint_keep=ck.keep,
      async_save=ck.get('async_save', True), log_every=config.log_every,
      stop_after_steps=config.get('stop_after_steps', -1), nonfinite=config.get('nonfinite', 'stop'),
      transfer_guard=config.get('transfer_guard', 'allow'), attention_impl=config.get('attention_impl', 'auto'),
      loss_scaling=state_lib.loss_scaling_from_config(config), description=lines)


def train(config: ml_collections.ConfigDict, workdir: str, make_hooks: Optional[MakeHooks] = None) -> TrainResult:
  """Pre-trains ``config`` in ``workdir`` (resuming from its latest checkpoint). ``make_hooks(context)`` gives the
  hooks to run (``mim_jax.main`` passes the config's online monitors)."""
  distributed.maybe_initialize()
  changed = check_resume_config(config, workdir)
  job = pretrain_job(config, workdir)
  job.on_start = lambda: workdir_lib.write_config(config, workdir)
  try:
    return run(job, workdir, make_hooks)
  except workdir_lib.UnreadableCheckpointError as e:
    if not changed or isinstance(e, workdir_lib.DamagedCheckpointError):  # damage is not a config matter
      raise
    # The checkpoint was written under another config: name the fields, not the storage library's advice.
    raise workdir_lib.UnreadableCheckpointError(
        f'the checkpoints in {job.checkpoint_dir} were written by a run whose config differs from this one in '
        f'{", ".join(changed)}, and its train state does not fit this config ({e}). Use the run\'s values, or '
        'another --workdir.') from None


# Fields whose change moves the learning-rate schedule or the optimizer under a resumed run (issue 27, item 7).
SCHEDULE_FIELDS = ('batch_size', 'total_steps', 'warmup_steps', 'epochs', 'warmup_epochs', 'optimizer.')


def _flat(tree: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def check_resume_config(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """Before resuming a run, say which config fields differ from its ``config.json``; refuse (one line) those that
  change its schedule, unless ``config.accept_schedule_change``. Returns the changes, as ``field (old -> new)``."""
  import json

  if not os.path.isfile(os.path.join(workdir, workdir_lib.CONFIG_FILE)):
    return []
  if workdir_lib.latest_step(workdir_lib.checkpoint_dir(config, workdir)) is None:
    return []
  before = _flat(json.loads(workdir_lib.read_config(workdir).to_json_best_effort()))
  now = _flat(json.loads(config.to_json_best_effort()))
  per_invocation = ('accept_schedule_change', 'stop_after_steps')  # settings of this command, not of the run
  changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k) and k not in per_invocation)
  if not changed:
    return []
  shown = lambda k: f'{k} ({before.get(k)!r} -> {now.get(k)!r})'  # noqa: E731
  schedule = [k for k in changed if k in SCHEDULE_FIELDS or k.startswith('optimizer.')]
  if schedule and not config.get('accept_schedule_change', False):
    raise ValueError(f'--workdir {workdir} holds a run whose schedule differs from this config: '
                     f'{", ".join(shown(k) for k in schedule)}; a resume would not continue that run. Use the '
                     'run\'s values, another --workdir, or --config.accept_schedule_change=True to go on with '
                     'the new ones.')
  log(f'Resuming {workdir} with config changes: {", ".join(shown(k) for k in changed)}.')
  return [shown(k) for k in changed]


# ----------------------------------------------------------------------------------------------------------
# The loop


def param_count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def run(job: TrainJob, workdir: str, make_hooks: Optional[MakeHooks] = None) -> TrainResult:
  """Trains ``job`` (see the module docstring); returns the final state and where it lives."""
  distributed.maybe_initialize()
  os.makedirs(workdir, exist_ok=True)
  objective, info = job.objective, job.data_info
  mesh = shd.make_mesh(job.mesh.get('data', -1), job.mesh.get('fsdp', 1))
  rules = shd.rules_from_config(job.mesh.get('rules', None))
  shd.check_batch_divisible(job.batch_size, mesh)
  vit.check_attention_impl(job.attention_impl, mesh.devices.flat[0].platform)

  # numpy: the same value on every process, placed by jit / make_array (a local device array would not be).
  init_rng, base_rng = np.asarray(jax.random.split(jax.random.PRNGKey(job.seed)))
  fields = objective.batch_fields(True)
  init_fn = state_lib.make_init_fn(objective, job.tx, objective.example_batch(2), job.loss_scaling)
  abstract, shardings = aot.abstract_train_state(init_fn, init_rng, mesh, rules)
  external = tuple(objective.external_extras)
  saved_abstract = state_lib.without_external(abstract, external)  # what checkpoints hold
  base_rng = shd.place(base_rng, shd.replicated(mesh))
  step_fn = state_lib.jit_train_step(state_lib.make_train_step(objective, job.tx, job.schedule, job.loss_scaling),
                                     shardings, mesh, rules)

  checkpointer = ckpt_lib.Checkpointer(job.checkpoint_dir, every_steps=job.checkpoint_every,
                                       keep=job.checkpoint_keep, async_save=job.async_save)
  writer = None
  total_steps = job.total_steps
  try:
    resumed_from = checkpointer.latest_step()
    start = resumed_from or 0
    stop_at = min(total_steps, job.stop_after_steps) if job.stop_after_steps > 0 else total_steps
    compiled, batch_spec, report = None, None, None
    if start < stop_at:  # compile before allocating the state: a step that cannot fit fails here, in seconds
      batch_spec = aot.batch_spec(fields, job.batch_size, mesh, job.data_cfg.get('return_index', False))
      compiled, report = _compile_and_report(step_fn, abstract, batch_spec, base_rng, mesh)

    per_host = job.batch_size // jax.process_count()
    iterator = _train_iterator(job, per_host)
    distributed.barrier('state')
    if resumed_from is not None:
      state = checkpointer.restore(resumed_from, saved_abstract, iterator)
      log(f'{job.log_prefix}Resumed from {checkpointer.directory}/{resumed_from} (step {int(state.step)})'
          + (f': the run is complete ({total_steps} steps); nothing left to train.' if resumed_from >= total_steps
             else '.'))
    else:
      state, _ = state_lib.create_sharded_state(init_fn, init_rng, mesh, rules)
      if job.init_params is not None:
        state = state.replace(params=job.init_params(state.params, shardings.params))
      if job.init_extras is not None:
        state = state.replace(extras=job.init_extras(state.extras, shardings.extras))
    if external:  # reloaded from their source after every init and every restore, never from a checkpoint
      state = state_lib.with_external(state, objective.load_external(), external, abstract.extras, shardings.extras)
    _write_compile_report(report, workdir)
    if job.on_start is not None:
      job.on_start()

    _describe(job, state, mesh)
    writer = metrics_lib.MetricWriter(workdir)
    hooks = list(make_hooks(RunContext(objective, mesh, rules, shardings))) if make_hooks is not None else []
    progress = metrics_lib.Progress(total_steps, job.batch_size, start)
    pending: list[dict] = []
    distributed.barrier('train')
    t0 = time.perf_counter()
    with preemption.PreemptionGuard() as guard:
      for step in range(start, stop_at):
        host_batch = next(iterator)
        # transfer_guard 'disallow' (tests) turns any implicit host<->device copy of the step into an error: the
        # batch goes up once, explicitly, and nothing comes back until a log step fetches the metrics.
        with jax.transfer_guard(job.transfer_guard):
          # uint8 pixels from the host are finished on the device (data.normalize_on_device / resize_on_device)
          batch = data_device.preprocess(shd.global_batch(host_batch, mesh), info, fields)
          if step == start and compiled is not None and not _same_avals(batch, batch_spec):
            log('note: the batch differs from the compiled spec; compiling the step again for it.')
            compiled = None
          state, m = (compiled or step_fn)(state, batch, base_rng)
        pending.append(m)  # stays on the device until the next log step: no per-step host sync or transfer
        done = step + 1
        if done % job.log_every == 0 or done == stop_at or done == start + 1:
          rows = jax.device_get(pending)
          pending = []
          avg = average_train_rows(rows)
          img_s, steps_s = progress.rate(done)
          avg['perf/images_per_s'] = img_s
          writer.write(done, {job.metrics_prefix + k: v for k, v in avg.items()})
          log(job.log_prefix + progress.line(done, avg, img_s, steps_s))
          _check_finite(avg['train/nonfinite_steps'], job.nonfinite, done)
        for hook in hooks:
          if done % hook.every_steps == 0 or done == stop_at:
            values = hook(done, state)
            if values:
              writer.write(done, values)
        preempted = guard.should_stop(done) and done != stop_at
        if (preempted or checkpointer.should_save(done)) and done != stop_at:
          _check_finite(int(jax.device_get(state.nonfinite_steps)), job.nonfinite, done)
          checkpointer.save(done, state_lib.without_external(state, external), iterator)
        if preempted:
          checkpointer.wait()
          log(f'Stopped by {signal.Signals(guard.signum).name}: checkpoint of step {done} saved in '
              f'{checkpointer.directory}; the same command resumes from it.')
          raise preemption.Preempted(done, guard.signum)
    skipped = int(jax.device_get(state.nonfinite_steps))
    _check_finite(skipped, job.nonfinite, stop_at)
    if skipped and stop_at > start:
      share = skipped / max(1, int(stop_at))
      advice = '; much of the run did not train: lower optimizer.base_lr' if share > 0.1 else ''
      log(f"{job.log_prefix}warning: {skipped} of {stop_at} steps had a non-finite loss or gradient and were "
          f"skipped (nonfinite='skip'){advice}.")
    if start < stop_at:
      checkpointer.save(stop_at, state_lib.without_external(state, external), iterator)
    checkpointer.wait()
  finally:
    checkpointer.close()
    if writer is not None:
      writer.close()
  if start < stop_at:
    log(f'{job.log_prefix}Trained steps {start}..{stop_at} in {time.perf_counter() - t0:.1f}s; checkpoints in '
        f'{checkpointer.directory}')
  return TrainResult(state, objective, info, mesh, rules, shardings, total_steps, resumed_from)


def _describe(job: TrainJob, state, mesh) -> None:
  info, objective = job.data_info, job.objective
  params = f'{param_count(state.params) / 1e6:.2f}M params'
  if isinstance(objective, methods.Method):
    params = f'encoder {param_count(objective.encoder_params(state.params)) / 1e6:.2f}M params, total ' + params
  # What one example is: the image shape, or the method's own fields (clips, clouds, voxel grids, modalities)
  fields = objective.batch_fields(True)
  if 'image' in fields and len([f for f in fields.values() if f.shape]) == 1:
    example = f'images {info.image_shape}'
  else:
    example = 'examples of ' + ', '.join(f'{k} {f.shape}' for k, f in fields.items() if f.shape)
  log(f'{job.log_prefix}{objective.name}: {params} | data {info.name} {info.num_train} train {example} '
      f'| mesh {dict(mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform} devices'
      + (f' in {jax.process_count()} processes' if jax.process_count() > 1 else ''))
  for line in job.description:
    log(job.log_prefix + line)


def _train_iterator(job: TrainJob, per_host: int):
  """This process's shard of the train data: block ``process_index`` of each global batch (see data/pipeline.py),
  made by the objective's own record transform into its declared fields."""
  objective = job.objective
  return pipeline.train_iterator(job.data_cfg, per_host, seed=job.seed, process_index=jax.process_index(),
                                 process_count=jax.process_count(), allow_uint8_images=True,
                                 fields=objective.batch_fields(True), record_transform=objective.record_transform,
                                 indices=job.train_indices)


def _same_avals(batch, spec) -> bool:
  if jax.tree.structure(batch) != jax.tree.structure(spec):
    return False
  return all(a.shape == b.shape and a.dtype == b.dtype for a, b in zip(jax.tree.leaves(batch), jax.tree.leaves(spec)))


def _compile_and_report(step_fn, abstract, batch_spec, base_rng, mesh):
  """Compiles the step once, logs per-device memory and FLOPs, fails early when the step cannot fit in device
  memory; returns the compiled step and the report (written to compile_report.json once the run has started)."""
  t = time.perf_counter()
  compiled, report = aot.compile_train_step(step_fn, abstract, batch_spec, base_rng, mesh)
  log(f'Compiled the train step in {time.perf_counter() - t:.1f}s.')
  for line in report.lines():
    log(line)
  if aot.fit_check_enabled():
    aot.check_fits(report)
  return compiled, report


def _write_compile_report(report, workdir: str) -> None:
  if report is not None and jax.process_index() == 0:
    workdir_lib.write_text_atomic(os.path.join(workdir, 'compile_report.json'),
                                  json.dumps(report.as_dict(), indent=2, sort_keys=True))


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
