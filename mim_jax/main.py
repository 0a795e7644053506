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
  from mim_jax.train import distributed, preemption
  from mim_jax.workdir import UnreadableCheckpointError
  try:
    distributed.maybe_initialize()  # before anything touches a device (see mim_jax/train/distributed.py)
    run(_CONFIG.value, os.path.expanduser(_WORKDIR.value), _MODE.value)
  except preemption.Preempted as e:  # checkpoint saved; 128 + signal tells the scheduler it was stopped
    print(f'preempted: {e}', file=sys.stderr)
    sys.exit(e.exit_code)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    if isinstance(e, UnreadableCheckpointError):
      # tensorstore's reads still in flight print 'Event loop is closed' tracebacks (from native code) into
      # orbax's closed loop until the interpreter is gone; nothing is left to save, so leave at once.
      sys.stderr.flush()
      os._exit(2)
    sys.exit(2)


def _innermost_message(error: BaseException) -> str:
  """ml_collections raises an AttributeError wrapping a KeyError whose message is the quoted key and, for a near
  miss, a "Did you mean" hint."""
  while isinstance(error, BaseException):
    error = error.args[0] if error.args else ''
  return str(error)


def parse_flags(argv):
  """absl's parser, with a mistyped ``--config.KEY=VALUE`` as a one-line error instead of a traceback."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:  # ml_collections' config_flags: the override names no config key
    overrides = [a.split('=', 1)[0] for a in argv[1:] if a.startswith('--config.')]
    detail = _innermost_message(e).replace('\n', ' ')
    print(f'error: a config override names a key the config does not have: {detail} '
          f'(overrides given: {", ".join(overrides) or "none"}). The keys and their defaults are in '
          f'mim_jax/config.py and the --config file.', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
