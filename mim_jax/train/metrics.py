"""Run outputs: metrics.jsonl, TensorBoard events, and the progress line on stdout (process 0 only)."""

from __future__ import annotations

import errno
import json
import math
import os
import time
from typing import Any, Mapping

import jax
import numpy as np


def _scalar(v: Any) -> float | int:
  v = np.asarray(v)
  return v.item() if v.size == 1 else float(v.mean())


class MetricWriter:
  """Appends ``{"step": s, key: value, ...}`` lines to ``metrics.jsonl`` and scalars to TensorBoard."""

  def __init__(self, workdir: str, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {'step': int(step), **{k: _scalar(v) for k, v in metrics.items()}}
    # Strict JSON: a non-finite value (a skipped step's loss) is written as null, which every reader accepts
    # (Python's json would write Infinity / NaN, which strict parsers reject). One write call per row.
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
    line = (json.dumps(clean, allow_nan=False) + '\n').encode()
    # Unbuffered: a failed write (a full disk) is cut back with ftruncate, which a buffered file cannot do (its
    # truncate flushes first and fails the same way), so no torn row stays for readers to stop at.
    fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
      start = os.fstat(fd).st_size
      try:
        written = os.write(fd, line)
        if written != len(line):
          raise OSError(errno.ENOSPC, 'No space left on device', self.path)
      except OSError:
        try:
          os.ftruncate(fd, start)
        except OSError:
          pass
        raise
    finally:
      os.close(fd)
    for k, v in row.items():
      if k != 'step' and isinstance(v, (int, float)) and math.isfinite(v):
        self._tb.add_scalar(k, v, int(step))
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(path: str) -> list[dict]:
  """All rows of a ``metrics.jsonl`` file; a truncated last line (a run killed mid-write) is ignored."""
  rows = []
  with open(path) as f:
    lines = f.read().splitlines()
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as e:
      if i == len(lines) - 1:
        break
      raise ValueError(f'{path}, line {i + 1}: not a JSON row ({e.msg}); the file is damaged: remove that line '
                       'to read the rest.') from None
  return rows


class Progress:
  """Step, loss, lr, images/s and ETA every ``log_every`` steps, measured between log points."""

  def __init__(self, total_steps: int, global_batch: int, start_step: int):
    self.total = total_steps
    self.batch = global_batch
    self._t = time.perf_counter()
    self._step = start_step
    self.enabled = jax.process_index() == 0

  def rate(self, step: int) -> tuple[float, float]:
    now = time.perf_counter()
    dt = max(now - self._t, 1e-9)
    steps = step - self._step
    self._t, self._step = now, step
    return steps * self.batch / dt, steps / dt

  def line(self, step: int, metrics: Mapping[str, float], images_per_s: float, steps_per_s: float) -> str:
    eta = (self.total - step) / steps_per_s if steps_per_s > 0 else float('inf')
    parts = [f'step {step:>{len(str(self.total))}}/{self.total}']
    for key, fmt in (('train/loss', '.4f'), ('train/lr', '.2e'), ('train/grad_norm', '.3f'),
                     ('train/loss_scale', '.0f')):
      if key in metrics:
        parts.append(f'{key.split("/")[1]} {metrics[key]:{fmt}}')
    parts.append(f'{images_per_s:,.0f} img/s')
    parts.append(f'ETA {format_seconds(eta)}')
    return ' | '.join(parts)


def format_seconds(s: float) -> str:
  if not math.isfinite(s):
    return '?'
  s = int(s)
  return f'{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}'
