"""Evaluation tasks run from the command line: ``config.task`` picks one, ``run(config, workdir)`` runs it.

  python -m mim_jax.main --config=configs/eval/linear_probe.py:digits --config.init=workdirs/mae_digits \\
      --workdir=workdirs/eval_digits/mae

Tasks: ``linear_probe`` (and k-NN on the same features when ``config.knn.enabled``), ``knn``, ``finetune``.
Each writes its config to ``<task>_config.json`` and merges its numbers into the workdir's flat
``summary.json``: accuracies (fractions in [0, 1]) under ``<task>/...``, plus ``<task>/config_hash``,
``<task>/checkpoint_step`` (the pre-training step evaluated; null for a converted file or random init),
``<task>/init`` and, at the top level, ``method``, ``init`` and ``checkpoint_step``. Several tasks may share
one workdir, so ``python -m mim_jax.report`` shows one row per evaluated encoder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from mim_jax.utils.logging import log


def _tasks() -> dict[str, Callable]:
  from mim_jax.eval import finetune, frozen
  return {'linear_probe': frozen.run_linear_probe, 'knn': frozen.run_knn, 'finetune': finetune.run}


def run(config, workdir: str) -> dict:
  """Runs ``config.task`` and returns the values it merged into ``summary.json``."""
  from mim_jax import workdir as workdir_lib
  from mim_jax.eval.pretrain_eval import config_hash

  task = config.get('task', None)
  tasks = _tasks()
  if task not in tasks:
    raise ValueError(f'config.task={task!r} is not an evaluation task; choose one of {sorted(tasks)} '
                     "(or 'pretrain').")
  config_path = os.path.join(workdir, f'{task}_config.json')
  before = set(os.listdir(workdir)) if os.path.isdir(workdir) else set()
  workdir_lib.write_config(config, workdir, f'{task}_config.json')
  try:
    values = tasks[task](config, workdir)
  except BaseException:
    # A task that fails before writing anything (a bad init, a bad setting) leaves the workdir as it found it.
    if os.path.basename(config_path) not in before and set(os.listdir(workdir)) == before | {
        os.path.basename(config_path)}:
      os.remove(config_path)
    raise
  provenance = {f'{task}/config_hash': config_hash(config), f'{task}/checkpoint_step': values.get('checkpoint_step'),
                f'{task}/init': values.get('init')}
  summary = {**values, **provenance}
  workdir_lib.update_summary(workdir, summary)
  shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}
  log(f'{task} results (written to {os.path.join(workdir, "summary.json")}):\n'
      f'{json.dumps(shown, indent=2, sort_keys=True)}')
  return summary
