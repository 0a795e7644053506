"""Command line: pre-train with a config, then evaluate.

  python -m mim_jax.main --config=configs/mae/digits.py --workdir=workdirs/mae_digits [--config.key=value ...]

Re-running the same command resumes from the latest checkpoint in --workdir. ``--mode=eval`` only evaluates
the latest checkpoint; ``--mode=train`` skips the evaluation.

Evaluation configs set ``config.task`` ('linear_probe', 'knn', 'finetune'; see mim_jax.eval.tasks):

  python -m mim_jax.main --config=configs/eval/linear_probe.py:digits --config.init=workdirs/mae_digits \
      --workdir=workdirs/eval_digits/mae
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file, optionally FILE.py:ARG.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, figures and summary.json.')
_VERBOSE = flags.DEFINE_bool('verbose', False, 'Keep INFO logs of orbax/grain/jax.')
_MODE = flags.DEFINE_enum('mode', 'train_eval', ['train_eval', 'train', 'eval'], 'What to run.')


def run(config, workdir: str, mode: str = 'train_eval') -> dict:
  from mim_jax.eval import monitors
  from mim_jax.eval.pretrain_eval import evaluate_pretrained
  from mim_jax.train import loop

  if config.get('task', 'pretrain') != 'pretrain':  # evaluation configs (configs/eval/): --mode does not apply
    from mim_jax.eval import tasks
    return tasks.run(config, workdir)
  summary: dict = {}
  if mode in ('train_eval', 'train'):
    result = loop.train(config, workdir, monitors.hooks_for(config, workdir))
    if mode == 'train_eval' and config.eval.enabled:  # the params stay where training left them (sharded)
      params = result.method.eval_params(result.state.params, result.state.extras)
      summary = evaluate_pretrained(config, workdir, result.method, params, int(result.state.step),
                                    result.mesh, result.rules)
  elif mode == 'eval' and config.eval.enabled:
    method, params, step = _load_pretrained(config, workdir)
    summary = evaluate_pretrained(config, workdir, method, params, step)
  return summary


def _load_pretrained(config, workdir: str):
  """(method, host params, step) of the workdir's latest checkpoint, for ``--mode=eval``."""
  from mim_jax import methods
  from mim_jax import workdir as workdir_lib
  from mim_jax.data import pipeline
  from mim_jax.methods.base import eval_params_from_workdir

  method = methods.build(config, methods.Facts(pipeline.dataset_info(config.data)))
  params, step = eval_params_from_workdir(method, workdir, directory=workdir_lib.checkpoint_dir(config, workdir))
  return method, params, step


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _CONFIG.value is None or _WORKDIR.value is None:
    raise app.UsageError('both --config and --workdir are required.')
  from mim_jax import perf
  perf.tune_host_allocator()  # before JAX starts its threads (see mim_jax/perf.py: no per-step page faults)
  if not _VERBOSE.value:
    logging.set_verbosity(logging.WARNING)  # orbax/grain log every save at INFO; keep the progress lines readable
  logging.get_absl_logger().addFilter(_drop_out_of_space_traces)
  from mim_jax.train import distributed, preemption
  from mim_jax.train.loop import NonFiniteLossError
  from mim_jax.workdir import UnreadableCheckpointError, WorkdirError, check_workdir, run_lock
  try:
    workdir = check_workdir(os.path.expanduser(_WORKDIR.value))
    distributed.maybe_initialize()  # before anything touches a device (see mim_jax/train/distributed.py)
    with run_lock(workdir):  # one run per workdir
      run(_CONFIG.value, workdir, _MODE.value)
  except preemption.Preempted as e:  # checkpoint saved; 128 + signal tells the scheduler it was stopped
    print(f'preempted: {e}', file=sys.stderr)
    sys.exit(e.exit_code)
  except Exception as e:
    full = out_of_space(e)
    if full is None and not isinstance(e, (ValueError, FileNotFoundError, NonFiniteLossError, WorkdirError)):
      raise
    print(f'error: {full or e}', file=sys.stderr)
    if isinstance(e, UnreadableCheckpointError) or full:
      # tensorstore's reads still in flight print 'Event loop is closed' tracebacks (from native code) into
      # orbax's closed loop until the interpreter is gone; nothing is left to save, so leave at once.
      sys.stderr.flush()
      os._exit(2)
    sys.exit(2)


def _drop_out_of_space_traces(record) -> bool:
  """orbax logs a full disk from its save threads with a traceback before the error reaches the trainer, which
  then reports it in one line (``out_of_space``): drop those log records, keep every other one."""
  exc = record.exc_info[1] if record.exc_info else None
  return exc is None or out_of_space(exc) is None


def out_of_space(error: BaseException) -> str | None:
  """The one-line report of a full disk anywhere in ``error``'s chain (orbax and tensorstore wrap the OSError in
  their own types), else None."""
  import errno

  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if (isinstance(error, OSError) and error.errno == errno.ENOSPC) or 'No space left on device' in str(error):
      where = getattr(error, 'filename', None)
      place = f' writing {where}' if where else ''
      return (f'out of disk space{place}: free space there or move --workdir to a larger disk, then re-run the '
              'command (it resumes from the last complete checkpoint; an unfinished one is not used).')
    error = error.__cause__ or error.__context__
  return None


def _one_line(error: BaseException) -> str:
  """The error's message on one line."""
  return ' '.join(str(error).split())


def _innermost_message(error: BaseException) -> str:
  """ml_collections raises an AttributeError wrapping a KeyError whose message is the quoted key and, for a near
  miss, a "Did you mean" hint."""
  while isinstance(error, BaseException):
    error = error.args[0] if error.args else ''
  return str(error)


def parse_flags(argv):
  """absl's parser, with one-line errors instead of a traceback or the flags' usage dump: a mistyped
  ``--config.KEY=VALUE``, a bad ``FILE.py:ARG`` or value, a config file that does not exist."""
  given = next((a.split('=', 1)[1] for a in argv[1:] if a.startswith('--config=')), None)
  try:
    remaining = flags.FLAGS(argv)
    _CONFIG.value.keys  # noqa: B018 - ml_collections reports a config file it could not load only when it is read
    return remaining
  except flags.Error as e:  # a flag's value was refused (e.g. get_config's error for a bad ':ARG')
    # ml_collections wraps get_config's error in the text of its traceback: keep the last line, the error itself.
    last = str(e).strip().splitlines()[-1].strip()
    print(f'error: --config={given}: {last}' if 'Traceback' in str(e) else f'error: {_one_line(e)}',
          file=sys.stderr)
    sys.exit(2)
  except OSError as e:  # the --config file cannot be loaded
    path = (given or '').split(':', 1)[0]
    reason = f'{path} does not exist' if path and not os.path.exists(path) else _one_line(e)
    print(f"error: cannot load the --config file: {reason.rstrip('.')}.", file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError) as e:  # ml_collections' config_flags: the override names no config key
    overrides = [a.split('=', 1)[0] for a in argv[1:] if a.startswith('--config.')]
    detail = _innermost_message(e).replace('\n', ' ')
    print(f'error: a config override names a key the config does not have: {detail} '
          f'(overrides given: {", ".join(overrides) or "none"}). The keys and their defaults are in '
          f'mim_jax/config.py and the --config file.', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
