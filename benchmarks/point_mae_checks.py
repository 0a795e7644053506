"""Point-MAE's falsifiable check on the procedural shapes (mim_jax.data.shapes3d, 10 classes), and a figure:

  python benchmarks/point_mae_checks.py probe [--root workdirs/point_mae] [--seeds 0,1] [--steps 1500] [--report-only]
  python benchmarks/point_mae_checks.py figure --workdir workdirs/point_mae/seed0 [--out docs/img/point_mae_shapes.png]

Per seed s it pre-trains configs/point_mae/shapes.py with --config.seed=s into ROOT/seed{s} (a run whose
summary.json exists is kept, so an interrupted sweep resumes). The run's own end-of-training evaluation freezes the
encoder and fits probes on the mean-pooled group tokens of all 2000 training clouds, scored on the 500 test clouds:
the linear probe (SGD), logistic regression and k-NN (k 20), for the pre-trained encoder and for a random-init
encoder of the same architecture (``random_init/...``, the baseline).

Checks (methods-round2.md §6.2, as issue #25 words them): the frozen-token linear probe beats random init by >= 15
points and reaches >= 85% (mean over seeds). Prints a markdown table (mean ± sample std) and writes
ROOT/point_mae_checks.json.

The figure draws held-out clouds with 60% of their groups hidden: the whole cloud, the visible groups (the
encoder's input), and the visible groups with the decoder's predicted points of the hidden groups (each group's
prediction placed at its centre, as the Chamfer loss compares it).
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


def probe(args) -> None:
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


def figure(args) -> None:
  import jax
  import matplotlib
  import ml_collections

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  sys.path.insert(0, REPO)
  from mim_jax.data import pipeline
  from mim_jax.data.shapes3d import CLASS_NAMES
  from mim_jax.eval import pretrained

  pre = pretrained.load(ml_collections.ConfigDict({'init': args.workdir}))
  method, data = pre.method, pre.config.data
  test = pipeline.eval_arrays(data, data.eval_split, fields=method.batch_fields(False),
                              record_transform=method.record_transform)
  # One cloud of each of the first ``clouds`` classes, the first of it in the test split.
  picks = [int(np.flatnonzero(test['label'] == c)[0]) for c in range(args.clouds)]
  points = np.asarray(test['points'][picks], np.float32)
  info = method.masker(jax.random.key(args.mask_seed), len(picks))
  params = {k: v for k, v in pre.params.items() if k != 'batch_stats'}
  out = jax.jit(lambda p, s, x: method.forward(p, s, x, info, train=False))(params, pre.params['batch_stats'], points)
  center = np.asarray(out['center'])
  hood = np.asarray(out['neighborhood']) + center[:, :, None]
  keep, hidden = np.asarray(info.ids_keep), np.asarray(info.ids_masked)
  pred = np.asarray(out['pred']) + np.take_along_axis(center, hidden[..., None], axis=1)[:, :, None]
  loss = float(out['loss'])

  fig = plt.figure(figsize=(10.0, 2.6 * len(picks)))
  for i in range(len(picks)):
    visible = hood[i, keep[i]].reshape(-1, 3)
    truth_hidden = hood[i, hidden[i]].reshape(-1, 3)
    panels = (('the cloud', [(points[i], 'k')]),
              ('visible groups (the encoder input)', [(visible, 'k')]),
              ('+ predicted hidden groups (red)', [(visible, 'k'), (pred[i].reshape(-1, 3), 'r')]),
              ('+ true hidden groups (blue)', [(visible, 'k'), (truth_hidden, 'b')]))
    for j, (title, sets) in enumerate(panels):
      ax = fig.add_subplot(len(picks), len(panels), i * len(panels) + j + 1, projection='3d')
      for xyz, colour in sets:
        ax.scatter(xyz[:, 0], xyz[:, 2], xyz[:, 1], s=2, c=colour, depthshade=False)
      ax.set_axis_off()
      ax.set_box_aspect((1, 1, 1))
      lim = np.abs(points[i]).max()
      ax.set(xlim=(-lim, lim), ylim=(-lim, lim), zlim=(-lim, lim))
      ax.view_init(elev=20, azim=35)
      if i == 0 or j == 0:
        ax.set_title(f'{CLASS_NAMES[int(test["label"][picks[i]])]}: {title}' if j == 0 else title, fontsize=8)
  fig.suptitle(f'Point-MAE, step {pre.step}: held-out clouds, {hidden.shape[1]} of {center.shape[1]} groups hidden; '
               f'red = predicted points (Chamfer-L2 {loss:.4f})', fontsize=8)
  fig.tight_layout()
  fig.savefig(args.out, dpi=90)
  print(f'wrote {args.out}')


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = p.add_subparsers(dest='command', required=True)
  a = sub.add_parser('probe', help='pre-train per seed and compare the probes with random init')
  a.add_argument('--root', default='workdirs/point_mae')
  a.add_argument('--seeds', default='0,1')
  a.add_argument('--steps', type=int, default=None, help='total_steps (default: the config, 1500)')
  a.add_argument('--report-only', action='store_true', help='only read the finished runs')
  f = sub.add_parser('figure', help='held-out clouds with hidden groups and their predicted points')
  f.add_argument('--workdir', required=True)
  f.add_argument('--out', default='docs/img/point_mae_shapes.png')
  f.add_argument('--clouds', type=int, default=4, help='one cloud of each of the first CLOUDS classes')
  f.add_argument('--mask-seed', type=int, default=0)
  args = p.parse_args()
  {'probe': probe, 'figure': figure}[args.command](args)


if __name__ == '__main__':
  main()
