"""Checkpoints: orbax CheckpointManager (async, atomic, keep-last-N, interval) holding the train state and,
beside it, the grain data-iterator state, so a resumed run sees exactly the batches it would have seen.

Orbax writes each step into a temporary directory and renames it when complete, so a process killed mid-save
leaves the previous checkpoint intact; the unfinished one is ignored and cleaned up on the next start.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


def _grain_args():
  import grain  # noqa: F401  (registers grain's orbax handler)
  from grain import checkpoint as gckpt
  return gckpt.CheckpointSave, gckpt.CheckpointRestore


class Checkpointer:
  """Thin wrapper so the trainer reads as: ``latest_step()``, ``restore()``, ``save()``, ``close()``."""

  def __init__(self, directory: str, *, every_steps: int, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=max(1, every_steps),
        enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, data_iterator: Any = None, *, force: bool = False) -> bool:
    items = {'state': ocp.args.StandardSave(state)}
    if data_iterator is not None:
      save_cls, _ = _grain_args()
      items['data'] = save_cls(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state: Any, data_iterator: Any = None) -> Any:
    """Restores the state into the shardings of ``abstract_state`` (a pytree of ShapeDtypeStruct with
    ``.sharding``), so a run restored on a different device count is resharded; restores the data
    iterator in place when given."""
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    has_data = 'data' in self.item_names(step)
    if data_iterator is not None and has_data:
      _, restore_cls = _grain_args()
      items['data'] = restore_cls(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored['state']

  def item_names(self, step: int) -> list[str]:
    path = os.path.join(self.directory, str(step))
    return sorted(n for n in os.listdir(path) if not n.startswith('_')) if os.path.isdir(path) else []

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(state: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
