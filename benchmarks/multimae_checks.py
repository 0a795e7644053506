"""MultiMAE's falsifiable checks on the procedural 2.5-D scenes (mim_jax.data.scenes25d), over seeds, and a figure:

  python benchmarks/multimae_checks.py checks [--root workdirs/multimae] [--seeds 0,1] [--steps 1200] [--report-only]
  python benchmarks/multimae_checks.py figure --workdir workdirs/multimae/multimae_seed0 [--out FILE.png]

Per seed s it pre-trains (a run whose summary.json exists is kept, so a sweep resumes):
  multimae_seed{s}  configs/multimae/scenes.py (RGB + depth + semantics in, all three out)
  rgb_mae_seed{s}   the same code and budget with RGB alone in and out (16 of 64 tokens visible: MAE's 75% mask)
  supervised_seed{s}  a reference, not a check: the same code and budget with all of RGB in and depth and semantics
                    out, i.e. trained on the answer of check 1 (how predictable depth is from RGB on these data)
then, on the 200 held-out scenes:
  1. cross-modal prediction (MultiMAE's claim): RGB fully visible, every depth and semantic token hidden; depth
     RMSE (metres, the prediction de-standardized with the scene's own truncated statistics, as the target was
     standardized) against the per-image-mean baseline (each scene's mean depth everywhere), and semantic pixel
     accuracy against the majority class of the training scenes;
  2. transfer (frozen RGB-only encoder, its patch tokens): a linear depth probe (ridge regression from a token to
     its patch's 64 depths, RMSE) and a linear semantic probe (logistic regression from a token to each of its 4
     semantic pixels, mIoU), MultiMAE against the RGB-only MAE.
Checks (methods-round2.md §6.3, as issue #25 words them): depth RMSE <= 0.6x the per-image-mean baseline; semantic
accuracy >= majority + 30 points; the linear probes: MultiMAE's mIoU >= the RGB MAE's + 2 and its RMSE <= 0.95x.
Prints markdown tables (mean ± sample std over seeds) and writes ROOT/multimae_checks.json.

The figure shows held-out scenes predicted from RGB alone (check 1): RGB, the true depth, the predicted depth (on
the true depth's colour scale), the per-image-mean baseline's error next to the prediction's, the true and the
predicted semantic maps.
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
CONFIG = 'configs/multimae/scenes.py'
ARMS = {
    'multimae': [f'--config={CONFIG}'],
    'rgb_mae': [f'--config={CONFIG}', "--config.model.encoder.modalities=('rgb',)",
                "--config.multimae.outputs=('rgb',)", '--config.multimae.num_visible=16'],
    'supervised': [f'--config={CONFIG}', "--config.model.encoder.modalities=('rgb',)",
                   "--config.multimae.outputs=('depth','semseg')", '--config.multimae.num_visible=64',
                   '--config.multimae.extra_norm_pix_loss=False'],
}
TRANSFER_ARMS = ('multimae', 'rgb_mae')


def pretrain(root: str, arm: str, seed: int, steps: int | None) -> str:
  workdir = os.path.join(root, f'{arm}_seed{seed}')
  if os.path.exists(os.path.join(workdir, 'summary.json')):
    print(f'{workdir}: done already', flush=True)
    return workdir
  cmd = [sys.executable, '-m', 'mim_jax.main', *ARMS[arm], f'--config.seed={seed}', f'--workdir={workdir}',
         *([f'--config.total_steps={steps}'] if steps else [])]
  print('+', ' '.join(cmd), flush=True)
  with open(workdir + '.log', 'w') as log:
    subprocess.run(cmd, check=True, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                   env={**os.environ, 'PYTHONPATH': REPO})
  return workdir


def _load(workdir: str):
  import ml_collections

  from mim_jax.data import pipeline
  from mim_jax.eval import pretrained

  pre = pretrained.load(ml_collections.ConfigDict({'init': workdir}))
  data = pre.config.data
  fields = pre.method.batch_fields(False)
  arrays = {split: pipeline.eval_arrays(data, split, fields=fields, record_transform=pre.method.record_transform)
            for split in (data.train_split, data.eval_split)}
  return pre, arrays[data.train_split], arrays[data.eval_split]


def _batches(arrays, size=50):
  n = len(arrays['image'])
  for i in range(0, n, size):
    yield {k: v[i:i + size] for k, v in arrays.items()}


def cross_modal(workdir: str) -> dict[str, float]:
  pre, train, test = _load(workdir)
  sq_err, sq_base, pixels, correct, total = 0.0, 0.0, 0, 0, 0
  majority = np.bincount(train['semseg'].reshape(-1)).argmax()
  for batch in _batches(test):
    out, pred = _depth_from_rgb(pre, batch)
    depth = np.asarray(batch['depth'], np.float64)
    sq_err += float(np.square(pred - depth).sum())
    sq_base += float(np.square(depth - depth.reshape(len(depth), -1).mean(1)[:, None, None, None]).sum())
    pixels += depth.size
    labels = np.asarray(batch['semseg'])
    correct += int((np.asarray(out['preds']['semseg']).argmax(-1) == labels).sum())
    total += labels.size
  majority_acc = float((test['semseg'] == majority).mean())
  return {'depth_rmse': float(np.sqrt(sq_err / pixels)), 'mean_depth_rmse': float(np.sqrt(sq_base / pixels)),
          'semseg_acc': correct / total, 'majority_acc': majority_acc}


def _tokens(pre, arrays) -> np.ndarray:
  import jax

  encode = jax.jit(lambda p, b: pre.method.encode(p, b)['patch_tokens'])
  return np.concatenate([np.asarray(encode(pre.params, b), np.float32) for b in _batches(arrays)])


def _patches(x: np.ndarray, p: int) -> np.ndarray:
  """[N, H, W] -> [N * tokens, p * p] (raster order of tokens)."""
  n, h, w = x.shape
  return x.reshape(n, h // p, p, w // p, p).transpose(0, 1, 3, 2, 4).reshape(-1, p * p)


def transfer(workdir: str) -> dict[str, float]:
  from sklearn.linear_model import LogisticRegression, Ridge

  pre, train, test = _load(workdir)
  e = pre.method.encoder
  ftr, fte = _tokens(pre, train), _tokens(pre, test)
  ftr, fte = ftr.reshape(-1, ftr.shape[-1]), fte.reshape(-1, fte.shape[-1])
  mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
  ftr, fte = (ftr - mu) / sd, (fte - mu) / sd
  dtr, dte = _patches(train['depth'][..., 0], e.patch_size), _patches(test['depth'][..., 0], e.patch_size)
  ridge = Ridge(alpha=1.0).fit(ftr, dtr)
  rmse = float(np.sqrt(np.mean(np.square(ridge.predict(fte) - dte))))
  q = e.patch_size // e.semseg_stride
  str_, ste = _patches(train['semseg'], q), _patches(test['semseg'], q)
  rng = np.random.default_rng(0)
  sub = rng.choice(len(ftr), min(len(ftr), 20000), replace=False)  # logistic regression on a token subset
  pred = np.stack([LogisticRegression(max_iter=300).fit(ftr[sub], str_[sub, j]).predict(fte)
                   for j in range(q * q)], axis=1)
  ious = []
  for c in range(e.semseg_classes):
    inter, union = np.sum((pred == c) & (ste == c)), np.sum((pred == c) | (ste == c))
    if union:
      ious.append(inter / union)
  return {'probe_depth_rmse': rmse, 'probe_semseg_miou': float(np.mean(ious))}


def _depth_from_rgb(pre, batch) -> tuple[dict, np.ndarray]:
  """Predictions from RGB alone, with the depth de-standardized by each scene's truncated statistics."""
  import jax

  from mim_jax.methods.multimae import depth_statistics

  out = jax.jit(pre.method.predict_from_rgb)(pre.params, batch)
  mean, std = (np.asarray(x, np.float64) for x in depth_statistics(np.asarray(batch['depth'], np.float32)))
  return out, np.asarray(out['preds']['depth'], np.float64) * std + mean


def checks(args) -> None:
  root = os.path.abspath(args.root)
  os.makedirs(root, exist_ok=True)
  seeds = [int(s) for s in args.seeds.split(',')]
  values: dict[str, list[float]] = {}
  for s in seeds:
    dirs = {arm: (os.path.join(root, f'{arm}_seed{s}') if args.report_only else pretrain(root, arm, s, args.steps))
            for arm in ARMS}
    if args.report_only and not os.path.exists(os.path.join(dirs['supervised'], 'summary.json')):
      print(f'seed {s}: no supervised reference run ({dirs.pop("supervised")})', flush=True)
    row = {f'{arm}/{k}': v for arm in ('multimae', 'supervised') if arm in dirs
           for k, v in cross_modal(dirs[arm]).items()}
    for arm in TRANSFER_ARMS:
      row.update({f'{arm}/{k}': v for k, v in transfer(dirs[arm]).items()})
    for k, v in row.items():
      values.setdefault(k, []).append(v)
    print(f'seed {s}: ' + ', '.join(f'{k} {v:.3f}' for k, v in row.items()), flush=True)
  stats = {k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0) for k, v in values.items()}
  print(f'\nseeds {seeds}; 200 held-out scenes (mean ± std)\n')
  print('| quantity | value | seeds |\n| --- | --- | --- |')
  for k, (m, sd) in stats.items():
    print(f'| {k} | {m:.3f} ± {sd:.3f} | {len(values[k])} |')
  g = lambda k: stats[k][0]  # noqa: E731
  ours_miou, mae_miou = g('multimae/probe_semseg_miou'), g('rgb_mae/probe_semseg_miou')
  ours_rmse, mae_rmse = g('multimae/probe_depth_rmse'), g('rgb_mae/probe_depth_rmse')
  results = {
      'depth from RGB: RMSE <= 0.6x per-image mean': g('multimae/depth_rmse') <= 0.6 * g('multimae/mean_depth_rmse'),
      'semantics from RGB: accuracy >= majority + 30': g('multimae/semseg_acc') >= g('multimae/majority_acc') + 0.30,
      'linear semantic probe: mIoU >= RGB MAE + 2': ours_miou >= mae_miou + 0.02,
      'linear depth probe: RMSE <= 0.95x RGB MAE': ours_rmse <= 0.95 * mae_rmse,
  }
  for name, ok in results.items():
    print(f'{"PASS" if ok else "FAIL"}  {name}')
  with open(os.path.join(root, 'multimae_checks.json'), 'w') as f:
    json.dump({'seeds': seeds, 'values': values, 'mean_std': stats, 'checks': results}, f, indent=1)


def figure(args) -> None:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  pre, _, test = _load(args.workdir)
  batch = {k: v[:args.scenes] for k, v in test.items()}
  out, pred = _depth_from_rgb(pre, batch)
  data = pre.config.data
  rgb = np.clip(batch['image'] * np.asarray(data.std) + np.asarray(data.mean), 0, 1)
  depth, pred = batch['depth'][..., 0], pred[..., 0]
  base = np.broadcast_to(depth.mean(axis=(1, 2), keepdims=True), depth.shape)
  labels, pred_labels = batch['semseg'], np.asarray(out['preds']['semseg']).argmax(-1)
  cols = ('RGB (the only input)', 'depth', 'depth from RGB', '|error| per-image mean', '|error| from RGB',
          'semantics', 'semantics from RGB')
  fig, axes = plt.subplots(args.scenes, len(cols), figsize=(1.7 * len(cols), 1.8 * args.scenes), squeeze=False)
  for i in range(args.scenes):
    lo, hi = depth[i].min(), depth[i].max()
    err_hi = np.abs(depth[i] - base[i]).max()
    panels = ((rgb[i], {}), (depth[i], dict(cmap='magma_r', vmin=lo, vmax=hi)),
              (pred[i], dict(cmap='magma_r', vmin=lo, vmax=hi)),
              (np.abs(depth[i] - base[i]), dict(cmap='gray', vmin=0, vmax=err_hi)),
              (np.abs(depth[i] - pred[i]), dict(cmap='gray', vmin=0, vmax=err_hi)),
              (labels[i], dict(cmap='tab10', vmin=0, vmax=9, interpolation='nearest')),
              (pred_labels[i], dict(cmap='tab10', vmin=0, vmax=9, interpolation='nearest')))
    for j, (img, kw) in enumerate(panels):
      ax = axes[i, j]
      ax.imshow(img, **kw)
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title(cols[j], fontsize=7)
    for j, guess in ((3, base[i]), (4, pred[i])):
      axes[i, j].set_xlabel(f'RMSE {np.sqrt(np.mean(np.square(guess - depth[i]))):.2f}', fontsize=7)
  fig.suptitle(f'MultiMAE, step {pre.step}: held-out scenes, every depth and semantic token hidden', fontsize=8)
  fig.tight_layout()
  fig.savefig(args.out, dpi=100)
  print(f'wrote {args.out}')


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = p.add_subparsers(dest='command', required=True)
  a = sub.add_parser('checks', help='pre-train both arms per seed and run the checks')
  a.add_argument('--root', default='workdirs/multimae')
  a.add_argument('--seeds', default='0,1')
  a.add_argument('--steps', type=int, default=None, help='total_steps (default: the config, 1200)')
  a.add_argument('--report-only', action='store_true', help='only read the finished runs')
  f = sub.add_parser('figure', help='depth and semantics predicted from RGB alone on held-out scenes')
  f.add_argument('--workdir', required=True)
  f.add_argument('--out', default='docs/img/multimae_rgb_to_depth.png')
  f.add_argument('--scenes', type=int, default=4)
  args = p.parse_args()
  {'checks': checks, 'figure': figure}[args.command](args)


if __name__ == '__main__':
  main()
