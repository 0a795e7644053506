"""R-MAE's falsifiable check on the procedural LiDAR sweeps (mim_jax.data.lidar), over seeds, and its figure:

  python benchmarks/radial_mae_checks.py iou [--root workdirs/radial_mae] [--seeds 0,1] [--steps 3600]
  python benchmarks/radial_mae_checks.py figure --workdir workdirs/radial_mae/seed0 [--out FILE.png]

``iou`` pre-trains configs/radial_mae/lidar.py per seed s into ROOT/seed{s} (a run whose summary.json exists is
kept, so a sweep resumes), then on the 200 held-out sweeps draws the training mask (sensor-centred 5 degree
sectors, 80% of the non-empty ones hidden; mask draws fixed by --mask-seed) and scores **occupancy IoU over the
voxels of the hidden sectors**, pooled over the sweeps, for
  R-MAE        the decoder's occupancy (logit > 0) from the kept voxels only (BatchNorm running statistics)
  mirrored     a hidden column copies its mirror column across the street's axis (y -> -y) when that one is
               visible, else across the cross axis (x -> -x), else stays empty
               (mim_jax.methods.radial_mae.mirrored_baseline)
Checks (methods-round2.md §6.4, as issue #25 words them): R-MAE's IoU >= 2x the mirrored baseline's, and >= 0.3.
Prints a markdown table (mean ± sample std over seeds) and writes ROOT/radial_mae_checks.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
CONFIG = 'configs/radial_mae/lidar.py'


def pretrain(root: str, seed: int, steps: int | None) -> str:
  workdir = os.path.join(root, f'seed{seed}')
  if os.path.exists(os.path.join(workdir, 'summary.json')):
    print(f'{workdir}: done already', flush=True)
    return workdir
  cmd = [sys.executable, '-m', 'mim_jax.main', f'--config={CONFIG}', f'--config.seed={seed}', f'--workdir={workdir}',
         *([f'--config.total_steps={steps}'] if steps else [])]
  print('+', ' '.join(cmd), flush=True)
  with open(workdir + '.log', 'w') as log:
    subprocess.run(cmd, check=True, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                   env={**os.environ, 'PYTHONPATH': REPO})
  return workdir


def held_out(workdir: str, mask_seed: int, batch: int = 20):
  """(pretrained, voxels [N, Z, Y, X], per-batch generate() outputs) on the test split."""
  import jax
  import ml_collections

  from mim_jax.data import pipeline
  from mim_jax.eval import pretrained

  pre = pretrained.load(ml_collections.ConfigDict({'init': workdir}))
  method, data = pre.method, pre.config.data
  voxels = pipeline.eval_arrays(data, data.eval_split, fields=method.batch_fields(False),
                                record_transform=method.record_transform)['voxels']
  generate = jax.jit(method.generate)
  outs = []
  for i in range(0, len(voxels), batch):
    out = generate(pre.params, voxels[i:i + batch], jax.random.fold_in(jax.random.key(mask_seed), i))
    outs.append({k: np.asarray(v) for k, v in out.items()})
  return pre, voxels, {k: np.concatenate([o[k] for o in outs]) if np.ndim(outs[0][k]) else
                       np.asarray([o[k] for o in outs]) for k in outs[0]}


def hidden_ious(voxels: np.ndarray, out: dict) -> dict[str, float]:
  from mim_jax.methods.radial_mae import mirrored_baseline

  occupied = voxels > 0
  region = np.broadcast_to(out['hidden_columns'][:, None], occupied.shape)
  guesses = {'R-MAE': out['logits'] > 0, 'mirrored': mirrored_baseline(occupied, out['keep'],
                                                                       out['hidden_columns'])}
  result = {}
  for name, guess in guesses.items():
    pred, true = guess & region, occupied & region
    result[name] = float((pred & true).sum() / max((pred | true).sum(), 1))
  result['hidden_voxels'] = int((occupied & region).sum())
  return result


def iou(args) -> None:
  root = os.path.abspath(args.root)
  os.makedirs(root, exist_ok=True)
  seeds = [int(s) for s in args.seeds.split(',')]
  values: dict[str, list[float]] = {}
  for s in seeds:
    workdir = os.path.join(root, f'seed{s}') if args.report_only else pretrain(root, s, args.steps)
    _, voxels, out = held_out(workdir, args.mask_seed)
    r = hidden_ious(voxels, out)
    for k in ('R-MAE', 'mirrored'):
      values.setdefault(k, []).append(r[k])
    print(f'seed {s}: IoU on hidden sectors R-MAE {r["R-MAE"]:.3f}, mirrored {r["mirrored"]:.3f} '
          f'({r["hidden_voxels"]} occupied hidden voxels in {len(voxels)} sweeps)', flush=True)
  stats = {k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0) for k, v in values.items()}
  print(f'\nseeds {seeds}; occupancy IoU over the hidden sectors of the 200 held-out sweeps (mean ± std)\n')
  print('| predictor | IoU |\n| --- | --- |')
  for k, (m, sd) in stats.items():
    print(f'| {k} | {m:.3f} ± {sd:.3f} |')
  ours, mirror = stats['R-MAE'][0], stats['mirrored'][0]
  checks = {'R-MAE >= 2x mirrored': ours >= 2 * mirror, 'R-MAE >= 0.3': ours >= 0.3}
  for name, ok in checks.items():
    print(f'{"PASS" if ok else "FAIL"}  {name}')
  with open(os.path.join(root, 'radial_mae_checks.json'), 'w') as f:
    json.dump({'seeds': seeds, 'mask_seed': args.mask_seed, 'values': values, 'mean_std': stats,
               'checks': checks}, f, indent=1)


def figure(args) -> None:
  """Held-out sweeps from above: the full occupancy, what the encoder saw (hidden sectors shaded), R-MAE's
  generated occupancy and the mirrored baseline."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  from mim_jax.methods.radial_mae import mirrored_baseline

  pre, voxels, out = held_out(args.workdir, args.mask_seed)
  occupied = voxels > 0
  mirror = mirrored_baseline(occupied, out['keep'], out['hidden_columns'])
  panels = (('sweep (all voxels)', occupied), ('encoder input (hidden sectors grey)', out['keep']),
            ('R-MAE generated occupancy', out['logits'] > 0), ('mirrored-sector baseline', mirror))
  rows = args.sweeps
  fig, axes = plt.subplots(rows, len(panels), figsize=(3.0 * len(panels), 3.0 * rows), squeeze=False)
  for i in range(rows):
    hidden = out['hidden_columns'][i]
    for j, (title, grid) in enumerate(panels):
      top = np.asarray(grid[i]).any(axis=0)  # occupied anywhere in the column
      rgb = np.ones((*top.shape, 3))
      rgb[hidden] = 0.85
      rgb[top & hidden] = (0.85, 0.1, 0.1)
      rgb[top & ~hidden] = (0.1, 0.1, 0.1)
      ax = axes[i, j]
      ax.imshow(rgb, origin='lower')
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title(title, fontsize=8)
  fig.suptitle(f'R-MAE (radial masking), step {pre.step}: held-out LiDAR sweeps from above (64 x 64 m, sensor at '
               'the centre); red = occupied in a hidden sector', fontsize=8)
  fig.tight_layout()
  fig.savefig(args.out, dpi=100)
  print(f'wrote {args.out}')


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = p.add_subparsers(dest='command', required=True)
  a = sub.add_parser('iou')
  a.add_argument('--root', default='workdirs/radial_mae')
  a.add_argument('--seeds', default='0,1')
  a.add_argument('--steps', type=int, default=None, help='total_steps (default: the config, 3600)')
  a.add_argument('--mask-seed', type=int, default=0)
  a.add_argument('--report-only', action='store_true')
  f = sub.add_parser('figure')
  f.add_argument('--workdir', required=True)
  f.add_argument('--out', default='docs/img/radial_mae_lidar.png')
  f.add_argument('--sweeps', type=int, default=2)
  f.add_argument('--mask-seed', type=int, default=0)
  args = p.parse_args()
  {'iou': iou, 'figure': figure}[args.command](args)


if __name__ == '__main__':
  main()
