"""Training-curve PNGs from a run's ``metrics.jsonl`` (one JSON object per line: ``step`` + metrics).

Figures are drawn with matplotlib's Agg canvas directly (``matplotlib.figure.Figure``), so nothing here
touches pyplot's global backend or state: safe on headless machines and inside notebooks alike.
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mim_jax.report import is_accuracy_key
from mim_jax.train.metrics import read_metrics

DEFAULT_PROBE_KEYS = ('monitor/*top1', 'monitor/*top5')


def series(rows: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
  """``(steps, values)`` of ``key`` over the rows that have a finite value for it, sorted by step.

  A resumed run may log a step twice; the last value logged for a step wins.
  """
  points = {}
  for row in rows:
    value = row.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
      points[int(row['step'])] = float(value)
  steps = np.array(sorted(points), dtype=np.int64)
  return steps, np.array([points[s] for s in steps], dtype=np.float64)


def _expand(rows: Sequence[dict], patterns: Sequence[str]) -> list[str]:
  present = []
  for row in rows:
    present.extend(k for k in row if k != 'step' and k not in present)
  keys = []
  for pattern in patterns:
    matches = [k for k in present if fnmatch.fnmatchcase(k, pattern)]
    keys.extend(m for m in sorted(matches) if m not in keys)
  return keys


def _save(fig: Figure, out_png: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
  FigureCanvasAgg(fig)
  fig.savefig(out_png, dpi=120, bbox_inches='tight')
  return out_png


def _curves(metrics_jsonl_path: str, keys: Sequence[str]):
  """(rows, [(key, steps, values)] of the keys with data, figure, axes); a ValueError when none has data."""
  rows = read_metrics(metrics_jsonl_path)
  curves = [(k, *series(rows, k)) for k in _expand(rows, keys)]
  curves = [c for c in curves if len(c[1])]
  if not curves:
    raise ValueError(f'{metrics_jsonl_path}: no values for {list(keys)}')
  fig = Figure(figsize=(7, 4))
  return rows, curves, fig, fig.add_subplot()


def plot_loss_curve(
  metrics_jsonl_path: str,
  out_png: str,
  keys: Sequence[str] = ('train/loss', '*val*loss'),
  lr_key: str | None = 'train/lr',
  title: str | None = None,
) -> str:
  """Loss vs step (log scale when it spans more than a decade), with the learning rate on a second axis.

  ``keys`` are names or shell-style patterns; keys without data are skipped. Returns ``out_png``.
  """
  rows, curves, fig, ax = _curves(metrics_jsonl_path, keys)
  for key, steps, values in curves:
    ax.plot(steps, values, label=key, marker='o' if len(steps) < 30 else None, markersize=3)
  all_values = np.concatenate([c[2] for c in curves])
  if all_values.min() > 0 and all_values.max() / all_values.min() > 10:
    ax.set_yscale('log')
  ax.set_xlabel('step')
  ax.set_ylabel('loss')
  ax.grid(alpha=0.3)
  handles, labels = ax.get_legend_handles_labels()
  if lr_key:
    lr_steps, lr_values = series(rows, lr_key)
    if len(lr_steps):
      ax2 = ax.twinx()
      ax2.plot(lr_steps, lr_values, color='tab:gray', linestyle='--', linewidth=1, label=lr_key)
      ax2.set_ylabel('learning rate')
      h2, l2 = ax2.get_legend_handles_labels()
      handles, labels = handles + h2, labels + l2
  ax.legend(handles, labels, loc='upper right')
  ax.set_title(title or os.path.basename(os.path.dirname(os.path.abspath(metrics_jsonl_path))))
  return _save(fig, out_png)


def plot_probe_curve(
  metrics_jsonl_path: str,
  out_png: str,
  keys: Sequence[str] = DEFAULT_PROBE_KEYS,
  title: str | None = None,
) -> str:
  """Accuracy (in %) vs step for the online monitors, e.g. ``monitor/knn/top1``. Returns ``out_png``.

  ``keys`` are names or shell-style patterns; accuracy keys (``...top1``, ``...acc``) stored as fractions are
  shown in percent, any other key as logged.
  """
  _, curves, fig, ax = _curves(metrics_jsonl_path, keys)
  percent = all(is_accuracy_key(k) for k, _, _ in curves)
  for key, steps, values in curves:
    ax.plot(steps, 100 * values if is_accuracy_key(key) else values, marker='o', markersize=3, label=key)
  ax.set_xlabel('step')
  ax.set_ylabel('accuracy (%)' if percent else 'value')
  ax.grid(alpha=0.3)
  ax.legend(loc='lower right')
  ax.set_title(title or os.path.basename(os.path.dirname(os.path.abspath(metrics_jsonl_path))))
  return _save(fig, out_png)
