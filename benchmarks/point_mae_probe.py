"""Point-MAE's falsifiable check on the procedural shapes (mim_jax.data.shapes3d, 10 classes), over seeds:

  python benchmarks/point_mae_probe.py [--root workdirs/point_mae] [--seeds 0,1] [--steps 1500] [--report-only]

Per seed s it pre-trains configs/point_mae/shapes.py with --config.seed=s into ROOT/seed{s} (a run whose
summary.json exists is kept, so an interrupted sweep resumes). The run's own end-of-training evaluation freezes the
encoder and fits probes on the mean-pooled group tokens of all 2000 training clouds, scored on the 500 test clouds:
the linear probe (SGD), logistic regression and k-NN (k 20), for the pre-trained encoder and for a random-init
encoder of the same architecture (``random_init/...``, the baseline).

Checks (methods-round2.md §6.2, as issue #25 words them): the frozen-token linear probe beats random init by >= 15
points and reaches >= 85% (mean over seeds). Prints a markdown table (mean ± sample std) and writes
ROOT/point_mae_checks.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = 'configs/point_mae/shapes.py'
PROBES = ('linear_probe/top1', 'logreg/top1', 'knn/top1')


def pretrain(root: str, seed: int, steps: int | None) -> dict:
  workdir = os.path.join(root, f'seed{seed}')
  summary = os.path.join(workdir, 'summary.json')
  if not os.path.exists(summary):
    cmd = [sys.executable, '-m', 'mim_jax.main', f'--config={CONFIG}', f'--config.seed={seed}',
           f'--workdir={workdir}', *([f'--config.total_steps={steps}'] if steps else [])]
    print('+', ' '.join(cmd), flush=True)
    with open(workdir + '.log', 'w') as log:
      subprocess.run(cmd, check=True, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                     env={**os.environ, 'PYTHONPATH': REPO})
  else:
    print(f'{workdir}: done already', flush=True)
  with open(summary) as f:
    return json.load(f)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--root', default='workdirs/point_mae')
  p.add_argument('--seeds', default='0,1')
  p.add_argument('--steps', type=int, default=None, help='total_steps (default: the config, 1500)')
  p.add_argument('--report-only', action='store_true', help='only read the finished runs')
  args = p.parse_args()
  root = os.path.abspath(args.root)
  os.makedirs(root, exist_ok=True)
  seeds = [int(s) for s in args.seeds.split(',')]
  values: dict[str, list[float]] = {}
  for s in seeds:
    if args.report_only:
      with open(os.path.join(root, f'seed{s}', 'summary.json')) as f:
        summary = json.load(f)
    else:
      summary = pretrain(root, s, args.steps)
    for probe in PROBES:
      for arm, key in (('point_mae', probe), ('random_init', f'random_init/{probe}')):
        values.setdefault(f'{arm}/{probe}', []).append(100 * float(summary[key]))
    print(f'seed {s}: ' + ', '.join(f'{k} {v[-1]:.1f}' for k, v in values.items()), flush=True)
  stats = {k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0) for k, v in values.items()}
  print(f'\nseeds {seeds}; mean ± std over seeds (%), 2000 training / 500 test clouds\n')
  print('| encoder | ' + ' | '.join(PROBES) + ' |')
  print('| --- |' + ' --- |' * len(PROBES))
  for arm in ('point_mae', 'random_init'):
    print(f'| {arm} | ' + ' | '.join(f'{stats[f"{arm}/{q}"][0]:.1f} ± {stats[f"{arm}/{q}"][1]:.1f}'
                                     for q in PROBES) + ' |')
  ours, rand = stats['point_mae/linear_probe/top1'][0], stats['random_init/linear_probe/top1'][0]
  checks = {'linear probe >= random init + 15': ours >= rand + 15, 'linear probe >= 85%': ours >= 85.0}
  for name, ok in checks.items():
    print(f'{"PASS" if ok else "FAIL"}  {name}')
  with open(os.path.join(root, 'point_mae_checks.json'), 'w') as f:
    json.dump({'seeds': seeds, 'values': values, 'mean_std': stats, 'checks': checks}, f, indent=1)


if __name__ == '__main__':
  main()
