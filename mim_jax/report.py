"""Tabulate the ``summary.json`` of several runs, the way papers present ablations.

  python -m mim_jax.report WORKDIR [WORKDIR ...] [--keys k1,k2] [--format markdown|csv] [--all]

Each workdir's ``summary.json`` is a flat JSON object (nested objects are flattened with ``/``). One row per
run. Accuracy columns (keys ending in ``top1``, ``top5``, ``acc`` or ``accuracy``) are stored as fractions
and printed as percentages with one decimal in markdown; CSV keeps the raw values. The default columns are
the method, every accuracy present (pre-trained first, then ``random_init/``, ``raw_pixels/``), the
checkpoint step and the config hash. ``--keys`` picks columns explicitly (shell-style wildcards allowed, e.g.
``'random_init/*'``); ``--all`` shows every key.

``--seeds`` groups runs whose names differ only in a seed suffix (``mask0.5_seed0``, ``mask0.5_seed1``, ...: the
pattern ``--seed-pattern``) into one row per group, with the mean and the sample standard deviation of every
numeric column over the group's runs and the number of runs (``n``); a text column shows its value when all runs
agree, else ``*``.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import io
import json
import os
import re
import statistics
import sys
from collections.abc import Sequence

SUMMARY_FILE = 'summary.json'
_ACCURACY_SUFFIXES = ('top1', 'top5', 'acc', 'accuracy')
_EVAL_ORDER = ('linear_probe', 'knn', 'finetune', 'least_squares', 'logreg')
_BASELINE_PREFIXES = ('random_init/', 'raw_pixels/')
_FRONT, _BACK = ('method',), ('checkpoint_step', 'config_hash')


class SummaryNotFoundError(FileNotFoundError):
  pass


def _flatten(obj: dict, prefix: str = '') -> dict:
  out = {}
  for key, value in obj.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict):
      out.update(_flatten(value, f'{name}/'))
    else:
      out[name] = value
  return out


def load_summary(workdir: str) -> dict:
  """The flattened ``summary.json`` of a workdir (or the path of a summary file itself)."""
  path = workdir if workdir.endswith('.json') else os.path.join(workdir, SUMMARY_FILE)
  if not os.path.isfile(path):
    raise SummaryNotFoundError(
      f'no {SUMMARY_FILE} in {workdir!r}: has an evaluation finished there? '
      '(a run writes it at the end of pre-training or of an eval config)'
    )
  with open(path) as f:
    data = json.load(f)
  if not isinstance(data, dict):
    raise ValueError(f'{path}: expected a JSON object, got {type(data).__name__}')
  return _flatten(data)


def is_accuracy_key(key: str) -> bool:
  return key.rsplit('/', 1)[-1].endswith(_ACCURACY_SUFFIXES)


def _accuracy_rank(key: str) -> tuple:
  """Pre-trained first, then each baseline prefix; within one, the evaluations in ``_EVAL_ORDER``."""
  group, rest = 0, key
  for i, prefix in enumerate(_BASELINE_PREFIXES, start=1):
    if key.startswith(prefix):
      group, rest = i, key[len(prefix) :]
      break
  head = rest.split('/', 1)[0]
  return (group, _EVAL_ORDER.index(head) if head in _EVAL_ORDER else len(_EVAL_ORDER), rest)


def default_columns(summaries: Sequence[dict], show_all: bool = False) -> list[str]:
  present = {k for s in summaries for k in s}
  front = [k for k in _FRONT if k in present]
  back = [k for k in _BACK if k in present]
  accuracies = sorted((k for k in present if is_accuracy_key(k)), key=_accuracy_rank)
  others = sorted(present - set(front) - set(back) - set(accuracies)) if show_all else []
  return front + accuracies + others + back


def select_columns(summaries: Sequence[dict], keys: Sequence[str]) -> list[str]:
  """Explicit keys in the given order; wildcard patterns expand to the matching keys in default order."""
  ordered = default_columns(summaries, show_all=True)
  out: list[str] = []
  for key in keys:
    matches = [k for k in ordered if fnmatch.fnmatchcase(k, key)] if any(c in key for c in '*?[') else [key]
    out.extend(m for m in matches if m not in out)
  return out


def run_names(workdirs: Sequence[str]) -> list[str]:
  paths = [os.path.normpath(w[: -len(SUMMARY_FILE)] if w.endswith(SUMMARY_FILE) else w) for w in workdirs]
  names = [os.path.basename(p) or p for p in paths]
  return names if len(set(names)) == len(names) else paths


def format_value(key: str, value, percent: bool = True) -> str:
  if value is None:
    return '-'
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, (int, float)) and percent and is_accuracy_key(key):
    return f'{100.0 * value:.1f}'
  if isinstance(value, float):
    return f'{value:.4g}'
  return str(value)


def render(
  names: Sequence[str], summaries: Sequence[dict], columns: Sequence[str], fmt: str = 'markdown'
) -> str:
  header = ['run', *columns]
  if fmt == 'csv':
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator='\n')
    writer.writerow(header)
    for name, s in zip(names, summaries):
      writer.writerow([name, *('' if s.get(c) is None else s[c] for c in columns)])
    return buf.getvalue()
  if fmt != 'markdown':
    raise ValueError(f"unknown format {fmt!r}; expected 'markdown' or 'csv'")
  rows = [[name, *(format_value(c, s.get(c)) for c in columns)] for name, s in zip(names, summaries)]
  numeric = [
    all(isinstance(s.get(c), (int, float)) or s.get(c) is None for s in summaries) for c in columns
  ]
  align = [':---', *(('---:' if n else ':---') for n in numeric)]
  lines = ['| ' + ' | '.join(r) + ' |' for r in (header, align, *rows)]
  return '\n'.join(lines) + '\n'


DEFAULT_SEED_PATTERN = r'^(?P<group>.*?)[_-]?seed\d+$'


def group_by_seed(names: Sequence[str], summaries: Sequence[dict],
                  pattern: str = DEFAULT_SEED_PATTERN) -> tuple[list[str], list[list[dict]]]:
  """Runs grouped by their name without the seed suffix (``pattern``'s ``group``), in order of first appearance."""
  groups: dict[str, list[dict]] = {}
  regex = re.compile(pattern)
  for name, summary in zip(names, summaries):
    match = regex.match(os.path.basename(name))
    groups.setdefault(match.group('group') if match else name, []).append(summary)
  return list(groups), list(groups.values())


def aggregate(runs: Sequence[dict], columns: Sequence[str]) -> dict:
  """One row for a group of runs: ``(mean, std, n)`` for numeric columns (std None for a single run), the common
  value (or '*') for the others, and ``n``."""
  row: dict = {'n': len(runs)}
  for c in columns:
    values = [r[c] for r in runs if r.get(c) is not None]
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
      std = statistics.stdev(values) if len(values) > 1 else None
      row[c] = (statistics.fmean(values), std, len(values))
    elif values:
      row[c] = values[0] if all(v == values[0] for v in values) else '*'
  return row


def format_aggregate(key: str, value) -> str:
  if not isinstance(value, tuple):
    return format_value(key, value)
  mean, std, _ = value
  scale = 100.0 if is_accuracy_key(key) else 1.0
  digits = 1 if is_accuracy_key(key) else 4
  mean_s = f'{scale * mean:.{digits}f}' if is_accuracy_key(key) else f'{mean:.4g}'
  if std is None:
    return mean_s
  return f'{mean_s} ± {scale * std:.{digits}f}' if is_accuracy_key(key) else f'{mean_s} ± {std:.2g}'


def render_groups(groups: Sequence[str], runs: Sequence[Sequence[dict]], columns: Sequence[str]) -> str:
  """Markdown: one row per group, ``mean ± std`` over its runs (accuracies in percent), and ``n``."""
  rows = [aggregate(r, columns) for r in runs]
  header = ['run', 'n', *columns]
  body = [[g, str(row['n']), *(format_aggregate(c, row.get(c)) for c in columns)] for g, row in zip(groups, rows)]
  align = [':---', '---:', *('---:' for _ in columns)]
  return '\n'.join('| ' + ' | '.join(r) + ' |' for r in (header, align, *body)) + '\n'


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog='python -m mim_jax.report',
    description='One row per run from each WORKDIR/summary.json. Accuracies are printed in percent.',
  )
  parser.add_argument('workdirs', nargs='+', metavar='WORKDIR')
  parser.add_argument(
    '--keys', help='comma-separated columns, wildcards allowed (default: method, accuracies, step, hash)'
  )
  parser.add_argument('--format', choices=('markdown', 'csv'), default='markdown')
  parser.add_argument('--all', action='store_true', help='show every key, not only accuracies')
  parser.add_argument('--skip-missing', action='store_true', help='warn about workdirs without a summary')
  parser.add_argument('--seeds', action='store_true',
                      help='one row per group of runs that differ only in a seed suffix: mean ± std and n')
  parser.add_argument('--seed-pattern', default=DEFAULT_SEED_PATTERN,
                      help='regex with a named group "group": the run name without its seed')
  args = parser.parse_args(argv)

  workdirs, summaries = [], []
  for workdir in args.workdirs:
    try:
      summaries.append(load_summary(workdir))
      workdirs.append(workdir)
    except (SummaryNotFoundError, ValueError, json.JSONDecodeError) as e:
      print(f'error: {e}', file=sys.stderr)
      if not args.skip_missing or not isinstance(e, SummaryNotFoundError):
        return 2
  if not summaries:
    print('error: no summaries to report', file=sys.stderr)
    return 2
  if args.keys:
    columns = select_columns(summaries, [k.strip() for k in args.keys.split(',') if k.strip()])
    unknown = [c for c in columns if all(c not in s for s in summaries)]
    if unknown:
      print(f'warning: no run has {", ".join(unknown)}', file=sys.stderr)
  else:
    columns = default_columns(summaries, show_all=args.all)
  if args.seeds:
    if args.format != 'markdown':
      print('error: --seeds renders markdown only', file=sys.stderr)
      return 2
    groups, runs = group_by_seed(run_names(workdirs), summaries, args.seed_pattern)
    sys.stdout.write(render_groups(groups, runs, columns))
    return 0
  sys.stdout.write(render(run_names(workdirs), summaries, columns, args.format))
  return 0


if __name__ == '__main__':
  sys.exit(main())
