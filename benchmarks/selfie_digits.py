"""Selfie's checks on the bundled digits (tests of the claims, with 3 seeds):

  python benchmarks/selfie_digits.py [--root workdirs/selfie_digits] [--seeds 0,1,2] [--report-only]

Per seed s it runs (skipping a run whose summary.json exists, so an interrupted sweep resumes):
  selfie_seed{s}            pre-training, configs/selfie/digits.py (distractors from the same image)
  batch_negatives_seed{s}   the negative control, configs/selfie/digits.py:batch_negatives (distractors from another
                            image)
  ft_selfie_seed{s}, ft_batch_negatives_seed{s}, ft_random_seed{s}
                            fine-tuning on 10% of the training labels (configs/selfie/finetune_digits.py, seed s)
                            from each pre-training run and from random init
and then measures patch selection on the 360 held-out test digits (4 targets per image, chance 25%), both with
the distractors from the same image and from another image, for each pre-trained model.

Checks (Selfie's claims as methods-round2.md §5.2 words them): 1. in-image selection accuracy >= 3x chance;
2. fine-tuning from Selfie beats random init by >= 3 points (mean over seeds) with a std not larger than random
init's; 3. the negative control's own task (another image's distractors) is easier and its fine-tune gain smaller.
Prints a markdown table (mean ± sample std over the seeds) and writes ROOT/selfie_checks.json.
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

PRETRAIN = {'selfie': 'configs/selfie/digits.py', 'batch_negatives': 'configs/selfie/digits.py:batch_negatives'}
FINETUNE = 'configs/selfie/finetune_digits.py'
CHANCE = 0.25


def run(args: list[str], workdir: str) -> None:
  if os.path.exists(os.path.join(workdir, 'summary.json')):
    print(f'{workdir}: done already', flush=True)
    return
  cmd = [sys.executable, '-m', 'mim_jax.main', *args, f'--workdir={workdir}']
  print('+', ' '.join(cmd), flush=True)
  with open(workdir + '.log', 'w') as log:
    subprocess.run(cmd, check=True, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                   env={**os.environ, 'PYTHONPATH': REPO})


def selection_accuracy(workdir: str, repeats: int = 5) -> dict[str, float]:
  """Held-out patch-selection accuracy of a pre-training run, with same-image and other-image distractors
  (``repeats`` target draws over the whole test split)."""
  import jax
  import ml_collections

  from mim_jax.data import pipeline
  from mim_jax.eval import pretrained

  pre = pretrained.load(ml_collections.ConfigDict({'init': workdir}))
  method = pre.method
  images = pipeline.eval_arrays(pre.config.data)['image']
  out = {}
  for negatives in ('image', 'batch'):
    method.cfg.negatives = negatives
    fn = jax.jit(method.selection_accuracy)
    accs = [float(fn(pre.params, images, jax.random.key(1000 + r))) for r in range(repeats)]
    out[negatives] = float(np.mean(accs))
  out['oracle'] = float(np.mean([oracle_accuracy(method, images, jax.random.key(1000 + r)) for r in range(repeats)]))
  return out


def oracle_accuracy(method, images: np.ndarray, rng) -> float:
  """The best in-image selection accuracy possible on these draws: a target whose pixels equal k other targets'
  (blank background patches) can be picked right with probability 1 / (k + 1) at most."""
  b, h, w, c = images.shape
  p = method.model.patch
  patches = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, p * p * c)
  _, targets = method.draw_targets(rng, b)
  t = np.take_along_axis(patches, np.asarray(targets)[:, :, None], axis=1)
  same = np.abs(t[:, :, None] - t[:, None]).max(-1) < 1e-6
  return float((1.0 / same.sum(-1)).mean())


def summary(workdir: str) -> dict:
  with open(os.path.join(workdir, 'summary.json')) as f:
    return json.load(f)


def mean_std(values: list[float]) -> tuple[float, float]:
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--root', default='workdirs/selfie_digits')
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--report-only', action='store_true', help='measure and report the finished runs only')
  args = parser.parse_args()
  seeds = [int(s) for s in args.seeds.split(',')]
  root = os.path.abspath(args.root)
  os.makedirs(root, exist_ok=True)
  if not args.report_only:
    for s in seeds:
      for arm, config in PRETRAIN.items():
        run([f'--config={config}', f'--config.seed={s}'], os.path.join(root, f'{arm}_seed{s}'))
      for arm in (*PRETRAIN, 'random'):
        init = ['--config.random_init=True'] if arm == 'random' else [
            f'--config.init={os.path.join(root, f"{arm}_seed{s}")}']
        run([f'--config={FINETUNE}', f'--config.seed={s}', *init], os.path.join(root, f'ft_{arm}_seed{s}'))

  rows: dict[str, dict[str, list[float]]] = {}
  for s in seeds:
    for arm in (*PRETRAIN, 'random'):
      row = rows.setdefault(arm, {})
      ft = os.path.join(root, f'ft_{arm}_seed{s}')
      if os.path.exists(os.path.join(ft, 'summary.json')):
        row.setdefault('finetune', []).append(100 * summary(ft)['finetune/top1'])
      if arm == 'random':
        continue
      pre = os.path.join(root, f'{arm}_seed{s}')
      if not os.path.exists(os.path.join(pre, 'summary.json')):
        continue
      sel = selection_accuracy(pre)
      row.setdefault('select_image', []).append(100 * sel['image'])
      row.setdefault('select_batch', []).append(100 * sel['batch'])
      row.setdefault('select_oracle', []).append(100 * sel['oracle'])
      values = summary(pre)
      row.setdefault('knn', []).append(100 * values['knn/top1'])
      row.setdefault('knn_10shot', []).append(100 * values['knn_10shot/top1'])
      rows.setdefault('random', {}).setdefault('knn', []).append(100 * values['random_init/knn/top1'])
      rows['random'].setdefault('knn_10shot', []).append(100 * values['random_init/knn_10shot/top1'])

  columns = (('select_image', 'selection, same-image distractors'), ('select_batch', 'selection, other-image '
             'distractors'), ('select_oracle', 'selection ceiling (duplicate patches)'),
             ('finetune', 'fine-tune, 10% labels'), ('knn', 'frozen k-NN'),
             ('knn_10shot', 'frozen k-NN, 10 labels per class'))
  stats = {arm: {k: mean_std(v) for k, v in row.items()} for arm, row in rows.items()}
  print(f'\nseeds {seeds}; mean ± std over seeds (%); chance of selection {100 * CHANCE:.0f}%\n')
  print('| arm | ' + ' | '.join(c[1] for c in columns) + ' |')
  print('| --- |' + ' --- |' * len(columns))
  for arm in (*PRETRAIN, 'random'):
    cells = []
    for key, _ in columns:
      m = stats.get(arm, {}).get(key)
      cells.append('-' if m is None else f'{m[0]:.1f} ± {m[1]:.1f}')
    print(f'| {arm} | ' + ' | '.join(cells) + ' |')

  checks = {}
  sel = stats.get('selfie', {})
  if 'select_image' in sel:
    checks['selection >= 3x chance'] = sel['select_image'][0] >= 300 * CHANCE
  if 'finetune' in sel and 'finetune' in stats.get('random', {}):
    gain = sel['finetune'][0] - stats['random']['finetune'][0]
    checks[f'fine-tune gain over random init >= 3 ({gain:+.1f})'] = gain >= 3.0
    checks['fine-tune std <= random init std'] = sel['finetune'][1] <= stats['random']['finetune'][1]
    ctrl = stats.get('batch_negatives', {})
    if 'finetune' in ctrl and 'select_batch' in ctrl:
      checks['control: its own task is easier'] = ctrl['select_batch'][0] > sel['select_image'][0]
      checks['control: smaller fine-tune gain'] = ctrl['finetune'][0] < sel['finetune'][0]
  print()
  for name, ok in checks.items():
    print(f'{"PASS" if ok else "FAIL"}  {name}')
  with open(os.path.join(root, 'selfie_checks.json'), 'w') as f:
    json.dump({'seeds': seeds, 'values': rows, 'mean_std': stats, 'checks': checks}, f, indent=1)


if __name__ == '__main__':
  main()
