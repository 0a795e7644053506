"""Stop at a step boundary when the job is asked to stop (SIGTERM from a scheduler or a preempted VM, SIGINT).

The trainer checks :meth:`PreemptionGuard.should_stop` after every step; when it returns True it saves a
checkpoint of that step and exits with :class:`Preempted` (the CLI turns it into exit status 128 + signal, e.g.
143 for SIGTERM: "terminated by a signal", so schedulers requeue / retry, while the checkpoint is complete).

* One process: a Python signal handler sets a flag; the next step boundary sees it.
* Several processes: every process must save the *same* step, so the decision goes through JAX's preemption
  sync service (``multihost_utils.reached_preemption_sync_point``): any process that receives SIGTERM notifies
  the others through the coordinator and they agree on the next step all of them will reach. JAX installs its
  own SIGTERM handler for this; SIGINT (Ctrl-C) is forwarded to it as SIGTERM.

A second SIGINT while waiting for the step boundary raises KeyboardInterrupt as usual (an impatient Ctrl-C).
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Optional

import jax


class Preempted(Exception):
  """Raised after the checkpoint of the interrupted step is saved."""

  def __init__(self, step: int, signum: int):
    self.step = step
    self.signum = signum
    super().__init__(f'stopped by {signal.Signals(signum).name} after step {step}; a checkpoint of step {step} is '
                     'saved and the same command resumes from it.')

  @property
  def exit_code(self) -> int:
    return 128 + self.signum


class PreemptionGuard:
  """Context manager: ``with PreemptionGuard() as guard: ... if guard.should_stop(step): save; raise``."""

  def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
    self._signals = tuple(signals)
    self._previous: dict[int, object] = {}
    self.signum: Optional[int] = None
    self._multiprocess = False

  def __enter__(self) -> 'PreemptionGuard':
    self._multiprocess = jax.process_count() > 1
    if threading.current_thread() is not threading.main_thread():
      return self  # signal handlers can only be installed from the main thread
    for sig in self._signals:
      if self._multiprocess and sig == signal.SIGTERM:
        continue  # JAX's preemption notifier owns SIGTERM in a multi-process run
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def _handle(self, signum, frame) -> None:
    if signum == signal.SIGINT and self.signum == signal.SIGINT:
      raise KeyboardInterrupt  # second Ctrl-C: stop now, without the checkpoint
    self.signum = signum
    if self._multiprocess:  # let JAX's notifier run the cross-process agreement
      os.kill(os.getpid(), signal.SIGTERM)

  def should_stop(self, step: int) -> bool:
    """True once at the step where this run must save and stop (all processes get True at the same step)."""
    if not self._multiprocess:
      return self.signum is not None
    from jax.experimental import multihost_utils
    if multihost_utils.reached_preemption_sync_point(step):
      self.signum = self.signum or signal.SIGTERM
      return True
    return False
