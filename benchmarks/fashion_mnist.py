"""The Fashion-MNIST scoreboard: every method at one budget, and the MAE paper's ablations in miniature.

  python benchmarks/fashion_mnist.py methods   --root workdirs/fashion [--seeds 0] [--steps N] [--eval-train N]
  python benchmarks/fashion_mnist.py ablations --root workdirs/fashion_ablation --seeds 0,1,2 [--steps N]
  python benchmarks/fashion_mnist.py teachers  --root workdirs/fashion_ablation --seeds 0,1 \
      --teacher workdirs/fashion_mae
  python benchmarks/fashion_mnist.py two_views --root workdirs/fashion_ablation --seeds 0,1
  python benchmarks/fashion_mnist.py backbones --root workdirs/fashion_ablation --seeds 0,1
  python benchmarks/fashion_mnist.py tables    --root workdirs/fashion_ablation [--figure docs/img/x.png]

`methods` runs configs/ablation/fashion_mnist.py:VARIANT for every variant (MAE, SimMIM, HPM, MAE with block, GMML
and the four ColorMAE masks). `ablations` runs configs/mae/fashion_mnist.py with one change per cell, after the MAE
paper's Table 1 and Figure 5/6: mask ratio 0.25 / 0.5 / 0.75 / 0.9, raw-pixel vs normalized-pixel target, the loss on
all patches vs masked ones only, decoder depth 1 / 2 / 4 and width x0.5 / x2, random vs block vs grid masking at
0.75. `teachers` runs the teacher-target checks at DMAE's high-ratio regime (mask 0.875, 2 of 16 tokens visible):
MAE, DMAE from the pre-trained MAE workdir given by --teacher (the recipe's, trained once with `python -m
mim_jax.main --config=configs/mae/fashion_mnist.py --workdir=workdirs/fashion_mae`), and DMAE from a random-init
teacher of the same architecture; in the ablations' root, so MAE at 0.75 (`baseline`) is in the same table.
`two_views` runs CropMAE (global-to-local and two independent crops) and CroCo (homography pairs), each with 2 of 16
tokens of the reconstructed view visible, against the teachers grid's MAE at that visibility (their checks on held-
out pairs: benchmarks/two_view_checks.py). `backbones` runs MAE's recipe with iLLaMA's blocks as the encoder. Every
run is `python -m mim_jax.main ... --workdir=ROOT/CELL_seedS`: a finished run (its summary.json exists) is skipped
and an interrupted one resumes from its checkpoint, so the command can be re-run until the grid is complete.
`--steps` shortens every run (HPM's EMA decays re-derived for the length) and `--eval-train` caps the probes'
training features (the same for all cells; recorded in ROOT/grid.json, and a root holds one budget only). The random-
init and raw-pixel baselines do not depend on the method: only the MAE row of the method table computes them.
`--jobs` runs that many processes at once (JAX already uses every core of a process: more than one pays off only on
machines with more cores than one run uses).

`tables` prints the method table, or one markdown table per group of ablation cells (mean ± sample std over the
seeds, via `python -m mim_jax.report --seeds`), and draws accuracy against mask ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # mim_jax from this checkout, installed or not (the runs use it too: cwd=REPO)
METHOD_VARIANTS = ('mae', 'simmim', 'hpm', 'block', 'gmml', 'colormae_red', 'colormae_green', 'colormae_blue',
                   'colormae_purple')
# Cells of the MAE ablations: name -> config overrides on configs/mae/fashion_mnist.py ('baseline' is the recipe);
# the mask-sampling cells are rows of the method table's config (MAE with that generator, small-grid settings).
MAE = 'configs/mae/fashion_mnist.py'
MASK_CELLS = {'mask_block': 'configs/ablation/fashion_mnist.py:block',
              'mask_grid': 'configs/ablation/fashion_mnist.py:grid'}
ABLATIONS = {
    'baseline': {},
    'ratio0.25': {'mask.ratio': 0.25}, 'ratio0.5': {'mask.ratio': 0.5}, 'ratio0.9': {'mask.ratio': 0.9},
    'target_raw_pixels': {'norm_pix_loss': False},
    'loss_all_patches': {'loss_on': 'all'},
    'decoder_depth1': {'model.decoder.depth': 1}, 'decoder_depth4': {'model.decoder.depth': 4},
    'decoder_width_half': {'model.decoder.width': 32}, 'decoder_width_double': {'model.decoder.width': 128},
    'mask_block': {}, 'mask_grid': {},
}
TABLES = {  # title -> (cells, what the paper found)
    'mask ratio': (('ratio0.25', 'ratio0.5', 'baseline', 'ratio0.9'),
                   'MAE Fig. 5: linear probe rises steadily up to 75%; fine-tuning is flat from 40% to 80%'),
    'reconstruction target': (('baseline', 'target_raw_pixels'),
                              'MAE Table 1d: normalized pixels beat raw pixels (+0.5 fine-tune, +0.8 linear)'),
    'loss on': (('baseline', 'loss_all_patches'),
                'MAE Sec. 4.1: the loss on all patches instead of the masked ones costs about 0.5 points'),
    'decoder depth': (('decoder_depth1', 'baseline', 'decoder_depth4'),
                      'MAE Table 1a: a deeper decoder helps linear probing most (8 blocks best), fine-tuning little'),
    'decoder width': (('decoder_width_half', 'baseline', 'decoder_width_double'),
                      'MAE Table 1b: width matters little (512 of 128..1024 best)'),
    'mask sampling': (('baseline', 'mask_block', 'mask_grid'),
                      'MAE Table 1f / Fig. 6: random > block > grid at 75% (grid is much worse)'),
}
# The teacher- and latent-target cells (`teachers`): name -> (config, overrides); the cells of a teacher method (its
# config under configs/<method>/) also get <method>.teacher=--teacher (CAE's target is its own encoder).
DMAE = 'configs/dmae/fashion_mnist.py'
MASKALIGN = 'configs/maskalign/fashion_mnist.py'
SUPERVISED_TEACHER = 'workdirs/fashion_eval/mae'
# the larger self-supervised teacher (DINO's stand-in): python -m mim_jax.main
# --config=configs/mae/fashion_mnist.py:large --workdir=workdirs/fashion_mae_large (192 x 6 blocks)
LARGE_TEACHER = 'workdirs/fashion_mae_large'
CAE = 'configs/cae/fashion_mnist.py'
MRMAE = 'configs/mrmae/fashion_mnist.py'
TEACHER_METHODS = ('dmae', 'maskalign', 'mrmae')
TEACHER_CELLS = {
    'mae_ratio0.875': (MAE, {'mask.ratio': 0.875}),
    'dmae_ratio0.875': (DMAE, {}),
    'dmae_random_teacher': (DMAE, {'dmae.teacher_random': True}),
    # block 3 of the 6-block teacher (0-based; the paper pairs block 17 of 24 with the student's 8 of 12)
    'dmae_large_teacher': (DMAE, {'dmae.teacher': os.path.join(REPO, LARGE_TEACHER), 'dmae.teacher_layers': (3,)}),
    'maskalign': (MASKALIGN, {}),
    'maskalign_no_alignment': (MASKALIGN, {'maskalign.fusion': 'simple'}),
    'maskalign_random_keep': (MASKALIGN, {'maskalign.keep': 'random'}),
    # 4 student vs 6 teacher blocks: the 'sum' alignment (the authors' for unequal depths), the last 2 levels
    'maskalign_large_teacher': (MASKALIGN, {'maskalign.teacher': os.path.join(REPO, LARGE_TEACHER),
                                            'maskalign.fusion': 'sum'}),
    # the "semantic" teacher (the paper's is CLIP): the recipe MAE fine-tuned with all 60,000 training labels
    # (`python -m mim_jax.main --config=configs/eval/finetune_fashion_mnist.py --config.init=workdirs/fashion_mae
    # --workdir=workdirs/fashion_eval/mae`); its students have seen the labels through it
    'maskalign_supervised_teacher': (MASKALIGN, {'maskalign.teacher': os.path.join(REPO, SUPERVISED_TEACHER)}),
    'mrmae': (MRMAE, {}),
    'mrmae_focused': (MRMAE, {'mrmae.keep': 'attention'}),
    # the paper's two teachers: the self-supervised one (--teacher) and the fine-tuned one (students see labels)
    'mrmae_two_teachers': (MRMAE, {'mrmae.second_teacher': os.path.join(REPO, SUPERVISED_TEACHER)}),
    'cae': (CAE, {}),
    'cae_no_alignment': (CAE, {'cae.align_weight': 0.0}),
}
TABLES['distillation at a high mask ratio'] = (
    ('baseline', 'mae_ratio0.875', 'dmae_ratio0.875', 'dmae_random_teacher', 'dmae_large_teacher'),
    'DMAE (Bai et al. 2022): distilling a pre-trained teacher keeps accuracy at extreme ratios (ViT-B fine-tuned '
    '84.0 at 75%, 83.6 at 95%); the gain must come from what the teacher learned, not from the extra loss')
TABLES['alignment without reconstruction'] = (
    ('baseline', 'maskalign', 'maskalign_no_alignment', 'maskalign_random_keep', 'maskalign_supervised_teacher',
     'maskalign_large_teacher'),
    'MaskAlign (Xue et al. 2023): aligning visible-token features to a teacher with no decoder gives '
    '"state-of-the-art performance with much higher efficiency"; the spec\'s checks: k-NN at least MAE + 2, '
    'removing dynamic alignment costs at least 1 k-NN point; attention vs random keep is reported')
TABLES['mimic before reconstruct'] = (
    ('baseline', 'mrmae', 'mrmae_focused', 'mrmae_two_teachers'),
    'MR-MAE (Gao et al. 2023): mimicking a teacher on the visible tokens while reconstructing the masked ones '
    'converges faster (85.0 fine-tuned after 200 epochs vs MAE 83.6 after 1600)')
TABLES['latent regression and alignment'] = (
    ('baseline', 'cae', 'cae_no_alignment'),
    'CAE (Chen et al. 2023): aligning the regressed latents with the encoder\'s own latents of the masked patches '
    'keeps the representation learning in the encoder; without the alignment (regressor + decoder only) the '
    'encoder\'s features should be worse (the check: few-label k-NN at least 2 points lower)')
# The two-view cells (`two_views`): 2 of the 16 tokens of the reconstructed view visible, as MAE's mae_ratio0.875.
CROPMAE = 'configs/cropmae/fashion_mnist.py'
CROCO = 'configs/croco/fashion_mnist.py'
TWO_VIEW_CELLS = {
    'cropmae': (CROPMAE, {}),
    'cropmae_random_views': (CROPMAE, {'pairs.kind': 'random_views'}),  # CropMAE Table 1: two independent crops
    'croco': (CROCO, {}),
}
TABLES['two views'] = (
    ('baseline', 'mae_ratio0.875', 'cropmae', 'cropmae_random_views', 'croco'),
    'CropMAE (Eymael et al. 2024): reconstructing a local crop from 2 visible patches and the global view learns '
    'as well as MAE in far fewer epochs (the spec\'s check: k-NN at least MAE + 3 at the same visibility); '
    'CroCo (Weinzaepfel et al. 2022): completing a view from another view of the scene')
# The backbone cells (`backbones`): MAE's recipe with another encoder's blocks.
BACKBONE_CELLS = {
    'mae_illama_blocks': ('configs/mae/fashion_mnist.py:illama', {}),
}
TABLES['backbones'] = (
    ('baseline', 'mae_illama_blocks'),
    'iLLaMA (Wang et al. 2024) is a supervised backbone; as an MAE encoder (its blocks, full attention) it should '
    'pre-train like the ViT it replaces')
FEW_LABEL_TABLES = ('distillation at a high mask ratio', 'alignment without reconstruction',
                    'mimic before reconstruct', 'latent regression and alignment', 'two views')


def teacher_method(config: str) -> str | None:
  parts = config.split('/')
  return parts[1] if len(parts) > 2 and parts[0] == 'configs' and parts[1] in TEACHER_METHODS else None
NO_BASELINES = {'eval.random_init_baseline': False, 'eval.raw_pixels_max_features': 0}


def _flag(key: str, value) -> str:
  return f'--config.{key}={value}'


def runs_for(kind: str, seeds: list[int], teacher: str | None = None) -> list[tuple[str, str, dict]]:
  """(workdir name, config, overrides) of every run of the grid."""
  out = []
  for seed in seeds:
    if kind == 'teachers':
      for cell, (config, overrides) in TEACHER_CELLS.items():
        method = teacher_method(config)
        extra = {f'{method}.teacher': teacher} if method else {}
        out.append((f'{cell}_seed{seed}', config, {**extra, **overrides, **NO_BASELINES, 'seed': seed}))
    elif kind == 'backbones':
      out += [(f'{cell}_seed{seed}', config, {**overrides, **NO_BASELINES, 'seed': seed})
              for cell, (config, overrides) in BACKBONE_CELLS.items()]
    elif kind == 'two_views':
      out += [(f'{cell}_seed{seed}', config, {**overrides, **NO_BASELINES, 'seed': seed})
              for cell, (config, overrides) in TWO_VIEW_CELLS.items()]
    elif kind == 'methods':
      out += [(f'{v}_seed{seed}', f'configs/ablation/fashion_mnist.py:{v}',
               {**({} if v == 'mae' else NO_BASELINES), 'seed': seed}) for v in METHOD_VARIANTS]
    else:
      out += [(f'{cell}_seed{seed}', MASK_CELLS.get(cell, MAE), {**overrides, **NO_BASELINES, 'seed': seed})
              for cell, overrides in ABLATIONS.items()]
  return out


def check_budget(root: str, steps: int | None, eval_train: int | None) -> None:
  """One budget per root: grid.json records the steps and probe subset of its runs."""
  os.makedirs(root, exist_ok=True)
  path = os.path.join(root, 'grid.json')
  record = {'steps': steps, 'eval_train': eval_train}
  if os.path.exists(path):
    with open(path) as f:
      existing = json.load(f)
    if existing != record:
      raise SystemExit(f'{root} holds runs with {existing}, not {record}: use another --root for another budget.')
  else:
    with open(path, 'w') as f:
      json.dump(record, f)


def shorter_run(config: str, steps: int) -> dict:
  """Overrides that shorten a run to ``steps``, with what the recipe derives from its length re-derived (HPM's
  EMA decays are fractions of the run, mim_jax.recipes.hpm_ema_for_steps)."""
  from mim_jax.recipes import hpm_ema_for_steps

  out = {'total_steps': steps, 'warmup_steps': max(1, steps // 20)}
  if config.endswith(':hpm'):
    out.update({f'hpm.{k}': v for k, v in hpm_ema_for_steps(steps).items()})
  return out


def run_one(root: str, name: str, config: str, overrides: dict, steps: int | None, eval_train: int | None) -> str:
  workdir = os.path.join(root, name)
  if os.path.exists(os.path.join(workdir, 'summary.json')):
    return f'{name}: done before'
  if steps:
    overrides = {**overrides, **shorter_run(config, steps)}
  if eval_train:
    overrides = {**overrides, 'eval.max_train_examples': eval_train}
  cmd = [sys.executable, '-m', 'mim_jax.main', f'--config={config}', f'--workdir={workdir}',
         *(_flag(k, v) for k, v in overrides.items())]
  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'run.log'), 'a') as log:
    log.write(' '.join(cmd) + '\n')
    log.flush()
    code = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
  status = 'ok' if code == 0 else f'FAILED (exit {code}; see {workdir}/run.log)'
  return f'{name}: {status} in {(time.time() - t0) / 60:.1f} min'


def tables(root: str, figure: str | None) -> None:
  from mim_jax import report

  keys = 'linear_probe/top1,knn/top1,logreg/top1'
  names = sorted(d for d in os.listdir(root) if os.path.exists(os.path.join(root, d, 'summary.json')))
  methods = [n for n in names if n.rsplit('_seed', 1)[0] in METHOD_VARIANTS]
  if methods:  # a root of the method table
    methods.sort(key=lambda n: METHOD_VARIANTS.index(n.rsplit('_seed', 1)[0]))
    print('\n### methods\n')
    report.main([*(os.path.join(root, n) for n in methods), '--seeds', '--keys', keys])
  for title, (cells, paper) in TABLES.items():
    dirs = [os.path.join(root, n) for n in names if n.rsplit('_seed', 1)[0] in cells]
    dirs.sort(key=lambda d: cells.index(os.path.basename(d).rsplit('_seed', 1)[0]))
    if not dirs:
      continue
    print(f'\n### {title}\n\nPaper: {paper}.\n')
    # the few-label k-NN exists in runs made since 2026-12-06: shown where every cell's runs are that recent
    few = ',knn_10shot/top1' if title in FEW_LABEL_TABLES else ''
    report.main([*dirs, '--seeds', '--keys', keys + few])
  if figure:
    draw_ratio_figure(root, names, figure)


def draw_ratio_figure(root: str, names: list[str], out: str) -> None:
  """Accuracy against mask ratio, mean ± std over seeds (MAE's Figure 5 in miniature)."""
  import numpy as np
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  from mim_jax import report

  ratios = {'ratio0.25': 0.25, 'ratio0.5': 0.5, 'baseline': 0.75, 'ratio0.9': 0.9}
  fig = Figure(figsize=(6, 4))
  ax = fig.add_subplot()
  for key, label in (('linear_probe/top1', 'linear probe'), ('knn/top1', 'k-NN')):
    xs, means, stds = [], [], []
    for cell, ratio in ratios.items():
      values = [report.load_summary(os.path.join(root, n))[key] for n in names if n.rsplit('_seed', 1)[0] == cell]
      if values:
        xs.append(ratio)
        means.append(100 * np.mean(values))
        stds.append(100 * np.std(values, ddof=1) if len(values) > 1 else 0.0)
    ax.errorbar(xs, means, yerr=stds, marker='o', capsize=3, label=label)
  ax.set_xlabel('mask ratio')
  ax.set_ylabel('top-1 on the Fashion-MNIST test split (%)')
  ax.grid(alpha=0.3)
  ax.legend()
  ax.set_title('MAE on Fashion-MNIST: accuracy against mask ratio')
  FigureCanvasAgg(fig)
  fig.savefig(out, dpi=120, bbox_inches='tight')
  print(f'\nwrote {out}')


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('what', choices=('methods', 'ablations', 'teachers', 'two_views', 'backbones', 'tables'))
  parser.add_argument('--root', required=True, help='folder of the runs (one workdir per run)')
  parser.add_argument('--seeds', default='0', help='comma-separated seeds (default 0)')
  parser.add_argument('--steps', type=int, default=None, help='shorter runs: total_steps of every run')
  parser.add_argument('--eval-train', type=int, default=None, help="cap on the probes' training features")
  parser.add_argument('--jobs', type=int, default=1, help='runs at once')
  parser.add_argument('--only', default='', help='comma-separated run names (e.g. ratio0.25_seed0) to run')
  parser.add_argument('--teacher', default=None,
                      help='teachers: the pre-trained MAE workdir DMAE and MaskAlign learn from')
  parser.add_argument('--figure', default=None, help='tables: where to draw accuracy against mask ratio')
  args = parser.parse_args(argv)
  root = os.path.abspath(args.root)
  if args.what == 'tables':
    if not os.path.isdir(root):
      raise SystemExit(f'error: no runs under {root}: run the methods or ablations grid there first.')
    tables(root, args.figure)
    return 0
  teacher = None
  if args.what == 'teachers':
    teacher = os.path.abspath(args.teacher or '')
    if not args.teacher or not os.path.isdir(os.path.join(teacher, 'checkpoints')):
      raise SystemExit(f'error: --teacher must be a pre-training workdir with checkpoints (got {args.teacher!r}); '
                       'train it with python -m mim_jax.main --config=configs/mae/fashion_mnist.py '
                       '--workdir=workdirs/fashion_mae')
  check_budget(root, args.steps, args.eval_train)
  runs = runs_for(args.what, [int(s) for s in args.seeds.split(',') if s], teacher)
  if args.only:
    wanted = set(args.only.split(','))
    runs = [r for r in runs if r[0] in wanted]
  with ThreadPoolExecutor(max(1, args.jobs)) as pool:
    for line in pool.map(lambda r: run_one(root, *r, args.steps, args.eval_train), runs):
      print(line, flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
