"""Checkpoints: orbax CheckpointManager (async, atomic, keep-last-N) holding the train state and, beside it,
the grain data-iterator state, so a resumed run sees exactly the batches it would have seen.

* Atomic: orbax writes each step into ``<step>.orbax-checkpoint-tmp-*`` and renames it when every process has
  finished (on GCS, where there is no rename, it writes a commit marker instead). A process killed mid-save
  leaves the previous checkpoint intact; the unfinished directory is ignored and removed on the next start.
* Cooperative: every process calls ``save``; each writes the shards its devices own (replicated arrays are
  written once), process 0 writes the metadata, and each process writes its own data-iterator position.
* Resharding: ``restore`` reads into the shardings of the abstract state it is given, so a run resumed on a
  different device count (or mesh) is resharded on the fly.
* Checksums: once a step is finished, process 0 writes ``<step>/mim_jax_checksums.json`` (CRC-32 and size of every
  file of the step); ``restore`` verifies them first, so flipped bytes (a bad disk, a damaged copy) are reported
  with the step and the way back instead of being read as weights. Local filesystems only (on ``gs://`` the
  storage keeps its own checksums).
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import type_handlers

from mim_jax import workdir as workdir_lib
from mim_jax.train import sharding as shd
from mim_jax.workdir import UnreadableCheckpointError

# Replicated arrays smaller than this are written by one replica instead of being split across replicas
# ("replica-parallel" saving), which would compile a slicing program per array and device on first save.
MIN_REPLICA_PARALLEL_SLICE_BYTES = 1 << 20

_GRAIN_STATE_FILE = re.compile(r'process_(\d+)-of-(\d+)\.json')


def _grain():
  from grain import checkpoint as gckpt  # grain's orbax handler for iterator positions (one file per process)
  return gckpt


def _state_handler() -> ocp.PyTreeCheckpointHandler:
  """orbax's default pytree handler, except for the replica-parallel threshold of jax.Array leaves."""
  try:  # the per-array metadata orbax's default handler keeps (no public import path in orbax 0.12)
    from orbax.checkpoint._src.metadata.array_metadata_store import Store
    metadata_store = Store()
  except ImportError:
    metadata_store = None
  array_handler = type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=MIN_REPLICA_PARALLEL_SLICE_BYTES,
                                             array_metadata_store=metadata_store)
  scalar = type_handlers.ScalarHandler()
  registry = type_handlers.create_type_handler_registry(
      (int, scalar), (float, scalar), (bytes, scalar), (np.number, scalar),
      (np.ndarray, type_handlers.NumpyHandler()), (jax.Array, array_handler), (str, type_handlers.StringHandler()))
  return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


class Checkpointer:
  """Thin wrapper so the trainer reads as: ``latest_step()``, ``should_save()``, ``restore()``, ``save()``,
  ``close()``."""

  def __init__(self, directory: str, *, every_steps: int, keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    """``read_only``: for loading only (evaluation, export): the directory is neither created nor cleaned of
    unfinished saves (orbax does that in a background thread, which a short-lived reader can exit before)."""
    self.directory = directory if '://' in directory else os.path.abspath(directory)  # gs://... stays a URL
    self.every_steps = max(1, int(every_steps))
    # The trainer decides when to save (interval, preemption, end) and always saves with force=True, so every
    # process takes the same decision at the same step without orbax's own policies.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=self.every_steps, enable_async_checkpointing=async_save,
        create=not read_only, cleanup_tmp_directories=not read_only)
    handlers = {'state': _state_handler(), 'data': _grain().CheckpointHandler()}
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
    self._sealer = None  # the thread writing checksum manifests (mim_jax.workdir.seal_step)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def should_save(self, step: int) -> bool:
    return step % self.every_steps == 0 and step != self.latest_step()

  def seal_finished(self, wait: bool = False) -> None:
    """Writes the checksum manifest of every finished step that has none (process 0, local filesystems), in a
    background thread so that a save never waits for it; ``wait``: in the caller, after the pending one."""
    if jax.process_index() != 0 or '://' in self.directory:
      return
    if self._sealer is not None:
      if not wait and self._sealer.is_alive():
        return  # the running one picks up finished steps on its next call
      self._sealer.join()
      self._sealer = None
    steps = self.all_steps()

    def seal():
      for s in steps:
        try:
          workdir_lib.seal_step(self.directory, s)
        except OSError:  # the step went away meanwhile (max_to_keep): nothing left to seal
          pass
    if wait:
      seal()
    else:
      self._sealer = threading.Thread(target=seal, name='mim_jax-checksums', daemon=True)
      self._sealer.start()

  def verify(self, step: int) -> None:
    workdir_lib.verify_step(self.directory, step, self.all_steps())

  def save(self, step: int, state: Any, data_iterator: Any = None, *, force: bool = True) -> bool:
    self.seal_finished()
    items = {'state': ocp.args.PyTreeSave(state)}
    if data_iterator is not None:
      items['data'] = _grain().CheckpointSave(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state: Any, data_iterator: Any = None) -> Any:
    """Restores the state into the shardings of ``abstract_state`` (a pytree of ShapeDtypeStruct with
    ``.sharding``), so a run restored on a different device count is resharded; restores the data
    iterator in place when given."""
    self.verify(step)
    with_data = data_iterator is not None and 'data' in self.item_names(step)
    if with_data:
      self._check_data_processes(step)
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_state)
    try:
      added = self._fields_added_since(step, abstract_state)
      # partial_restore only for fields the state class gives defaults: any other mismatch stays an error.
      items = {'state': ocp.args.PyTreeRestore(abstract_state, restore_args=restore_args,
                                               partial_restore=bool(added))}
      if with_data:
        items['data'] = _grain().CheckpointRestore(data_iterator)
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # orbax / tensorstore raise many types here; the user needs the step and the way out
      raise UnreadableCheckpointError(self._unreadable_message(step, e)) from e
    state = restored['state']
    if added:
      state = state.replace(**{name: shd.place(default, getattr(abstract_state, name).sharding)
                               for name, default in added.items()})
      # partial_restore hands back the abstract leaf for anything else the checkpoint lacks.
      lacking = [jax.tree_util.keystr(path) for path, leaf in jax.tree_util.tree_leaves_with_path(state)
                 if isinstance(leaf, jax.ShapeDtypeStruct)]
      if lacking:
        raise UnreadableCheckpointError(
            f'checkpoint {self.directory}/{step} does not match this train state: it lacks '
            f'{", ".join(lacking[:8])}{"..." if len(lacking) > 8 else ""}.')
    return state

  def _unreadable_message(self, step: int, error: BaseException) -> str:
    return workdir_lib.unreadable_message(self.directory, step, self.all_steps(), error)

  def _fields_added_since(self, step: int, abstract_state: Any) -> dict[str, Any]:
    """{name: default} for the fields of a dataclass state (``TrainState``'s loss-scale fields) that this
    checkpoint predates, so that checkpoints written before those fields existed still restore. Empty when the
    checkpoint has them all, or when a missing field has no default (then orbax reports the mismatch)."""
    if not dataclasses.is_dataclass(abstract_state):
      return {}
    saved = self.manager.item_metadata(step)['state']
    saved = getattr(saved, 'tree', saved)
    if not isinstance(saved, dict):
      return {}
    missing = [f for f in dataclasses.fields(abstract_state) if f.name not in saved]
    if any(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING for f in missing):
      return {}
    return {f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory() for f in missing}

  def _check_data_processes(self, step: int) -> None:
    files = [p.name for p in (epath.Path(self.directory) / str(step) / 'data').iterdir()]
    counts = {int(m.group(2)) for m in map(_GRAIN_STATE_FILE.fullmatch, files) if m}
    if counts and jax.process_count() not in counts:
      raise ValueError(f'checkpoint {self.directory}/{step} was written by {sorted(counts)[0]} processes and this run '
                       f'has {jax.process_count()}: each process saved its own data-iterator position. Resume with '
                       f'{sorted(counts)[0]} processes (the device count per process may differ), or start a new '
                       'workdir initialised from these parameters.')

  def item_names(self, step: int) -> list[str]:
    path = epath.Path(self.directory) / str(step)
    return sorted(p.name for p in path.iterdir() if not p.name.startswith('_')) if path.is_dir() else []

  def wait(self) -> None:
    self.manager.wait_until_finished()
    self.seal_finished(wait=True)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.seal_finished(wait=True)
    self.manager.close()


def abstract_like(state: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
