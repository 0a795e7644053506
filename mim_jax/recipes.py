"""Pre-training recipes as functions; the files in ``configs/`` are thin wrappers around them, so an installed
mim_jax (editable or not) builds every recipe without the checkout's ``configs/`` directory.

Two kinds:

* **base recipes**: the digits quickstart (:func:`mae_digits`) and MAE on ImageNet-1k (:func:`mae_in1k`);
* **method overrides** (:func:`simmim`, :func:`hpm`, :func:`mae_mask`): a method changes only what defines it
  (method name, mask, target, its own block), so the same override turns the quickstart or the MAE ImageNet
  recipe into that method with everything else (data, model size, optimizer, budget, evaluation) unchanged.
  Paper recipes that also change the optimizer or the data set those in their own function.

Config arguments (``FILE.py:ARG``) are comma-separated parts: ``tiny`` (the digits recipes: a few seconds, for
tests), ``cpu`` (ImageNet recipes: a few steps on the bundled digits at 32x32, the same code path), ``epochs=N``.
"""

from __future__ import annotations

import ml_collections

from mim_jax.config import base_config
from mim_jax.data.pipeline import default_data_config
from mim_jax.data.pairs import default_pair_config
from mim_jax.methods.cae import cae_defaults
from mim_jax.methods.cropmae import cropmae_defaults
from mim_jax.methods.dmae import dmae_defaults
from mim_jax.methods.hpm import hpm_defaults
from mim_jax.methods.maskalign import maskalign_defaults
from mim_jax.models.vit import ILLAMA_OPTIONS
from mim_jax.methods.mrmae import mrmae_defaults
from mim_jax.methods.selfie import selfie_defaults
from mim_jax.methods.point_mae import point_mae_defaults
from mim_jax.methods.multimae import multimae_defaults
from mim_jax.methods.radial_mae import radial_mae_defaults
from mim_jax.methods.videomae import videomae_defaults
from mim_jax.data.clips import default_clip_config
from mim_jax.methods.spark import spark_defaults


def split_arg(arg: str | None) -> list[str]:
  return [part for part in (arg or '').split(',') if part]


def check_parts(parts: list[str], allowed: set[str], file: str) -> None:
  unknown = [p for p in parts if p not in allowed]
  if unknown:
    raise ValueError(f'unknown argument(s) {unknown} for {file}; use a comma-separated subset of {sorted(allowed)}.')


# ----------------------------------------------------------------------------------------------------------
# Base recipes


def mae_digits(arg: str | None = None) -> ml_collections.ConfigDict:
  """The quickstart: MAE on the bundled digits (scikit-learn's 1,797 real 8x8 digits upsampled to 16x16).

  A small ViT (patch 4 -> a 4x4 token grid, width 128, depth 4) with MAE's recipe scaled to the data (mask 0.75,
  norm-pix MSE, AdamW 0.9/0.95, wd 0.05, 50 warmup steps + cosine, 2,000 steps at batch 128: about 2 minutes of
  training on a 2-core CPU), then the frozen-encoder evaluation. ``arg``: None, or 'tiny' (a few seconds)."""
  c = base_config()
  c.data = default_data_config('mim_digits')
  c.batch_size = 128
  c.total_steps = 2000
  c.warmup_steps = 50
  c.optimizer.base_lr = 1.5e-3
  c.model.encoder = dict(patch_size=4, width=128, depth=4, num_heads=4, mlp_ratio=4.0)
  c.model.decoder = dict(width=64, depth=2, num_heads=4, mlp_ratio=4.0)
  c.mask.ratio = 0.75
  c.checkpoint.every_steps = 500
  c.log_every = 50
  c.eval.max_train_examples = 2000
  # LARS moves each weight by ~lr x 0.001 of its norm per step: on 1.4k images (5 steps per epoch) the paper's
  # base_lr 0.1 leaves the head untrained; 10 at batch 256 is close to the paper's peak lr of 6.4 (docs/evaluation.md).
  c.eval.linear_probe = dict(epochs=90, batch_size=256, base_lr=10.0, warmup_epochs=10)
  if arg == 'tiny':  # a few seconds: used by the end-to-end tests
    c.total_steps = 6
    c.warmup_steps = 2
    c.batch_size = 16
    c.model.encoder = dict(patch_size=4, width=32, depth=1, num_heads=2, mlp_ratio=2.0)
    c.model.decoder = dict(width=16, depth=1, num_heads=2, mlp_ratio=2.0)
    c.checkpoint.every_steps = 2
    c.log_every = 2
    c.eval.linear_probe.epochs = 2
    c.eval.max_train_examples = 256
    c.eval.max_eval_examples = 128
  elif arg:
    raise ValueError(f"unknown argument {arg!r} for configs/mae/digits.py (use no argument or ':tiny').")
  return c


def mae_fashion_mnist(arg: str | None = None) -> ml_collections.ConfigDict:
  """MAE on Fashion-MNIST (60,000 28x28 grayscale training images, built offline: mim_jax/data/fashion_mnist.py).

  A ViT for 28x28 inputs with MAE's recipe scaled to the data, sized so that pre-training plus the quickstart's
  evaluation fit in 30 minutes on a 2-core CPU (README, "Fashion-MNIST"). Patch 7 (a 4x4 token grid, 16
  tokens) rather than patch 4 (7x7): on this box the 7x7 grid trains at ~560 img/s against ~1,500, and the
  coarser grid probed better in less time (3,000 steps in 10 min: 81.7 linear probe; patch 4, 1,200 steps in
  17 min: 80.1; pooled feature). The frozen feature is the mean of the patch tokens: it probed 0.6-1.8 points
  above the CLS token here (linear probe, k-NN, logistic regression). ``arg``: None, or
  'tiny' (a few seconds, for tests), or 'large' (a 192-wide, 6-block encoder, otherwise the same recipe: the
  larger teacher for DMAE / MaskAlign / MR-MAE), or 'illama' (the same encoder with iLLaMA's blocks: RMSNorm,
  SwiGLU, RoPE-1D, learned positions, CLS last; full attention, since a causal mask over MAE's shuffled visible
  tokens is undefined)."""
  c = base_config()
  c.data = default_data_config('fashion_mnist')
  c.batch_size = 256
  c.total_steps = 6000  # ~26 epochs
  c.warmup_steps = 300
  c.optimizer.base_lr = 1.5e-3
  c.model.encoder = dict(patch_size=7, width=128, depth=4, num_heads=4, mlp_ratio=4.0)
  c.model.decoder = dict(width=64, depth=2, num_heads=4, mlp_ratio=4.0)
  c.mask.ratio = 0.75
  c.eval.feature = 'pooled'
  c.checkpoint.every_steps = 1000
  c.log_every = 100
  c.eval.max_train_examples = 60000
  c.eval.linear_probe = dict(epochs=90, batch_size=1024, base_lr=1.0, warmup_epochs=10)  # tuned on train[55000:]
  if arg == 'tiny':
    c.total_steps, c.warmup_steps, c.batch_size = 6, 2, 16
    c.model.encoder = dict(patch_size=4, width=32, depth=1, num_heads=2, mlp_ratio=2.0)
    c.model.decoder = dict(width=16, depth=1, num_heads=2, mlp_ratio=2.0)
    c.checkpoint.every_steps, c.log_every = 2, 2
    c.eval.linear_probe.epochs = 2
    c.eval.max_train_examples, c.eval.max_eval_examples = 256, 128
  elif arg == 'large':  # the larger self-supervised teacher of the teacher-target methods (DINO's stand-in)
    c.model.encoder = dict(patch_size=7, width=192, depth=6, num_heads=6, mlp_ratio=4.0)
  elif arg == 'illama':
    c.model.encoder = dict(c.model.encoder, **{**ILLAMA_OPTIONS, 'causal_mask': 'none'})
  elif arg:
    raise ValueError(f"unknown argument {arg!r} for configs/mae/fashion_mnist.py (use no argument, ':tiny', "
                     "':large' or ':illama').")
  return c


def mae_in1k(variant: str, epochs: float, arg: str | None) -> ml_collections.ConfigDict:
  """ImageNet-1k pre-training: mask 0.75, norm-pix, decoder 512x8x16, AdamW(0.9, 0.95) wd 0.05,
  blr 1.5e-4 at batch 4096 (lr 2.4e-3), 40 warmup epochs + cosine, RandomResizedCrop(224, 0.2-1) + flip.

  ``arg``: 'cpu' shrinks everything to a few steps on the bundled digits at 32x32 (same code path);
  'epochs=N' changes the schedule length (800 / 1600 in the paper)."""
  c = base_config()
  c.model.encoder = dict(variant=variant, mlp_ratio=4.0)
  c.epochs = epochs
  c.data = default_data_config('imagenet2012')  # set data.data_dir to where its ArrayRecord lives
  for part in split_arg(arg):
    if part == 'cpu':
      c.data = default_data_config('mim_digits')
      c.data.image_size = 32
      c.model.encoder = dict(patch_size=8, width=64, depth=2, num_heads=4, mlp_ratio=4.0)
      c.model.decoder = dict(width=32, depth=1, num_heads=4, mlp_ratio=4.0)
      c.batch_size = 16
      c.total_steps = 4
      c.warmup_steps = 1
      c.checkpoint.every_steps = 2
      c.log_every = 1
      c.eval.linear_probe.epochs = 2
      c.eval.max_train_examples = 256
      c.eval.max_eval_examples = 128
    elif part.startswith('epochs='):
      c.epochs = float(part.split('=', 1)[1])
    else:
      raise ValueError(f"unknown config argument {part!r}; use 'cpu' and/or 'epochs=N'.")
  return c


# ----------------------------------------------------------------------------------------------------------
# Method overrides

# MAE with another mask generator. 'small_grid' settings are for token grids of a few tokens a side (the
# digits quickstart's 4x4), where the ViT-B defaults degenerate: a 16-token minimum block is the whole
# grid, and GMML's 30%-of-a-side groups are single tokens.
MASK_VARIANTS: dict[str, dict] = {
    'random': dict(name='random'),
    'block': dict(name='block'),
    'colormae_red': dict(name='colormae', color='red'),
    'colormae_blue': dict(name='colormae', color='blue'),
    'colormae_green': dict(name='colormae', color='green'),
    'colormae_purple': dict(name='colormae', color='purple'),
    'gmml': dict(name='gmml'),
    'grid': dict(name='grid'),  # the MAE paper's regular lattice (its sampling ablation)
}
SMALL_GRID_SETTINGS: dict[str, dict] = {
    'block': dict(min_block=2),
    'gmml': dict(max_side=0.5),
}

# HPM's EMA teacher: decay 0.999 -> 0.9999, i.e. time constants of 1e3 -> 1e4 steps, in a run of 800 epochs
# x 312 steps (ImageNet-1k at batch 4096) = 250k steps: 0.4% -> 4% of training.
HPM_EMA_TIME_FRACTIONS = (1e3 / 250_200, 1e4 / 250_200)


def mae_mask(c: ml_collections.ConfigDict, variant: str, small_grid: bool = False) -> ml_collections.ConfigDict:
  """MAE with the named mask generator at the config's ratio (``MASK_VARIANTS``)."""
  if variant not in MASK_VARIANTS:
    raise ValueError(f'unknown mask variant {variant!r}; choose one of {sorted(MASK_VARIANTS)}.')
  c.method = 'mae'
  settings = dict(MASK_VARIANTS[variant], ratio=c.mask.ratio)
  if small_grid:
    settings.update(SMALL_GRID_SETTINGS.get(variant, {}))
  c.mask = settings
  return c


def simmim(c: ml_collections.ConfigDict, *, mask_patch_size: int | None = 32, scale: int | None = None,
           rounding: str = 'simmim') -> ml_collections.ConfigDict:
  """SimMIM: mask-token encoder, linear head, L1 on raw (dataset-normalized) pixels, coarse masks at ratio 0.6.

  ``mask_patch_size`` (pixels; the token size comes from the encoder) or ``scale`` (tokens per cell side)."""
  c.method = 'simmim'
  c.norm_pix_loss = False
  mask = dict(name='coarse', ratio=0.6, rounding=rounding)
  if scale is not None:
    mask['scale'] = scale
  else:
    mask['mask_patch_size'] = mask_patch_size
  c.mask = mask
  return c


def hpm(c: ml_collections.ConfigDict, **overrides) -> ml_collections.ConfigDict:
  """MAE + HPM (loss predictor, relative objective, easy-to-hard masks from an EMA teacher) with random masks
  at the config's ratio. ``overrides`` go into ``config.hpm`` (see :func:`mim_jax.methods.hpm.hpm_defaults`)."""
  c.mask = dict(name='random', ratio=c.mask.ratio)
  return _method(c, 'hpm', hpm_defaults(), overrides)


def _method(c: ml_collections.ConfigDict, name: str, defaults: ml_collections.ConfigDict,
            fields: dict) -> ml_collections.ConfigDict:
  """``config.method = name`` with its block ``config.<name>``: every default field (so that any of them can be
  set with ``--config.<name>.FIELD``), ``fields`` over them."""
  c.method = name
  defaults.update(fields)
  c[name] = defaults
  return c


def hpm_ema_for_steps(total_steps: int) -> dict:
  """EMA decays whose time constants are the same fractions of a ``total_steps`` run as the paper's are of
  its 250k steps (0.999 -> 0.9999 there; 0.875 -> 0.9875 for the quickstart's 2000 steps)."""
  lo, hi = (max(1.0, f * total_steps) for f in HPM_EMA_TIME_FRACTIONS)
  return dict(ema_decay_start=round(1.0 - 1.0 / lo, 6), ema_decay_end=round(1.0 - 1.0 / hi, 6))


# ----------------------------------------------------------------------------------------------------------
# Method recipes (configs/<method>/*.py)


def simmim_digits(arg: str | None = None) -> ml_collections.ConfigDict:
  """SimMIM on the quickstart: 2x2-token cells (SimMIM's 32 px cells over 16 px tokens) on the 4x4 grid, ratio 0.6
  with MAE's rounding (10 of 16 tokens masked), since whole-cell rounding would leave only four patterns."""
  return _small_data_variant(mae_digits, 'simmim', arg)


def hpm_digits(arg: str | None = None) -> ml_collections.ConfigDict:
  """HPM on the quickstart, with the EMA decays rescaled to the run's length (:func:`hpm_ema_for_steps`)."""
  return _small_data_variant(mae_digits, 'hpm', arg)


def simmim_in1k(arg: str | None = None) -> ml_collections.ConfigDict:
  """SimMIM ViT-B/16, 800 epochs (Xie et al. 2022): see configs/simmim/vit_base_in1k.py for the settings."""
  parts = split_arg(arg)
  check_parts([p for p in parts if not p.startswith('epochs=')], {'cpu'}, 'configs/simmim/vit_base_in1k.py')
  cpu = 'cpu' in parts
  c = mae_in1k('base/16', 800.0, arg)  # the shared ImageNet skeleton, and the 'cpu' / 'epochs=N' handling
  simmim(c, mask_patch_size=16 if cpu else 32)  # cpu: 2x2-token cells on the 4x4 grid, as 32/16 on ViT-B
  c.model.encoder.drop_path = 0.1
  c.warmup_epochs = 10.0
  # SimMIM scales the learning rate by batch / 512 (lr = 1e-4 x 2048 / 512 = 4e-4); mim_jax scales by batch / 256,
  # so base_lr = 1e-4 x 256 / 512 = 5e-5 gives the paper's lr at every batch size (5e-5 x 2048 / 256 = 4e-4).
  c.optimizer.base_lr = 5e-5
  c.optimizer.b2 = 0.999
  c.optimizer.grad_clip_norm = 5.0
  c.optimizer.schedule = 'multistep'
  c.optimizer.milestones = (700 / 800,)  # x0.1 at epoch 700 of 800 (a fraction, so 'epochs=N' keeps the shape)
  c.optimizer.gamma = 0.1
  if not cpu:
    c.batch_size = 2048
    c.data.crop_scale = (0.67, 1.0)
    c.data.crop_ratio = (3 / 4, 4 / 3)
    c.data.hflip = True
  return c


def hpm_in1k(arg: str | None = None) -> ml_collections.ConfigDict:
  """HPM ViT-B/16, 800 epochs (Wang et al. 2023): see configs/hpm/vit_base_in1k.py for the settings."""
  parts = split_arg(arg)
  check_parts([p for p in parts if not p.startswith('epochs=')], {'cpu'}, 'configs/hpm/vit_base_in1k.py')
  c = mae_in1k('base/16', 800.0, arg)
  c.norm_pix_loss = False
  # The EMA ramp spans the first 100 epochs whatever the run length (the authors' schedule).
  hpm(c, ema_ramp_fraction=min(1.0, 100.0 / c.epochs))
  return c


def dmae(c: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """MAE + DMAE's feature distillation from a frozen teacher (``fields`` go into ``config.dmae``; see
  :func:`mim_jax.methods.dmae.dmae_defaults`)."""
  return _method(c, 'dmae', dmae_defaults(), fields)


def dmae_in1k(arg: str | None = None) -> ml_collections.ConfigDict:
  """DMAE, ViT-B/16 student from an MAE ViT-L/16 teacher, 100 epochs: see configs/dmae/vit_base_in1k.py."""
  parts = split_arg(arg)
  check_parts([p for p in parts if not p.startswith('epochs=')], {'cpu'}, 'configs/dmae/vit_base_in1k.py')
  c = mae_in1k('base/16', 100.0, arg)
  # The teacher is the run's to give (--config.dmae.teacher=WORKDIR); the method refuses to start without one.
  dmae(c, teacher='', teacher_layers=(17,), student_layers=(8,), distance='l1', normalize=True, weight=1.0)
  if 'cpu' in parts:  # plumbing only: a random-init teacher, 1.5x the tiny student's width
    c.dmae.teacher_model = dict(width=96, depth=3, num_heads=4)
    c.dmae.teacher_layers, c.dmae.student_layers = (1,), (0,)
  return c


def dmae_fashion_mnist(arg: str | None = None) -> ml_collections.ConfigDict:
  """DMAE on Fashion-MNIST: the MAE recipe's student at DMAE's high-ratio regime, distilled from a pre-trained
  MAE workdir: see configs/dmae/fashion_mnist.py."""
  parts = split_arg(arg)
  check_parts(parts, {'tiny'}, 'configs/dmae/fashion_mnist.py')
  c = mae_fashion_mnist('tiny' if 'tiny' in parts else None)
  c.mask.ratio = 0.875  # 2 of the 16 tokens visible (0.9 would leave int(16 * 0.1) = 1)
  dmae(c, teacher='', teacher_layers=(2,), student_layers=(2,), distance='l1', normalize=True, weight=1.0)
  if 'tiny' in parts:  # plumbing only: a random-init teacher
    c.dmae.teacher_model = dict(width=48, depth=2, num_heads=2)
    c.dmae.teacher_layers, c.dmae.student_layers = (1,), (0,)
  return c


def mrmae(c: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """MAE + MR-MAE's mimic loss on the visible tokens (``fields`` go into ``config.mrmae``; see
  :func:`mim_jax.methods.mrmae.mrmae_defaults`)."""
  return _method(c, 'mrmae', mrmae_defaults(), fields)


def mrmae_in1k(arg: str | None = None) -> ml_collections.ConfigDict:
  """MR-MAE, ViT-B/16 student mimicking a frozen ViT-B/16 teacher, 400 epochs: see configs/mrmae/vit_base_in1k.py."""
  parts = split_arg(arg)
  check_parts([p for p in parts if not p.startswith('epochs=')], {'cpu'}, 'configs/mrmae/vit_base_in1k.py')
  c = mae_in1k('base/16', 400.0, arg)
  mrmae(c, teacher='', target_norm='layernorm', weight=1.0)  # the teacher is the run's to give
  if 'cpu' in parts:  # plumbing only: a random-init teacher
    c.mrmae.teacher_model = dict(width=96, depth=2, num_heads=4)
  return c


def mrmae_fashion_mnist(arg: str | None = None) -> ml_collections.ConfigDict:
  """MR-MAE on Fashion-MNIST: the MAE recipe's student mimicking a pre-trained MAE workdir on its visible tokens."""
  parts = split_arg(arg)
  check_parts(parts, {'tiny'}, 'configs/mrmae/fashion_mnist.py')
  c = mae_fashion_mnist('tiny' if 'tiny' in parts else None)
  mrmae(c, teacher='', target_norm='layernorm', weight=1.0)
  if 'tiny' in parts:  # plumbing only: a random-init teacher
    c.mrmae.teacher_model = dict(width=48, depth=2, num_heads=2)
  return c


def maskalign(c: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """MaskAlign: no decoder, the visible-token student's every level aligned to a frozen teacher's features
  (``fields`` go into ``config.maskalign``; see :func:`mim_jax.methods.maskalign.maskalign_defaults`)."""
  c.mask = dict(name='random', ratio=c.mask.ratio)
  return _method(c, 'maskalign', maskalign_defaults(), fields)


def maskalign_in1k(arg: str | None = None) -> ml_collections.ConfigDict:
  """MaskAlign, ViT-B/16 student aligned to a frozen ViT-B/16 teacher, 200 epochs: see
  configs/maskalign/vit_base_in1k.py."""
  parts = split_arg(arg)
  check_parts([p for p in parts if not p.startswith('epochs=')], {'cpu'}, 'configs/maskalign/vit_base_in1k.py')
  c = mae_in1k('base/16', 200.0, arg)
  c.mask.ratio = 0.7
  c.warmup_epochs = 20.0
  c.optimizer.min_lr = 1e-5
  c.model.encoder.drop_path = 0.1
  maskalign(c, teacher='', fusion='linear', target_norm='whiten', loss='smoothl1', loss_weights='top5',
            keep='attention')  # the teacher is the run's to give
  if 'cpu' in parts:  # plumbing only: a random-init teacher as deep as the student (linear fusion)
    c.maskalign.teacher_model = dict(width=96, depth=2, num_heads=4)
    c.maskalign.loss_weights = 'top1'
  else:
    c.batch_size = 1024
  return c


def maskalign_fashion_mnist(arg: str | None = None) -> ml_collections.ConfigDict:
  """MaskAlign on Fashion-MNIST: the MAE recipe's student (same size, data, optimizer and budget) aligned to a
  pre-trained MAE workdir of the same depth: see configs/maskalign/fashion_mnist.py."""
  parts = split_arg(arg)
  check_parts(parts, {'tiny'}, 'configs/maskalign/fashion_mnist.py')
  c = mae_fashion_mnist('tiny' if 'tiny' in parts else None)
  c.mask.ratio = 0.7  # the paper's; int(16 * 0.3) = 4 visible tokens, as MAE's 0.75 on this grid
  # top5 of 12 levels (the paper) is about the last 40%: the last 2 of this 4-block teacher.
  maskalign(c, teacher='', fusion='linear', target_norm='whiten', loss='smoothl1', loss_weights='top2',
            keep='attention')
  if 'tiny' in parts:  # plumbing only: a random-init teacher as deep as the 1-block student
    c.maskalign.teacher_model = dict(width=48, depth=1, num_heads=2)
    c.maskalign.loss_weights = 'top1'
  return c


def cae(c: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """CAE: latent regressor + alignment + decoder on the predicted latents (``fields`` go into ``config.cae``; see
  :func:`mim_jax.methods.cae.cae_defaults`), with the encoder's LayerScale 0.1 and CAE's sin-cos layout."""
  c.model.encoder.layer_scale = 0.1
  c.model.encoder.pos_embed = 'sincos_rows_first'
  return _method(c, 'cae', cae_defaults(), fields)


def cae_in1k(arg: str | None = None) -> ml_collections.ConfigDict:
  """CAE ViT-B/16, 800 epochs, pixel target: see configs/cae/vit_base_in1k.py."""
  parts = split_arg(arg)
  check_parts([p for p in parts if not p.startswith('epochs=')], {'cpu'}, 'configs/cae/vit_base_in1k.py')
  cpu = 'cpu' in parts
  c = mae_in1k('base/16', 800.0, arg)
  c.mask = dict(name='block', ratio=0.5, **(SMALL_GRID_SETTINGS['block'] if cpu else {}))  # 98 of 196 at 224
  c.model.encoder.drop_path = 0.1
  c.warmup_epochs = 20.0
  # Their --lr 1.5e-3 is the lr of batch 2048 (not rescaled): base_lr 1.5e-3 x 256 / 2048 per 256 images.
  c.optimizer.base_lr = 1.5e-3 * 256 / 2048
  c.optimizer.b2 = 0.999  # timm's AdamW default (their --opt_betas is unset)
  c.optimizer.min_lr = 1e-5
  c.optimizer.grad_clip_norm = 3.0
  if cpu:  # the regressor and decoder at the tiny encoder's width
    c.model.decoder = dict(width=64, depth=1, num_heads=4, mlp_ratio=4.0)
    cae(c, regressor_depth=1)
  else:
    c.batch_size = 2048
    c.model.decoder = dict(width=768, depth=4, num_heads=12, mlp_ratio=4.0)
    cae(c, regressor_depth=4, layer_scale=0.1, align_weight=2.0, target='pixels')
  return c


def cae_fashion_mnist(arg: str | None = None) -> ml_collections.ConfigDict:
  """CAE on Fashion-MNIST: the MAE recipe's encoder, data, optimizer and budget with CAE's masks (blocks, 50%),
  regressor and decoder at the encoder's width: see configs/cae/fashion_mnist.py."""
  parts = split_arg(arg)
  check_parts(parts, {'tiny'}, 'configs/cae/fashion_mnist.py')
  tiny = 'tiny' in parts
  c = mae_fashion_mnist('tiny' if tiny else None)
  c.mask = dict(name='block', ratio=0.5, **SMALL_GRID_SETTINGS['block'])  # 8 of the 16 tokens, in blocks
  width = c.model.encoder.width
  c.model.decoder = dict(width=width, depth=1 if tiny else 2, num_heads=c.model.encoder.num_heads, mlp_ratio=4.0)
  cae(c, regressor_depth=1 if tiny else 2, layer_scale=0.1, align_weight=2.0, target='pixels')
  return c


def pairs(c: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """``config.pairs``: how a two-view method makes its views (:func:`mim_jax.data.pairs.default_pair_config`)."""
  p = default_pair_config()
  p.update(fields)
  c.pairs = p
  return c


def cropmae(c: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """CropMAE: siamese encoder, global reference view, local view masked to a few visible patches (``fields`` go
  into ``config.cropmae``; :func:`mim_jax.methods.cropmae.cropmae_defaults`)."""
  return _method(c, 'cropmae', cropmae_defaults(), fields)


def cropmae_in1k(arg: str | None = None) -> ml_collections.ConfigDict:
  """CropMAE ViT-S/16 on ImageNet-1k, 400 epochs (their scripts/train_cropmae_in.sh): see
  configs/cropmae/vit_small_in1k.py."""
  parts = split_arg(arg)
  check_parts([p for p in parts if not p.startswith('epochs=')], {'cpu'}, 'configs/cropmae/vit_small_in1k.py')
  cpu = 'cpu' in parts
  c = mae_in1k('small/16', 400.0, arg)
  c.optimizer.base_lr = 1e-4
  c.warmup_epochs = 0.05 * c.epochs  # their warmup_epochs_prop
  c.optimizer.min_lr = 0.0
  # 0.985 keeps int(196 * 0.015) = 2 patches at 224 px; the :cpu grid (16 tokens) keeps 2 by count.
  c.mask = dict(name='random', num_visible=2) if cpu else dict(name='random', ratio=0.985)
  if not cpu:
    c.batch_size = 2048  # 128 per GPU x 16
    c.model.decoder = dict(width=256, depth=4, num_heads=8, mlp_ratio=4.0)
  pairs(c, kind='global_to_local', global_scale=(0.10, 1.0), local_scale=(0.3, 0.6), hflip=not cpu)
  return cropmae(c, ff_width=2048, dropout=0.1)


def cropmae_fashion_mnist(arg: str | None = None) -> ml_collections.ConfigDict:
  """CropMAE on Fashion-MNIST: the MAE recipe's encoder, optimizer and budget; the global view is the recipe's own
  crop, the local view a 0.3-0.6 crop of it; 2 of the 16 tokens visible: see configs/cropmae/fashion_mnist.py."""
  parts = split_arg(arg)
  check_parts(parts, {'tiny'}, 'configs/cropmae/fashion_mnist.py')
  c = mae_fashion_mnist('tiny' if 'tiny' in parts else None)
  c.mask = dict(name='random', num_visible=2)
  pairs(c, kind='global_to_local', global_scale=tuple(c.data.crop_scale), local_scale=(0.3, 0.6), hflip=True)
  # The feed-forward at 4x the decoder width, as every other block of this recipe (the authors' 2048 is torch's
  # default for 256-1024-wide decoders; 32x a 64-wide one here).
  return cropmae(c, ff_width=4 * c.model.decoder.width, dropout=0.1)


def croco(c: ml_collections.ConfigDict, v2: bool = False) -> ml_collections.ConfigDict:
  """CroCo: encoder without CLS (probes read the mean patch token), view 1 masked by CroCo's count, homography
  pairs (:meth:`mim_jax.methods.croco.CroCo.pair_defaults`); ``v2``: rotary 2-D positions (RoPE100) instead of the
  sin-cos tables."""
  c.method = 'croco'
  c.model.encoder.class_token = 'none'
  if v2:
    c.model.encoder.pos_embed = 'none'
    c.model.encoder.rope = '2d'
    c.model.encoder.rope_base = 100.0
  c.mask = dict(name='random', ratio=0.9, count='masked')
  c.eval.feature = 'pooled'
  return pairs(c, kind='homography', global_scale=(0.3, 1.0), jitter=0.15)


def croco_in1k(arg: str | None = None) -> ml_collections.ConfigDict:
  """CroCo v1 ViT-B/16 (pretrain.py's defaults, README's 4 GPUs), on homography pairs of ImageNet photos (the
  Habitat renders are a download): see configs/croco/vit_base_in1k.py."""
  parts = split_arg(arg)
  check_parts([p for p in parts if not p.startswith('epochs=')], {'cpu', 'v2'}, 'configs/croco/vit_base_in1k.py')
  cpu, v2 = 'cpu' in parts, 'v2' in parts
  c = mae_in1k('large/16' if v2 else 'base/16', 250.0 if v2 else 800.0,
               ','.join(p for p in parts if p != 'v2') or None)  # --epochs sets the cosine ...
  croco(c, v2=v2)
  c.optimizer.base_lr = 1.5e-4
  c.warmup_epochs = 12.0 if v2 else 40.0
  if not cpu:
    c.batch_size = 512 if v2 else 256  # 64 per GPU x 8 (v2's largest model) or x 4
    c.model.decoder = (dict(width=768, depth=12, num_heads=12, mlp_ratio=4.0) if v2 else
                       dict(width=512, depth=8, num_heads=16, mlp_ratio=4.0))
    # ... and --max_epoch (400 of 800; v2: 125 of 250) stops at its half
    c.stop_after_steps = int(c.epochs // 2) * (1_281_167 // c.batch_size)
  return c


def croco_fashion_mnist(arg: str | None = None) -> ml_collections.ConfigDict:
  """CroCo on Fashion-MNIST: the MAE recipe's encoder (no CLS), optimizer and budget; view 1 with 2 of 16 tokens
  visible (CroCo's 0.9), view 2 another homography of the same image: see configs/croco/fashion_mnist.py."""
  parts = split_arg(arg)
  check_parts(parts, {'tiny', 'v2'}, 'configs/croco/fashion_mnist.py')
  c = mae_fashion_mnist('tiny' if 'tiny' in parts else None)
  croco(c, v2='v2' in parts)
  c.pairs.global_scale = tuple(c.data.crop_scale)
  return c


def croco_stereo(arg: str | None = None) -> ml_collections.ConfigDict:
  """CroCo on real stereo: windows of the bundled rectified pair (``mim_stereo``, 64 px, patch 8: 8 x 8 tokens),
  view 1 the left window masked at 0.9 (7 of 64 visible), view 2 the right window shifted by the median
  disparity: see configs/croco/stereo.py. ``arg``: None, 'tiny' (seconds), 'mae' (the one-view baseline: MAE at
  the same visibility on the left image's crops), 'v2' (RoPE)."""
  parts = split_arg(arg)
  check_parts(parts, {'tiny', 'mae', 'v2'}, 'configs/croco/stereo.py')
  c = base_config()
  c.data = default_data_config('mim_stereo')
  c.batch_size = 64
  c.total_steps = 600  # ~11 minutes on 2 CPU cores (64 tokens a view)
  c.warmup_steps = 50
  c.optimizer.base_lr = 1.5e-3
  c.model.encoder = dict(patch_size=8, width=128, depth=4, num_heads=4, mlp_ratio=4.0)
  c.model.decoder = dict(width=64, depth=2, num_heads=4, mlp_ratio=4.0)
  c.checkpoint.every_steps = 200
  c.log_every = 100
  if 'tiny' in parts:
    c.total_steps, c.warmup_steps, c.batch_size = 4, 1, 8
    c.model.encoder = dict(patch_size=16, width=32, depth=1, num_heads=2, mlp_ratio=2.0)
    c.model.decoder = dict(width=16, depth=1, num_heads=2, mlp_ratio=2.0)
    c.checkpoint.every_steps, c.log_every = 2, 1
  if 'mae' in parts:  # MAE on crops of the whole left image (test columns included): no reference view, the
    # same visible count; its held-out loss is, if anything, flattered
    c.mask = dict(name='random', ratio=0.9, count='masked')
    c.eval.feature = 'pooled'
    c.data.crop_scale = (0.025, 0.1)  # windows of about 100-190 px of the 500 x 741 image, as the pairs'
    c.data.hflip = False
    return c
  croco(c, v2='v2' in parts)
  c.pairs.kind = 'stereo'
  return c


ABLATION_MASKS = ('block', 'colormae_red', 'colormae_blue', 'colormae_green', 'colormae_purple', 'gmml')
ABLATION_VARIANTS = ('mae', 'simmim', 'hpm', *ABLATION_MASKS)


def _one_variant(parts: list[str], file: str, example: str, choices: tuple[str, ...] = ABLATION_VARIANTS) -> str:
  variants = [p for p in parts if p in choices]
  if len(variants) != 1:
    raise ValueError(f'{file} needs exactly one variant out of {choices} (e.g. {example}), got '
                     f'{",".join(parts) or None!r}.')
  return variants[0]


def _small_data_variant(base, variant: str, base_arg: str | None) -> ml_collections.ConfigDict:
  """A method (or MAE with a mask generator) on a small-data base recipe, everything else the base's."""
  c = base(base_arg)
  if variant == 'simmim':  # 2x2-token cells, MAE's rounding (a few tokens a side leave few whole-cell patterns)
    return simmim(c, scale=2, rounding='mae')
  if variant == 'hpm':
    return hpm(c, **hpm_ema_for_steps(c.total_steps))
  if variant in MASK_VARIANTS:
    mae_mask(c, variant, small_grid=True)
  return c


def ablation_digits(arg: str | None = None) -> ml_collections.ConfigDict:
  """One arm of the digits ablation: the quickstart with one method or mask generator (``VARIANT[,tiny]``)."""
  parts = split_arg(arg)
  check_parts(parts, {*ABLATION_VARIANTS, 'tiny'}, 'configs/ablation/digits.py')
  variant = _one_variant(parts, 'configs/ablation/digits.py', ':simmim or :simmim,tiny')
  return _small_data_variant(mae_digits, variant, 'tiny' if 'tiny' in parts else None)


def ablation_fashion_mnist(arg: str | None = None) -> ml_collections.ConfigDict:
  """One row of the Fashion-MNIST method table: the MAE recipe with one method or mask generator
  (``VARIANT[,tiny]``; also ``grid``, the MAE paper's lattice), everything else unchanged."""
  parts = split_arg(arg)
  variants = (*ABLATION_VARIANTS, 'grid')
  check_parts(parts, {*variants, 'tiny'}, 'configs/ablation/fashion_mnist.py')
  variant = _one_variant(parts, 'configs/ablation/fashion_mnist.py', ':hpm or :hpm,tiny', variants)
  return _small_data_variant(mae_fashion_mnist, variant, 'tiny' if 'tiny' in parts else None)


def ablation_in1k(arg: str | None = None) -> ml_collections.ConfigDict:
  """One arm of the ViT-B/16 ImageNet-1k masking ablation (``VARIANT[,cpu][,epochs=N]``)."""
  parts = split_arg(arg)
  rest = [p for p in parts if p not in ABLATION_VARIANTS]
  check_parts([p for p in rest if not p.startswith('epochs=')], {'cpu'}, 'configs/ablation/vit_base_in1k.py')
  variant = _one_variant(parts, 'configs/ablation/vit_base_in1k.py', ':block or :block,cpu')
  recipe_arg = ','.join(rest) or None
  if variant == 'simmim':
    return simmim_in1k(recipe_arg)
  if variant == 'hpm':
    return hpm_in1k(recipe_arg)
  c = mae_in1k('base/16', 800.0, recipe_arg)
  if variant in ABLATION_MASKS:
    mae_mask(c, variant, small_grid='cpu' in rest)
  return c


# ----------------------------------------------------------------------------------------------------------
# SparK: masked modeling for ConvNets


def spark(c: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """SparK: sparse ConvNet encoder, densify, light UNet decoder (``fields`` go into ``config.spark``;
  :func:`mim_jax.methods.spark.spark_defaults`)."""
  return _method(c, 'spark', spark_defaults(), fields)


# A few-step SparK's ResNet (':cpu', ':tiny'): one block per stage, the small stem (stride 8).
SPARK_TINY_RESNET = dict(name='resnet', depths=(1, 1, 1, 1), widths=(8, 16, 16, 32), stem='small', stem_width=8)

SPARK_IN1K_ENCODERS = {
    # name -> (encoder, drop path, LAMB b2): pretrain/models/__init__.py's kwargs, utils/arg_util.py's `ada`
    'resnet50': (dict(name='resnet', variant='50'), 0.05, 0.95),
    'convnext_small': (dict(name='convnext', variant='small'), 0.2, 0.999),
}


def spark_in1k(arg: str | None = None) -> ml_collections.ConfigDict:
  """SparK on ImageNet-1k (pretrain/utils/arg_util.py and main.py of keyu-tian/SparK): 224 px, mask 0.6 of the 7x7
  cells, LAMB (0.9, 0.95 for ResNets / 0.999 for ConvNeXts), base lr 2e-4 at batch 4096 (lr 3.2e-3), weight decay
  0.04 -> 0.2 (cosine), grad clip 5, 40 warmup epochs of 1600, min lr 0.001 of the peak, decoder width 768,
  RandomResizedCrop(224, 0.67-1) + flip. ``arg`` (comma-separated): 'resnet50' (default) | 'convnext_small';
  'cpu' (a few steps on the bundled digits at 32 px, a small-stem ResNet); 'epochs=N'."""
  parts = split_arg(arg)
  kinds = [p for p in parts if p in SPARK_IN1K_ENCODERS] or ['resnet50']
  encoder, drop_path, b2 = SPARK_IN1K_ENCODERS[kinds[0]]
  c = base_config()
  c.data = default_data_config('imagenet2012')  # set data.data_dir to where its ArrayRecord lives
  c.data.crop_scale = (0.67, 1.0)
  c.model.encoder = dict(encoder, drop_path=drop_path)
  c.model.decoder = None
  c.mask = dict(name='random', ratio=0.6)
  c.batch_size = 4096
  c.epochs, c.warmup_epochs = 1600.0, 40.0
  c.optimizer = ml_collections.ConfigDict(dict(name='lamb', base_lr=2e-4, b1=0.9, b2=b2, eps=1e-6,
                                               weight_decay=0.04, weight_decay_end=0.2,
                                               min_lr=0.001 * 2e-4 * 4096 / 256, grad_clip_norm=5.0))
  c.eval.feature = 'pooled'
  spark(c, decoder_width=768, densify_norm='auto')
  for part in parts:
    if part in SPARK_IN1K_ENCODERS:
      continue
    if part == 'cpu':
      c.data = default_data_config('mim_digits')
      c.data.image_size = 32
      c.model.encoder = dict(SPARK_TINY_RESNET)
      c.spark.decoder_width = 32
      c.batch_size, c.total_steps, c.warmup_steps = 16, 4, 1
      c.checkpoint.every_steps, c.log_every = 2, 1
      c.eval.linear_probe.epochs = 2
      c.eval.max_train_examples, c.eval.max_eval_examples = 256, 128
    elif part.startswith('epochs='):
      c.epochs = float(part.split('=', 1)[1])
    else:
      raise ValueError(f"unknown argument {part!r} for configs/spark/in1k.py; use 'resnet50' or "
                       "'convnext_small', 'cpu', 'epochs=N'.")
  return c


# The ConvNet anchor's ResNet (mim_jax.eval.configs.FASHION_MNIST_CONVNETS['resnet']): R18 blocks at a quarter of the
# width, the 3x3 stride-1 stem (total stride 8: a 4x4 grid of 8-px cells at 32 px).
SPARK_FASHION_RESNET = dict(name='resnet', block='basic', depths=(2, 2, 2, 2), widths=(16, 32, 64, 128),
                            stem='small', stem_width=16)


def spark_fashion_mnist(arg: str | None = None) -> ml_collections.ConfigDict:
  """SparK on Fashion-MNIST resized to 32 px (the small-stem ResNet's stride is 8: 4x4 cells, 6 of 16 visible at
  mask 0.6). The paper's optimizer with its per-step lr: LAMB's trust ratio makes a step's relative size the lr
  whatever the batch, so the lr is SparK's 3.2e-3, not rescaled to batch 256 (chosen up front, not tuned). Decoder
  width 64 (three UNet blocks, 64 -> 8 channels: a decoder lighter than the encoder, as SparK's is). ``arg``
  (comma-separated): 'dense' (the naive baseline: zeroed pixels, dense encoder and BatchNorm); 'tiny' (a few steps,
  for tests)."""
  parts = split_arg(arg)
  check_parts(parts, {'tiny', 'dense'}, 'configs/spark/fashion_mnist.py')
  c = base_config()
  c.data = default_data_config('fashion_mnist')
  c.data.image_size = 32
  c.model.encoder = dict(SPARK_FASHION_RESNET)
  c.model.decoder = None
  c.mask = dict(name='random', ratio=0.6)
  c.batch_size = 256
  c.total_steps, c.warmup_steps = 2400, 120  # ~10 epochs
  c.optimizer = ml_collections.ConfigDict(dict(name='lamb', base_lr=3.2e-3, b1=0.9, b2=0.95, eps=1e-6,
                                               weight_decay=0.04, weight_decay_end=0.2, min_lr=3.2e-6,
                                               grad_clip_norm=5.0))
  c.eval.feature = 'pooled'
  c.checkpoint.every_steps = 400
  c.log_every = 100
  c.eval.max_train_examples = 60000
  c.eval.linear_probe = dict(epochs=90, batch_size=1024, base_lr=1.0, warmup_epochs=10)  # MAE's Fashion probe
  spark(c, decoder_width=64, densify_norm='auto', sparse='dense' not in parts)
  if 'tiny' in parts:
    c.model.encoder = dict(SPARK_TINY_RESNET)
    c.spark.decoder_width = 32
    c.total_steps, c.warmup_steps, c.batch_size = 6, 2, 16
    c.checkpoint.every_steps, c.log_every = 2, 2
    c.eval.linear_probe.epochs = 2
    c.eval.max_train_examples, c.eval.max_eval_examples = 256, 128
  return c


# ----------------------------------------------------------------------------------------------------------
# Selfie: masked patch selection for ConvNets


def selfie(c: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """Selfie: the first ResNet stages per patch, attention pooling, selection among the image's own targets
  (``fields`` go into ``config.selfie``; :func:`mim_jax.methods.selfie.selfie_defaults`)."""
  c.mask = dict(name='random')  # Selfie's targets are uniform; their count is selfie.num_targets
  return _method(c, 'selfie', selfie_defaults(), fields)


# A ResNet-18 layout at a quarter of the width with one block per stage and the small stem: a 16 px digit gives
# maps of 16, 8, 4, 2 px; the patch network (its first 3 stages) takes 4 px patches to 4, 2, 1 px.
SELFIE_DIGITS_RESNET = dict(name='resnet', block='basic', depths=(1, 1, 1, 1), widths=(16, 32, 64, 128),
                            stem='small', stem_width=16)
SELFIE_TINY_RESNET = dict(name='resnet', block='basic', depths=(1, 1, 1, 1), widths=(8, 16, 16, 32),
                          stem='small', stem_width=8)


def selfie_digits(arg: str | None = None) -> ml_collections.ConfigDict:
  """Selfie on the bundled digits at 16 px: a 4x4 grid of 4 px patches, 4 targets per image (chance 1/4), the
  patch network = the first 3 stages of :data:`SELFIE_DIGITS_RESNET`, 3 pooling blocks (64 wide, 2 heads). The
  quickstart's AdamW and batch, 1000 steps. ``arg`` (comma-separated): 'batch_negatives' (the negative control:
  distractors from another image); 'tiny' (a few steps, for tests)."""
  parts = split_arg(arg)
  check_parts(parts, {'tiny', 'batch_negatives'}, 'configs/selfie/digits.py')
  c = mae_digits('tiny' if 'tiny' in parts else None)
  c.model.encoder = dict(SELFIE_DIGITS_RESNET)
  c.model.decoder = None
  c.total_steps, c.warmup_steps = 1000, 50
  c.eval.feature = 'pooled'
  selfie(c, patch_size=4, num_targets=4, patch_stages=3, pool_depth=3,
         negatives='batch' if 'batch_negatives' in parts else 'image')
  if 'tiny' in parts:
    c.model.encoder = dict(SELFIE_TINY_RESNET)
    c.selfie.pool_depth = 1
    c.total_steps, c.warmup_steps = 6, 2
  return c


def selfie_in1k(arg: str | None = None) -> ml_collections.ConfigDict:
  """Selfie on ImageNet-1k at 224 px: a 7x7 grid of 32 px patches, the patch network = ResNet-50's first 3 stages
  (1024-wide patch vectors), 3 pooling blocks (32 heads). The paper's optimizer, target count and schedule are not
  in its abstract and there is no official code: here MAE's AdamW recipe (base lr 1.5e-4 at 256, wd 0.05, 0.9 /
  0.95), batch 2048, 12 of 49 targets (the digits recipe's quarter), 100 epochs with 5 of warmup. ``arg``
  (comma-separated): 'cpu' (a few steps on the bundled digits at 32 px); 'epochs=N'."""
  parts = split_arg(arg)
  c = base_config()
  c.data = default_data_config('imagenet2012')  # set data.data_dir to where its ArrayRecord lives
  c.model.encoder = dict(name='resnet', variant='50')
  c.model.decoder = None
  c.batch_size = 2048
  c.epochs, c.warmup_epochs = 100.0, 5.0
  c.eval.feature = 'pooled'
  selfie(c, patch_size=32, num_targets=12, patch_stages=3, pool_depth=3, pool_heads=32)
  for part in parts:
    if part == 'cpu':
      c.data = default_data_config('mim_digits')
      c.data.image_size = 32
      c.model.encoder = dict(SELFIE_TINY_RESNET)
      c.selfie.update(patch_size=8, num_targets=4, pool_depth=1, pool_heads=0)
      c.batch_size, c.total_steps, c.warmup_steps = 16, 4, 1
      c.checkpoint.every_steps, c.log_every = 2, 1
      c.eval.linear_probe.epochs = 2
      c.eval.max_train_examples, c.eval.max_eval_examples = 256, 128
    elif part.startswith('epochs='):
      c.epochs = float(part.split('=', 1)[1])
    else:
      raise ValueError(f"unknown argument {part!r} for configs/selfie/in1k.py; use 'cpu' or 'epochs=N'.")
  return c


# ----------------------------------------------------------------------------------------------------------
# VideoMAE (V1) and VideoMAE V2 (dual masking): clips


def videomae(c: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """VideoMAE: tube mask 0.9 for the encoder, V2's running cell for the decoder unless ``decoder_mask='none'``
  (``fields`` go into ``config.videomae``; :func:`mim_jax.methods.videomae.videomae_defaults`)."""
  c.mask = dict(name='tube', ratio=0.9)
  return _method(c, 'videomae', videomae_defaults(), fields)


def video_encoder(**fields) -> dict:
  """A ViT on clips as VideoMAE builds it: tubelets of 2 frames, the 1-D sinusoid table, no CLS, q / v biases."""
  return dict(class_token='none', pos_embed='sincos_1d', qkv_bias='qv', tubelet_size=2, **fields)


def videomae_moving_digits(arg: str | None = None) -> ml_collections.ConfigDict:
  """VideoMAE V2 on moving digits: the bundled digits as 16 px sprites moving 1-2 px per frame over a 32 px canvas
  for 8 frames (mim_jax.data.clips), tubelets 2 x 4 x 4 (4 x 8 x 8 = 256 tokens), tube mask 0.9 (7 of 64 positions
  visible per frame), running-cell decoder mask 0.5; the quickstart's ViT (128 wide, 4 blocks) and decoder (64, 2
  blocks) and AdamW at VideoMAE's betas. ``arg`` (comma-separated): 'v1' (no decoder mask: VideoMAE);
  'direction' (probes read the motion direction instead of the class); 'tiny' (a few steps, for tests)."""
  parts = split_arg(arg)
  check_parts(parts, {'v1', 'direction', 'tiny'}, 'configs/videomae/moving_digits.py')
  c = mae_digits('tiny' if 'tiny' in parts else None)
  c.data.image_size = 32
  c.data.num_frames = 8
  c.data.clips = default_clip_config()
  c.data.clips.label = 'direction' if 'direction' in parts else 'class'
  c.model.encoder = video_encoder(**c.model.encoder)
  c.batch_size = 64
  c.total_steps, c.warmup_steps = 1000, 50
  c.optimizer.b2 = 0.95
  c.eval.feature = 'pooled'
  videomae(c, decoder_mask='none' if 'v1' in parts else 'running_cell')
  if 'tiny' in parts:
    c.batch_size = 8
    c.total_steps, c.warmup_steps = 6, 2
  return c


def videomae_k400(arg: str | None = None) -> ml_collections.ConfigDict:
  """VideoMAE V2 ViT-B on Kinetics-400 (OpenGVLab/VideoMAEv2 scripts/pretrain/vit_b_hybrid_pt.sh with its
  run_mae_pretraining.py defaults): 16 frames at 224 px (sampling rate 4 in the data), tubelets 2 x 16 x 16, tube
  mask 0.9, running cell 0.5, decoder 384 wide with 4 blocks (6 heads), AdamW (0.9, 0.95), wd 0.05, base lr 1e-3 at
  256 clips, min lr 1e-5, 200 epochs with 20 of warmup, batch 1024 (32 GPUs x 32; the official runs also take 4
  views per video, which this recipe does not). Reads a video folder converted once (``python -m
  mim_jax.data.videos --src K400 --out DATA_DIR``, ``data.clips.kind='stored'``, stride 4). ``arg``
  (comma-separated): 'large' (ViT-L, scripts/pretrain/vit_l_hybrid_pt.sh: decoder 512 wide with 8 heads, 300
  epochs with 30 of warmup, batch 1536 = 48 GPUs x 32); 'v1' (VideoMAE: no decoder mask, 1600 epochs, base lr
  1.5e-4); 'cpu' (a few steps on moving digits, the same code path); 'epochs=N'."""
  parts = split_arg(arg)
  c = base_config()
  c.data = default_data_config('kinetics400')
  c.data.num_frames = 16
  c.data.clips = default_clip_config()
  c.data.clips.kind, c.data.clips.stride = 'stored', 4  # 16 frames at sampling rate 4
  c.model.encoder = video_encoder(variant='base/16')
  c.model.decoder = dict(width=384, depth=4, num_heads=6, mlp_ratio=4.0)
  c.batch_size = 1024
  c.epochs, c.warmup_epochs = 200.0, 20.0
  c.optimizer.base_lr, c.optimizer.min_lr, c.optimizer.b2 = 1e-3, 1e-5, 0.95
  c.eval.feature = 'pooled'
  videomae(c)
  if 'large' in parts:  # before 'cpu', which replaces the model
    c.model.encoder = video_encoder(variant='large/16')
    c.model.decoder = dict(width=512, depth=4, num_heads=8, mlp_ratio=4.0)
    c.batch_size = 1536
    c.epochs, c.warmup_epochs = 300.0, 30.0
  for part in parts:
    if part == 'large':
      continue
    if part == 'v1':
      c.videomae.decoder_mask = 'none'
      c.epochs, c.warmup_epochs, c.optimizer.base_lr = 1600.0, 40.0, 1.5e-4
    elif part == 'cpu':
      tiny = videomae_moving_digits('tiny')
      c.data, c.model, c.eval = tiny.data, tiny.model, tiny.eval
      c.batch_size, c.total_steps, c.warmup_steps = 8, 4, 1
      c.checkpoint.every_steps, c.log_every = 2, 1
    elif part.startswith('epochs='):
      c.epochs = float(part.split('=', 1)[1])
    else:
      raise ValueError(f"unknown argument {part!r} for configs/videomae/k400.py; use 'large', 'v1', 'cpu' or "
                       "'epochs=N'.")
  return c


# ----------------------------------------------------------------------------------------------------------
# Point-MAE: point clouds


def point_mae(c: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """Point-MAE: 60% of the groups masked (the official count, ``int(0.6 * G)``), Chamfer-L2 on their points
  (``fields`` go into ``config.point_mae``; :func:`mim_jax.methods.point_mae.point_mae_defaults`)."""
  c.mask = dict(name='random', ratio=0.6, count='masked')
  return _method(c, 'point_mae', point_mae_defaults(), fields)


def point_data(num_points: int) -> ml_collections.ConfigDict:
  """The bundled procedural shapes (mim_jax.data.shapes3d) as point clouds of ``num_points``."""
  c = default_data_config('mim_shapes3d')
  c.eval_split = 'test'
  c.image_key = 'points'
  c.num_points = num_points
  c.point_augment = True  # Point-MAE's per-axis scale and shift on training clouds
  c.mean, c.std = (0.0,), (1.0,)  # no pixels: the statistics are unused
  return c


def point_mae_shapes(arg: str | None = None) -> ml_collections.ConfigDict:
  """Point-MAE on the procedural shapes, sized for a 2-core CPU: 512 points, 32 groups of 16 (each group spans the
  same 1/32 of the surface as the official 1024 points in groups of 32, with half the official 64 groups: the
  mini-PointNet over every group's points is the cost, ~1 s per step here), the official model (384 wide, 12 blocks,
  6 heads; decoder 4 blocks) scaled down to 128 wide, 4 blocks, 4 heads, decoder 2 blocks; AdamW wd 0.05 at the
  official lr 1e-3 for batch 128 scaled linearly (2.5e-4 at batch 32), 1500 steps (24 epochs of the 2000 training
  clouds). ``arg``: 'tiny' (a few steps, for tests) or 'paper' (the official sizes: 1024 points, 64 groups of 32,
  ViT-S, batch 128, for a machine that can afford them)."""
  parts = split_arg(arg)
  check_parts(parts, {'tiny', 'paper'}, 'configs/point_mae/shapes.py')
  c = base_config()
  c.data = point_data(512)
  c.model.encoder = dict(name='point_transformer', width=128, depth=4, num_heads=4, num_groups=32, group_size=16,
                         drop_path=0.1)
  c.model.decoder = None
  c.batch_size = 32
  c.total_steps, c.warmup_steps = 1500, 60
  c.optimizer = ml_collections.ConfigDict(dict(name='adamw', base_lr=1e-3 * 256 / 128, b1=0.9, b2=0.999, eps=1e-8,
                                               weight_decay=0.05, min_lr=1e-6))
  c.eval.feature = 'pooled'
  c.eval.max_train_examples = 2000
  c.eval.linear_probe = dict(epochs=90, batch_size=256, base_lr=10.0, warmup_epochs=10)
  c.checkpoint.every_steps = 500
  c.log_every = 50
  point_mae(c, decoder_depth=2, decoder_heads=4)
  if 'paper' in parts:
    c.data.num_points = 1024
    c.model.encoder.update(width=384, depth=12, num_heads=6, num_groups=64, group_size=32)
    c.point_mae.update(decoder_depth=4, decoder_heads=6)
    c.batch_size = 128
  if 'tiny' in parts:
    c.data.num_points = 128
    c.model.encoder = dict(name='point_transformer', width=32, depth=1, num_heads=2, num_groups=16, group_size=8)
    c.point_mae.update(decoder_depth=1, decoder_heads=2)
    c.batch_size, c.total_steps, c.warmup_steps = 8, 6, 2
    c.checkpoint.every_steps, c.log_every = 2, 2
    c.eval.linear_probe.epochs = 2
    c.eval.max_train_examples, c.eval.max_eval_examples = 128, 64
  return c


# ----------------------------------------------------------------------------------------------------------
# R-MAE: radial masking of LiDAR voxels


def radial_mae(c: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """R-MAE: azimuth sectors of voxels hidden, the whole sweep's occupancy generated (``fields`` go into
  ``config.radial_mae``; :func:`mim_jax.methods.radial_mae.radial_mae_defaults`)."""
  # 5 degree sectors (the official code's default ANGULAR_RANGE; its KITTI config uses 1), 80% hidden (MASKED_RATIO
  # of the official KITTI config; the abstract quotes 90%), sensor-centred per sample (mode 'official': the code's).
  c.mask = dict(name='radial', ratio=0.8, sector_deg=5.0, mode='sensor')
  return _method(c, 'radial_mae', radial_mae_defaults(), fields)


def lidar_data() -> ml_collections.ConfigDict:
  """The bundled procedural LiDAR sweeps (mim_jax.data.lidar) as voxel occupancy grids."""
  c = default_data_config('mim_lidar')
  c.eval_split = 'test'
  c.image_key = 'voxels'
  c.voxel_augment = True  # a left-right flip of the street on training sweeps
  c.mean, c.std = (0.0,), (1.0,)  # no pixels: the statistics are unused
  return c


def radial_mae_lidar(arg: str | None = None) -> ml_collections.ConfigDict:
  """R-MAE on the procedural LiDAR sweeps: the official encoder layout (voxel_cnn, widths 16/32/64/64 -> 128) and
  decoder (32, 8 -> 1) on an 8 x 64 x 64 grid, as 2-D convolutions over the bird's-eye view (the z-cells as
  channels: ~40x cheaper on a CPU; ':voxel3d' runs the official 3-D convolutions); 5 degree sectors, 80% of the
  non-empty sectors hidden (the official KITTI config's ratio), sensor-centred, per sample; AdamW with the
  official weight decay 0.01, lr 1e-3 at batch 16, cosine decay (the official one-cycle peak is 3e-3 at batch 4
  per GPU); 3600 steps (~29 epochs of the 2000 training sweeps; the hidden-sector IoU was 0.29 after 1200 steps,
  0.48 after 3600). ``arg`` (comma-separated): 'official' (the official masking rule: index-space angles, 1 degree
  sectors, one choice per batch, 10% fallback), 'voxel3d' (3-D convolutions), 'tiny' (a few steps, for tests)."""
  parts = split_arg(arg)
  check_parts(parts, {'tiny', 'official', 'voxel3d'}, 'configs/radial_mae/lidar.py')
  c = base_config()
  c.data = lidar_data()
  c.model.encoder = dict(name='voxel_cnn', dims=3 if 'voxel3d' in parts else 2)
  c.model.decoder = None
  c.batch_size = 16
  c.total_steps, c.warmup_steps = 3600, 60
  c.optimizer = ml_collections.ConfigDict(dict(name='adamw', base_lr=1e-3 * 256 / 16, b1=0.9, b2=0.999, eps=1e-8,
                                               weight_decay=0.01, min_lr=1e-6))
  c.eval.feature = 'pooled'
  c.eval.max_train_examples = 2000
  c.eval.linear_probe = dict(epochs=90, batch_size=256, base_lr=10.0, warmup_epochs=10)
  c.checkpoint.every_steps = 400
  c.log_every = 50
  radial_mae(c)
  if 'official' in parts:
    c.mask.update(mode='official', sector_deg=1.0)
  if 'tiny' in parts:
    c.model.encoder.update(widths=(4, 8, 8, 8), out_width=8, blocks=(1, 1, 1, 1))
    c.radial_mae.decoder_widths = (4, 4)
    c.batch_size, c.total_steps, c.warmup_steps = 4, 4, 1
    c.checkpoint.every_steps, c.log_every = 2, 2
    c.eval.linear_probe.epochs = 2
    c.eval.max_train_examples, c.eval.max_eval_examples = 32, 16
  return c


# ----------------------------------------------------------------------------------------------------------
# MultiMAE: RGB, depth and semantics


def multimae(c: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """MultiMAE: a Dirichlet token budget across the modalities, one cross-attention output adapter per output
  (``fields`` go into ``config.multimae``; :func:`mim_jax.methods.multimae.multimae_defaults`)."""
  c.mask = dict(name='random', ratio=0.75)  # unused: the Dirichlet budget lives in config.multimae
  return _method(c, 'multimae', multimae_defaults(), fields)


def scenes_data() -> ml_collections.ConfigDict:
  """The bundled procedural 2.5-D scenes (mim_jax.data.scenes25d): 64 px RGB, depth and semantics."""
  c = default_data_config('mim_scenes25d')
  c.image_size = 64
  c.eval_split = 'test'
  c.hflip = True  # the official hflip 0.5, on all modalities together
  c.mean, c.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, as the official RGB transform
  return c


def multimae_scenes(arg: str | None = None) -> ml_collections.ConfigDict:
  """MultiMAE on the procedural 2.5-D scenes: RGB + depth + semantics (5 classes at stride 4), 64 px, patch 8 (64
  tokens per modality, 192 in all), 32 visible (the official 98 of 588 is the same sixth), Dirichlet alpha 1; a
  ViT 128 wide x 4 blocks (CPU-sized; ':paper' has ViT-B and the official decoder: 256 wide, 2 blocks, 8 heads),
  decoders 64 wide x 2 blocks (half the encoder's width; the official decoder is a third of ViT-B's); AdamW (0.9,
  0.95), wd 0.05, the official blr 1e-4 (lr = blr x batch / 256) scaled up 10x for the short run, batch 64, 1200
  steps (~45 scenes/s on one core of this CPU: 28 min). ``arg``: 'tiny' (a few steps, for tests), 'paper'."""
  parts = split_arg(arg)
  check_parts(parts, {'tiny', 'paper'}, 'configs/multimae/scenes.py')
  c = base_config()
  c.data = scenes_data()
  c.model.encoder = dict(name='multivit', modalities=('rgb', 'depth', 'semseg'), patch_size=8, width=128, depth=4,
                         num_heads=4, semseg_classes=5, semseg_stride=4)
  c.model.decoder = None
  c.batch_size = 64
  c.total_steps, c.warmup_steps = 1200, 60
  c.optimizer = ml_collections.ConfigDict(dict(name='adamw', base_lr=1e-3, b1=0.9, b2=0.95, eps=1e-8,
                                               weight_decay=0.05, min_lr=0.0))
  c.eval.feature = 'pooled'
  c.eval.max_train_examples = 2000
  c.checkpoint.every_steps = 500
  c.log_every = 50
  multimae(c, num_visible=32, decoder_width=64, decoder_depth=2, decoder_heads=4)
  if 'paper' in parts:
    c.model.encoder.update(width=768, depth=12, num_heads=12)
    c.multimae.update(decoder_width=256, decoder_depth=2, decoder_heads=8)
    c.optimizer.base_lr = 1e-4
  if 'tiny' in parts:
    c.model.encoder.update(width=32, depth=1, num_heads=2)
    c.multimae.update(decoder_width=16, decoder_depth=1, decoder_heads=2)
    c.batch_size, c.total_steps, c.warmup_steps = 8, 4, 1
    c.checkpoint.every_steps, c.log_every = 2, 2
    c.eval.linear_probe.epochs = 2
    c.eval.max_train_examples, c.eval.max_eval_examples = 32, 16
  return c
