"""VideoMAE's falsifiable checks on moving digits (mim_jax.data.clips), and the cost of dual masking.

  python benchmarks/video_checks.py probe [--root workdirs/video] [--seeds 0,1] [--steps 1000]
  python benchmarks/video_checks.py cost [--batch 1] [--frames 16] [--size 224] [--repeats 3]
  python benchmarks/video_checks.py figure --workdir workdirs/video/v2_seed0 [--out docs/img/videomae_moving_digits.png]

``probe`` pre-trains, per seed (a run whose summary.json exists is kept, so a sweep resumes):
  v2_seed{s}     VideoMAE V2 (configs/videomae/moving_digits.py: tube 0.9, running-cell decoder mask 0.5)
  v1_seed{s}     VideoMAE (no decoder mask: the decoder reconstructs every masked tubelet)
  image_seed{s}  an image MAE on single frames: the same code with 1-frame "clips" (a static sprite somewhere on the
                 canvas), tubelet 1, MAE's random 75% mask
then freezes each encoder and fits probes (logistic regression, k-NN, on mean-pooled tokens of all 1437 training
clips, scored on the 360 test clips) for the digit class (appearance) and the motion direction (8 classes,
dynamics). The image MAE encodes each frame of a clip on its own and its features are averaged over the frames.
Checks: V2's direction probe >= the image MAE's + 15 points while its class probe stays within 3; V2 within 2
points of V1 on direction (dual masking costs no motion).

``cost`` times one jitted training step (forward + backward, float32, CPU unless a GPU is present) of VideoMAE at
the paper's proportions (ViT-B/16 encoder, 384-wide 4-block decoder, 16 x 224 x 224 clips, tube 0.9) with and
without the running-cell decoder mask: the median of ``--repeats`` steps after one warm-up. Check: V2's step at most
0.75x V1's.

Prints markdown tables and writes ROOT/video_checks.json (probe) or prints the timing (cost).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

CONFIG = 'configs/videomae/moving_digits.py'
ARMS = {
    'v2': [f'--config={CONFIG}'],
    'v1': [f'--config={CONFIG}:v1'],
    'image': [f'--config={CONFIG}:v1', '--config.data.num_frames=1', '--config.model.encoder.tubelet_size=1',
              '--config.mask.ratio=0.75'],
}


def train(root: str, arm: str, seed: int, steps: int) -> str:
  workdir = os.path.join(root, f'{arm}_seed{seed}')
  if os.path.exists(os.path.join(workdir, 'summary.json')):
    print(f'{workdir}: done already', flush=True)
    return workdir
  cmd = [sys.executable, '-m', 'mim_jax.main', *ARMS[arm], f'--config.seed={seed}',
         f'--config.total_steps={steps}', f'--workdir={workdir}']
  print('+', ' '.join(cmd), flush=True)
  with open(workdir + '.log', 'w') as log:
    subprocess.run(cmd, check=True, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                   env={**os.environ, 'PYTHONPATH': REPO})
  return workdir


def clip_features(workdir: str, video_cfg) -> dict[str, dict[str, np.ndarray]]:
  """Mean-pooled frozen features of the moving-digits clips (8 frames; the image arm frame by frame) with both
  labels, for the train and test splits."""
  import jax
  import ml_collections

  from mim_jax.data import pipeline
  from mim_jax.eval import pretrained
  from mim_jax.methods import Facts, build

  pre = pretrained.load(ml_collections.ConfigDict({'init': workdir}))
  clip_method = build(video_cfg, Facts(pipeline.dataset_info(video_cfg.data)))
  frames = pre.method.clip_shape[0]
  feature = jax.jit(lambda p, v: pre.method.feature(p, {'video': v}, 'pooled'))
  out = {}
  for split in (video_cfg.data.train_split, video_cfg.data.eval_split):
    arrays = pipeline.eval_arrays(video_cfg.data, split, fields=clip_method.batch_fields(False),
                                  record_transform=clip_method.record_transform)
    video = arrays['video']
    feats = []
    for i in range(0, len(video), 128):
      v = video[i:i + 128]
      if frames == 1:  # the image arm: every frame alone, then the mean over the frames
        b, t = v.shape[:2]
        f = np.asarray(feature(pre.params, v.reshape(b * t, 1, *v.shape[2:])))
        feats.append(f.reshape(b, t, -1).mean(1))
      else:
        feats.append(np.asarray(feature(pre.params, v)))
    out[split] = {'x': np.concatenate(feats), 'label': arrays['label'], 'direction': arrays['direction']}
  return out


def probe(args) -> None:
  from mim_jax import recipes
  from mim_jax.eval import knn as knn_lib
  from mim_jax.eval import linear_probe as lp

  root = os.path.abspath(args.root)
  os.makedirs(root, exist_ok=True)
  seeds = [int(s) for s in args.seeds.split(',')]
  video_cfg = recipes.videomae_moving_digits()
  rows: dict[str, dict[str, list[float]]] = {}
  for s in seeds:
    for arm in ARMS:
      workdir = train(root, arm, s, args.steps)
      feats = clip_features(workdir, video_cfg)
      tr, te = feats[video_cfg.data.train_split], feats[video_cfg.data.eval_split]
      row = rows.setdefault(arm, {})
      for target, classes in (('label', 10), ('direction', 8)):
        logreg = lp.logistic_regression_probe(tr['x'], tr[target], te['x'], te[target])['top1']
        knn = knn_lib.knn_classify(tr['x'], tr[target], te['x'], te[target], num_classes=classes, k=20,
                                   temperature=0.07)['top1']
        name = 'class' if target == 'label' else 'direction'
        row.setdefault(f'{name}/logreg', []).append(100 * logreg)
        row.setdefault(f'{name}/knn', []).append(100 * knn)
      print(f'{arm} seed {s}: ' + ', '.join(f'{k} {v[-1]:.1f}' for k, v in row.items()), flush=True)
  stats = {arm: {k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0) for k, v in r.items()}
           for arm, r in rows.items()}
  cols = ('direction/logreg', 'direction/knn', 'class/logreg', 'class/knn')
  print(f'\nseeds {seeds}, {args.steps} steps; mean ± std over seeds (%)\n')
  print('| arm | ' + ' | '.join(cols) + ' |')
  print('| --- |' + ' --- |' * len(cols))
  for arm in ARMS:
    print(f'| {arm} | ' + ' | '.join(f'{stats[arm][c][0]:.1f} ± {stats[arm][c][1]:.1f}' for c in cols) + ' |')
  v2, v1, img = stats['v2'], stats['v1'], stats['image']
  checks = {
      'direction: V2 >= image MAE + 15': v2['direction/logreg'][0] >= img['direction/logreg'][0] + 15,
      'class: V2 within 3 of image MAE': abs(v2['class/logreg'][0] - img['class/logreg'][0]) <= 3,
      'direction: V2 within 2 of V1': abs(v2['direction/logreg'][0] - v1['direction/logreg'][0]) <= 2,
  }
  for name, ok in checks.items():
    print(f'{"PASS" if ok else "FAIL"}  {name}')
  with open(os.path.join(root, 'video_checks.json'), 'w') as f:
    json.dump({'seeds': seeds, 'steps': args.steps, 'values': rows, 'mean_std': stats, 'checks': checks}, f,
              indent=1)


def cost(args) -> None:
  import jax
  import jax.numpy as jnp
  import ml_collections

  from mim_jax import recipes
  from mim_jax.methods import Facts, build

  print(f'{jax.devices()[0].device_kind}: batch {args.batch}, {args.frames} x {args.size} x {args.size} clips, '
        f'ViT-B/16 encoder, 384 x 4 decoder, tube 0.9', flush=True)
  times = {}
  for arm in ('none', 'running_cell'):
    c = recipes.videomae_k400()
    c.data = ml_collections.ConfigDict({'num_frames': args.frames})
    c.videomae.decoder_mask = arm
    method = build(c, Facts.for_images((args.size, args.size, 3)))
    clips = jnp.asarray(np.random.default_rng(0).standard_normal((args.batch, *method.clip_shape)), jnp.float32)
    batch = {'video': clips, 'label': jnp.zeros(args.batch, jnp.int32)}
    params, extras = jax.jit(method.init)(jax.random.key(0), batch)
    grad = jax.jit(jax.grad(lambda p, e, b, r, m=method: m.loss_fn(p, e, b, r, 0)[0]))
    jax.block_until_ready(grad(params, extras, batch, jax.random.key(1)))  # compile + warm-up
    seconds = []
    for r in range(args.repeats):
      start = time.perf_counter()
      jax.block_until_ready(grad(params, extras, batch, jax.random.key(2 + r)))
      seconds.append(time.perf_counter() - start)
    _, ids = method.draw_masks(jax.random.key(0), 1)
    times[arm] = float(np.median(seconds))
    print(f'decoder mask {arm:12s}: {ids.shape[1]} decoded tubelets, step {times[arm]:.3f} s (median of '
          f'{args.repeats}: {", ".join(f"{s:.3f}" for s in seconds)})', flush=True)
  ratio = times['running_cell'] / times['none']
  print(f'V2 / V1 step time: {ratio:.3f} ({"PASS" if ratio <= 0.75 else "FAIL"}: at most 0.75)')


def figure(args) -> None:
  """Clips of the test split with their masks and the reconstruction, frame by frame."""
  import jax
  import matplotlib
  import ml_collections

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  from mim_jax.data import pipeline
  from mim_jax.eval import pretrained

  pre = pretrained.load(ml_collections.ConfigDict({'init': args.workdir}))
  method, data = pre.method, pre.config.data
  arrays = pipeline.eval_arrays(data, data.eval_split, fields=method.batch_fields(False),
                                record_transform=method.record_transform)
  clips = arrays['video'][:args.clips]
  out = jax.jit(method.reconstruct_clip)(pre.params, clips, jax.random.key(args.seed))
  rows = (('clip', 'clip'), ('visible', 'encoder input (tube mask)'), ('decoded', 'decoder targets'),
          ('rec', 'reconstruction'))
  frames = clips.shape[1]
  fig, axes = plt.subplots(len(rows) * len(clips), frames, figsize=(frames * 0.9, len(rows) * len(clips) * 0.95),
                           squeeze=False)
  for i in range(len(clips)):
    for r, (key, title) in enumerate(rows):
      video = np.clip(np.asarray(out[key][i]), 0.0, 1.0)
      for t in range(frames):
        ax = axes[i * len(rows) + r, t]
        ax.imshow(video[t, ..., 0] if video.shape[-1] == 1 else video[t], cmap='gray', vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        if t == 0:
          ax.set_ylabel(title, fontsize=5, rotation=0, ha='right', va='center')
  fig.suptitle(f'{pre.config.method} ({pre.config.videomae.decoder_mask} decoder mask), step {pre.step}: held-out '
               f'clips, frames left to right; loss {float(out["loss"]):.3f}', fontsize=6)
  fig.subplots_adjust(left=0.17, right=0.99, bottom=0.01, top=0.95, wspace=0.05, hspace=0.05)
  fig.savefig(args.out, dpi=110)
  print(f'wrote {args.out}')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest='command', required=True)
  p = sub.add_parser('probe')
  p.add_argument('--root', default='workdirs/video')
  p.add_argument('--seeds', default='0,1')
  p.add_argument('--steps', type=int, default=1000)
  c = sub.add_parser('cost')
  c.add_argument('--batch', type=int, default=1)
  c.add_argument('--frames', type=int, default=16)
  c.add_argument('--size', type=int, default=224)
  c.add_argument('--repeats', type=int, default=3)
  f = sub.add_parser('figure')
  f.add_argument('--workdir', required=True)
  f.add_argument('--out', default='docs/img/videomae_moving_digits.png')
  f.add_argument('--clips', type=int, default=2)
  f.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  {'probe': probe, 'cost': cost, 'figure': figure}[args.command](args)


if __name__ == '__main__':
  main()
