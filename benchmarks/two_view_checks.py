"""The two-view methods' falsifiable checks on held-out Fashion-MNIST pairs (test split), from the runs of
`python benchmarks/fashion_mnist.py two_views` (and the teachers grid's MAE at the same visibility):

  python benchmarks/two_view_checks.py --root workdirs/fashion_ablation --seeds 0,1 [--pairs 2000]
  python benchmarks/two_view_checks.py --stereo workdirs/stereo_croco_s0,workdirs/stereo_croco_s1 \
      --stereo-mae workdirs/stereo_mae_s0,workdirs/stereo_mae_s1

1. The decoder uses the reference view: each two-view model's loss on view 1 with its true view 2 against another
   image's view 2, same masks (CropMAE: at least 15% lower; CroCo: at most 0.8x).
2. CroCo's completion beats no reference: CroCo's loss with the true view 2 against MAE's (2 of 16 visible, one
   view) on the same view 1 and masks (at most 0.8x).
3. Geometry: nearest-neighbour patch matching between the two views of homography pairs on frozen patch features,
   against the exact correspondence (CroCo at least MAE + 10 points, within one patch).

Prints one markdown table (mean ± sample std over the seeds) and writes ROOT/two_view_checks.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

TWO_VIEW = ('cropmae', 'cropmae_random_views', 'croco')
ONE_VIEW = ('mae_ratio0.875', 'baseline')  # MAE at 2 of 16 visible, and the recipe's MAE (4 of 16)


def load(workdir: str):
  """(config, method, host params) of a pre-training workdir's latest checkpoint."""
  import ml_collections

  from mim_jax.eval import pretrained

  run = pretrained.load(ml_collections.ConfigDict({'init': workdir}))
  return run.config, run.method, run.params


def measure(root: str, seed: int, num: int) -> dict[str, dict[str, float]]:
  from mim_jax.eval import two_view
  from mim_jax.methods.croco import CroCo

  croco_dir = os.path.join(root, f'croco_seed{seed}')
  croco_cfg, croco, croco_params = load(croco_dir)
  homography = two_view.held_out_pairs(croco_cfg.data, croco.pairs, num, seed=1234)
  out: dict[str, dict[str, float]] = {}
  for cell in TWO_VIEW + ONE_VIEW:
    workdir = os.path.join(root, f'{cell}_seed{seed}')
    if not os.path.exists(os.path.join(workdir, 'summary.json')):
      print(f'skipping {cell}_seed{seed}: not finished', file=sys.stderr)
      continue
    config, method, params = (croco_cfg, croco, croco_params) if cell == 'croco' else load(workdir)
    row = {}
    if cell in TWO_VIEW:
      own = homography if isinstance(method, CroCo) else two_view.held_out_pairs(config.data, method.pairs, num,
                                                                                    seed=1234)
      ref = two_view.reference_losses(method, params, own['view1'], own['view2'])
      row.update({'loss/true_reference': ref['true'], 'loss/shuffled_reference': ref['shuffled'],
                  'loss/true_over_shuffled': ref['ratio']})
      if cell == 'croco':
        row['loss/croco_true'] = ref['true']
    if cell == 'mae_ratio0.875':
      row['loss/mae_on_croco_view1'] = two_view.single_view_loss(method, params, homography['view1'])
    corr = two_view.patch_correspondence(method, params, homography['view1'], homography['view2'],
                                         homography['homography'])
    row.update({'correspondence/exact': corr['exact'], 'correspondence/within1': corr['within1'],
                'correspondence/chance_exact': corr['chance_exact'],
                'correspondence/chance_within1': corr['chance_within1']})
    out[cell] = row
  if 'croco' in out and 'mae_ratio0.875' in out:
    out['croco']['loss/croco_over_mae'] = out['croco']['loss/croco_true'] / out['mae_ratio0.875'][
        'loss/mae_on_croco_view1']
  return out


def figure(workdir: str, out: str, num: int = 6) -> str:
  """Held-out pairs through a two-view run: view 2, view 1, its mask and the reconstruction (PNG)."""
  import jax

  from mim_jax.eval import two_view
  from mim_jax.eval.visualize import reconstruction_figure

  config, method, params = load(workdir)
  pairs = two_view.held_out_pairs(config.data, method.pairs, num, seed=1234)
  res = jax.jit(method.reconstruct_pair)(params, pairs['view1'], pairs['view2'], jax.random.key(0))
  info = method.facts.data
  return reconstruction_figure(pairs['view1'], np.asarray(res['pred_images']), np.asarray(res['mask_images']), out,
                               mean=info.mean, std=info.std, reference=pairs['view2'],
                               title=f'{config.method}: held-out pairs, loss {float(res["loss"]):.3f}')


def table(per_seed: dict[int, dict]) -> str:
  cells = [c for c in TWO_VIEW + ONE_VIEW if any(c in r for r in per_seed.values())]
  keys = ('loss/true_over_shuffled', 'loss/croco_over_mae', 'correspondence/exact', 'correspondence/within1')
  scale = {'correspondence/exact': 100, 'correspondence/within1': 100}
  lines = ['| cell | ' + ' | '.join(keys) + ' |', '| :--- |' + ' ---: |' * len(keys)]
  for cell in cells:
    vals = []
    for key in keys:
      xs = [r[cell][key] * scale.get(key, 1) for r in per_seed.values() if cell in r and key in r[cell]]
      if not xs:
        vals.append('')
      elif len(xs) == 1:
        vals.append(f'{xs[0]:.3f}' if key.startswith('loss') else f'{xs[0]:.1f}')
      else:
        fmt = '{:.3f} ± {:.3f}' if key.startswith('loss') else '{:.1f} ± {:.1f}'
        vals.append(fmt.format(np.mean(xs), np.std(xs, ddof=1)))
    lines.append(f'| {cell} | ' + ' | '.join(vals) + ' |')
  chance = [r[c] for r in per_seed.values() for c in r]
  lines.append(f'\nchance: exact {100 * np.mean([c["correspondence/chance_exact"] for c in chance]):.1f}, '
               f'within one patch {100 * np.mean([c["correspondence/chance_within1"] for c in chance]):.1f}')
  return '\n'.join(lines)


def stereo(workdirs: list[str], mae_workdirs: list[str], num: int) -> str:
  """CroCo on the real stereo pair (configs/croco/stereo.py): held-out windows (the right third of the left
  image), loss with the true right window vs another window's, and vs MAE without a reference on the same left
  windows and masks; mean ± std over the runs given."""
  from mim_jax.eval import two_view

  rows = {'true / shuffled reference': [], 'CroCo / MAE (no reference)': [], 'CroCo loss': [], 'MAE loss': []}
  for i, workdir in enumerate(workdirs):
    config, method, params = load(workdir)
    pairs = two_view.held_out_pairs(config.data, method.pairs, num, seed=1234)
    ref = two_view.reference_losses(method, params, pairs['view1'], pairs['view2'])
    rows['true / shuffled reference'].append(ref['ratio'])
    rows['CroCo loss'].append(ref['true'])
    if i < len(mae_workdirs):
      _, mae, mae_params = load(mae_workdirs[i])
      loss = two_view.single_view_loss(mae, mae_params, pairs['view1'])
      rows['MAE loss'].append(loss)
      rows['CroCo / MAE (no reference)'].append(ref['true'] / loss)
  lines = ['| held-out stereo windows | ' + ' | '.join(rows) + ' |', '| :--- |' + ' ---: |' * len(rows)]
  cells = [f'{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}' if len(v) > 1 else (f'{v[0]:.3f}' if v else '')
           for v in rows.values()]
  lines.append(f'| {len(workdirs)} CroCo run(s) | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--root', help='the benchmark root (workdirs/fashion_ablation)')
  parser.add_argument('--seeds', default='0,1')
  parser.add_argument('--pairs', type=int, default=2000, help='held-out pairs per check')
  parser.add_argument('--stereo', default='', help='comma-separated CroCo workdirs of configs/croco/stereo.py: '
                      'check those on held-out real stereo windows instead (with --stereo-mae, the MAE baselines)')
  parser.add_argument('--stereo-mae', default='', help='comma-separated workdirs of configs/croco/stereo.py:mae')
  parser.add_argument('--figure', nargs=2, action='append', default=[], metavar=('WORKDIR', 'PNG'),
                      help='also draw held-out pairs through a two-view run (repeatable)')
  args = parser.parse_args(argv)
  for workdir, png in args.figure:
    print(f'wrote {figure(workdir, png)}')
  if args.figure and not (args.stereo or args.root):
    return 0
  if args.stereo:
    print(stereo(args.stereo.split(','), [w for w in args.stereo_mae.split(',') if w], min(args.pairs, 1024)))
    return 0
  if not args.root:
    raise SystemExit('error: give --root (the two_views benchmark root) or --stereo WORKDIRS.')
  root = os.path.abspath(args.root)
  per_seed = {}
  for seed in (int(s) for s in args.seeds.split(',')):
    if not os.path.exists(os.path.join(root, f'croco_seed{seed}', 'summary.json')):
      raise SystemExit(f'error: {root}/croco_seed{seed} is not a finished run: run `python benchmarks/'
                       f'fashion_mnist.py two_views --root {args.root} --seeds {seed}` first.')
    per_seed[seed] = measure(root, seed, args.pairs)
  print(table(per_seed))
  with open(os.path.join(root, 'two_view_checks.json'), 'w') as f:
    json.dump({str(k): v for k, v in per_seed.items()}, f, indent=1, sort_keys=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
