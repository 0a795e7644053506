"""What a run leaves in its workdir, read and written in one place: the resolved config, the flat summary, and the
parameters of its orbax checkpoints.

  <workdir>/config.json          the pre-training config (``<task>_config.json`` for evaluation tasks)
  <workdir>/summary.json         flat evaluation results, merged by every stage that writes one
  <workdir>/checkpoints/<step>/  orbax: ``state`` (the train state) and ``data`` (the grain iterator positions)

A run owns its workdir while it runs (:func:`run_lock`: an OS lock on the directory, nothing written).

Training (``mim_jax.train``), evaluation (``mim_jax.eval``), export (``mim_jax.interop``) and teachers read
workdirs through this module. It sits below all of them: it knows the checkpoint layout, not the method or the
optimizer, so reading a run's parameters needs neither (orbax restores the ``params`` subtree alone).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

CONFIG_FILE = 'config.json'
SUMMARY_FILE = 'summary.json'


class UnreadableCheckpointError(ValueError):
  """A checkpoint exists but cannot be restored (damaged files, or a train state it does not match)."""


class DamagedCheckpointError(UnreadableCheckpointError):
  """A checkpoint's files no longer match the checksums written when it was saved."""


CHECKSUM_FILE = 'mim_jax_checksums.json'


def _crc32(path: str) -> str:
  import zlib

  crc = 0
  with open(path, 'rb') as f:
    while chunk := f.read(1 << 22):
      crc = zlib.crc32(chunk, crc)
  return f'{crc:08x}'


def file_checksums(step_dir: str) -> dict[str, list]:
  """``{relative path: [crc32, size]}`` of every file of a finished step directory (the manifest and unfinished
  ``*.tmp`` files aside)."""
  out = {}
  for root, _, files in os.walk(step_dir):
    for name in files:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, step_dir)
      if rel != CHECKSUM_FILE and not name.endswith('.tmp'):
        out[rel] = [_crc32(path), os.path.getsize(path)]
  return dict(sorted(out.items()))


def seal_step(directory: str, step: int) -> None:
  """Writes ``<directory>/<step>/mim_jax_checksums.json`` unless it is there (local filesystems only)."""
  step_dir = os.path.join(directory, str(step))
  manifest = os.path.join(step_dir, CHECKSUM_FILE)
  if '://' not in directory and os.path.isdir(step_dir) and not os.path.exists(manifest):
    write_text_atomic(manifest, json.dumps(file_checksums(step_dir)))


def verify_step(directory: str, step: int, all_steps) -> None:
  """A :class:`DamagedCheckpointError` naming the damaged files when a step no longer matches the checksums written
  after it was saved (no manifest, or remote storage: nothing to check)."""
  step_dir = os.path.join(directory, str(step))
  manifest = os.path.join(step_dir, CHECKSUM_FILE)
  if '://' in directory or not os.path.exists(manifest):
    return
  try:
    with open(manifest) as f:
      expected = json.load(f)
  except (OSError, ValueError) as e:
    raise DamagedCheckpointError(f'checkpoint {step_dir}: its checksum file {manifest} cannot be read ({e}); '
                                 f'{way_back(directory, step, all_steps)}.') from None
  bad = []
  for rel, (crc, size) in expected.items():
    path = os.path.join(step_dir, rel)
    if not os.path.exists(path):
      bad.append(f'{rel} (missing)')
    elif os.path.getsize(path) != size or _crc32(path) != crc:
      bad.append(rel)
  if bad:
    shown = ', '.join(bad[:3]) + (f' and {len(bad) - 3} more' if len(bad) > 3 else '')
    raise DamagedCheckpointError(
        f'checkpoint {step_dir} is damaged: {shown} no longer match the checksums written when it was saved; '
        f'{way_back(directory, step, all_steps)}.')


def checkpoint_dir(config, workdir: str) -> str:
  """``config.checkpoint.directory`` (e.g. gs://... shared by all hosts of a pod), else ``<workdir>/checkpoints``."""
  block = config.get('checkpoint', None) or {}
  return block.get('directory', None) or os.path.join(workdir, 'checkpoints')


MODEL_SPEC_FILE = 'model_spec.json'  # a fine-tuning run's model description (mim_jax.weights.spec.ModelSpec)


def is_workdir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, CONFIG_FILE)) and os.path.isdir(os.path.join(path, 'checkpoints'))


def write_config(config: ml_collections.ConfigDict, workdir: str, name: str = CONFIG_FILE) -> None:
  """The resolved config as JSON (process 0 writes)."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, name), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def json_tuples(value):
  """JSON lists back to tuples (configs hold tuples: crop_scale, mean, mesh rules)."""
  if isinstance(value, dict):
    return {k: json_tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(json_tuples(v) for v in value)
  return value


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The ``config.json`` a pre-training run wrote, with today's defaults for the fields it predates."""
  from mim_jax import config as config_lib

  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{workdir!r} has no {CONFIG_FILE}: expected a pre-training workdir (the --workdir of '
                            '`python -m mim_jax.main --config=configs/<method>/...`).')
  with open(path) as f:
    stored = json_tuples(json.load(f))
  config = config_lib.base_config().to_dict()
  config.update(stored)
  return ml_collections.ConfigDict(config)


def summary_path(workdir: str) -> str:
  return os.path.join(workdir, SUMMARY_FILE)


def read_summary(workdir: str) -> dict:
  path = summary_path(workdir)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def update_summary(workdir: str, values: dict) -> dict:
  """Merges ``values`` into the workdir's flat ``summary.json`` (process 0 writes, atomically)."""
  summary = {**read_summary(workdir), **values}
  if jax.process_index() == 0:
    write_text_atomic(summary_path(workdir), json.dumps(summary, indent=2, sort_keys=True))
  return summary


def write_text_atomic(path: str, text: str) -> None:
  """Writes ``path`` through a temporary file and a rename, so a reader never sees half a file."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def _absolute(directory: str) -> str:
  """Orbax refuses relative paths (``--config.init=workdirs/run`` is one); URLs (gs://...) stay as they are."""
  return directory if '://' in directory else os.path.abspath(directory)


def _manager(directory: str):
  import orbax.checkpoint as ocp
  from grain import checkpoint as grain_checkpoint

  # Read only: neither create the directory nor start orbax's background cleanup of unfinished saves (a
  # short-lived reader could exit before that thread and print a traceback over the real message).
  options = ocp.CheckpointManagerOptions(create=False, cleanup_tmp_directories=False)
  handlers = {'state': ocp.PyTreeCheckpointHandler(), 'data': grain_checkpoint.CheckpointHandler()}
  return ocp.CheckpointManager(_absolute(directory), options=options, item_handlers=handlers)


def latest_step(directory: str) -> int | None:
  if not os.path.isdir(directory) and '://' not in directory:
    return None
  manager = _manager(directory)
  try:
    return manager.latest_step()
  finally:
    manager.close()


def read_params(workdir: str, step: int | None = None, directory: str | None = None) -> tuple[Any, int]:
  """``(params, step)`` of a run's checkpoint (the latest unless ``step``), as host numpy arrays.

  Only the ``params`` subtree of the saved train state is read: no optimizer state, no method extras, and no need
  to rebuild the method or its optimizer. ``directory`` overrides ``<workdir>/checkpoints``.
  """
  (params,), step = read_state_parts(workdir, ('params',), step, directory)
  return params, step


def read_state_parts(workdir: str, parts: tuple[str, ...], step: int | None = None,
                     directory: str | None = None) -> tuple[tuple[Any, ...], int]:
  """``(subtrees, step)``: the named subtrees of the saved train state (``'params'``, ``'extras'``: e.g. BatchNorm
  statistics) as host numpy arrays; a part the checkpoint lacks comes back as ``{}``."""
  import orbax.checkpoint as ocp

  directory = directory or os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory) and '://' not in directory:
    raise FileNotFoundError(f'no checkpoint under {directory}; train first.')
  manager = _manager(directory)
  try:
    step = manager.latest_step() if step is None else int(step)
    if step is None:
      raise FileNotFoundError(f'no checkpoint under {directory}; train first.')
    if step not in manager.all_steps():
      raise FileNotFoundError(f'no checkpoint of step {step} under {directory}; there are {manager.all_steps()}.')
    verify_step(directory, step, manager.all_steps())
    try:
      saved = manager.item_metadata(step)['state']
      saved = getattr(saved, 'tree', saved)
      present = [p for p in parts if p in saved and jax.tree.leaves(saved[p])]
      item = {p: jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), saved[p]) for p in present}
      args = {p: jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), saved[p]) for p in present}
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True)))
    except Exception as e:  # orbax / tensorstore raise many types; the user needs the step and the way out
      raise UnreadableCheckpointError(unreadable_message(directory, step, manager.all_steps(), e)) from e
  finally:
    manager.close()
  return tuple(restored['state'].get(p, {}) for p in parts), int(step)


def way_back(directory: str, step: int, all_steps) -> str:
  """How to go on without checkpoint ``step``: move it away, to resume from the one before (or from scratch)."""
  earlier = [s for s in all_steps if s < step]
  path = os.path.join(directory, str(step))
  return (f'move it away to resume from step {earlier[-1]} (mv {path} {path}.unreadable)' if earlier else
          f'move it away to start from scratch (mv {path} {path}.unreadable)')


def unreadable_message(directory: str, step: int, all_steps, error: BaseException) -> str:
  """One line naming the checkpoint, the root cause and the way back to the previous checkpoint."""
  root = error
  while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
    root = root.__cause__ or root.__context__
  detail = (str(root).strip().splitlines() or [type(root).__name__])[0][:400]
  # orbax's own advice (strict=False, enable_padding_and_truncation) would restore a different model silently
  detail = detail.split(' Truncating/padding is disabled')[0].rstrip('.')
  way_out = way_back(directory, step, all_steps)
  path = os.path.join(directory, str(step))
  return (f'checkpoint {path} could not be read into this run\'s train state: {detail}. If the config changed '
          f'since it was written (model, optimizer, method), use a new --workdir; if its files are damaged '
          f'(a truncated copy, a full disk), {way_out}.')


class WorkdirError(ValueError):
  """A ``--workdir`` that cannot hold a run (the message names the path and the fix)."""


def check_workdir(path: str) -> str:
  """``path`` if a run can write there (a directory, or a place one can be made), else a :class:`WorkdirError`
  saying why: empty, a file, under a file, or not writable. Remote paths (``gs://...``) are left to the storage."""
  if not path or not path.strip():
    raise WorkdirError('--workdir is empty: pass the directory the run writes its checkpoints and results to.')
  if '://' in path:
    return path
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f'--workdir {path} is a file, not a directory: pass a directory (new or a run\'s).')
  parent = path
  while not os.path.exists(parent):  # the nearest existing ancestor decides whether the folders can be made
    parent = os.path.dirname(os.path.abspath(parent))
  if not os.path.isdir(parent):
    raise WorkdirError(f'--workdir {path} lies under {parent}, which is a file: pass a directory path.')
  if not os.access(parent, os.W_OK | os.X_OK):
    raise WorkdirError(f'--workdir {path}: {parent} is not writable by this user; pick a writable location.')
  return path


@contextlib.contextmanager
def run_lock(path: str):
  """Owns the workdir ``path`` for one run: an exclusive ``flock`` on the directory itself, held until the run
  ends. Nothing is written for it (a failed command leaves the workdir as it found it; a directory made for the run
  and left empty is removed again), and the OS drops the lock when its process dies, so a killed run leaves nothing
  stuck. A second run on the same workdir gets a :class:`WorkdirError`. Where no lock can be taken (``gs://``
  paths, filesystems without locks) it says so once and goes on. In a multi-process run process 0 takes the lock
  and every process learns the outcome, so all of them stop with the same line when it is refused."""
  import fcntl

  from jax.experimental import multihost_utils

  primary = jax.process_index() == 0
  fd, locked, made, status = None, False, False, 0  # status: 0 go on, 1 in use
  if primary and '://' in path:
    print(f'note: --workdir {path} is remote storage, which has no locks: make sure no other run writes to it.',
          flush=True)
  elif primary:
    made = not os.path.exists(path)
    os.makedirs(path, exist_ok=True)
    fd = os.open(path, os.O_RDONLY)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      locked = True
    except OSError as e:
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        status = 1
      else:
        print(f'note: cannot lock --workdir {path} ({os.strerror(e.errno)} on this filesystem): make sure no other '
              'run writes to it.', flush=True)
  if jax.process_count() > 1:
    status = int(multihost_utils.broadcast_one_to_all(np.int32(status)))
  try:
    if status == 1:
      raise WorkdirError(f'--workdir {path} is in use by another run (it holds the workdir\'s lock); wait for it to '
                         'finish, or pass another --workdir.')
    yield
  finally:
    if fd is not None:
      if locked:
        fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)
    # made for this run, which wrote nothing: leave no trace (only the lock's holder may: another run may hold it)
    if made and locked and os.path.isdir(path) and not os.listdir(path):
      os.rmdir(path)
