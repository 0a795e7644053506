"""Evaluation recipes as functions; the files in ``configs/eval/`` are thin wrappers around them.

Every evaluation config has:

  task                 'linear_probe' | 'knn' | 'finetune' (mim_jax.main runs mim_jax.eval.tasks.run)
  init                 pre-training workdir or converted checkpoint file (see mim_jax.eval.pretrained)
  init_step            checkpoint step of a workdir to evaluate (None: the latest)
  random_init          evaluate a freshly initialised encoder of the same architecture (the baseline)
  model.encoder        architecture for checkpoint files / random init without a workdir (variant 'base/16', or
                       patch_size/width/depth/num_heads); ignored when init is a workdir
  data                 every field of mim_jax.data.pipeline.default_data_config, None = the pre-training value
  seed, mesh (data, fsdp, rules), log_every, max_train_examples / max_eval_examples (None: whole split)
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from mim_jax.data.clips import default_clip_config
from mim_jax.data.pipeline import default_data_config
from mim_jax.models.vit import ILLAMA_OPTIONS

IMAGENET_LINEAR_PROBE = {  # size -> (variant, probe epochs, published linear-probe top-1, %)
  'base': ('base/16', 90, 68.0),
  'large': ('large/16', 50, 75.8),
  'huge': ('huge/14', 50, 76.6),
}
IMAGENET_FINETUNE = {  # size -> (variant, epochs, base_lr, layer decay, drop path, published fine-tune top-1, %)
  'base': ('base/16', 100, 5e-4, 0.65, 0.1, 83.6),
  'large': ('large/16', 50, 1e-3, 0.75, 0.2, 85.9),
  'huge': ('huge/14', 50, 1e-3, 0.75, 0.3, 86.9),
}
# The tiny architecture of configs/mae/vit_*_in1k.py:cpu (digits at 32x32), so ':cpu' evals can run without an init.
CPU_ENCODER = dict(patch_size=8, width=64, depth=2, num_heads=4, mlp_ratio=4.0)
# The digits quickstart's encoder (configs/mae/digits.py), for random init without a workdir.
DIGITS_ENCODER = dict(patch_size=4, width=128, depth=4, num_heads=4, mlp_ratio=4.0)
# configs/mae/fashion_mnist.py's encoder, likewise.
FASHION_MNIST_ENCODER = dict(patch_size=7, width=128, depth=4, num_heads=4, mlp_ratio=4.0)


def data_overrides(**values) -> ml_collections.ConfigDict:
  """Every data-pipeline field as a None placeholder (None = keep the pre-training run's value), then ``values``."""
  defaults = default_data_config()
  c = ml_collections.ConfigDict()
  for key in defaults:
    kind = defaults.get_ref(key).get_type()
    c[key] = config_dict.placeholder(object if key == 'cache' else kind)  # cache: True / False / 'auto'
  # Clip sampling for video workdirs (mim_jax.data.clips), field by field: e.g. --config.data.clips.label=direction
  # probes the motion direction of the clips the model was pre-trained on.
  c.clips = ml_collections.ConfigDict()
  clip_defaults = default_clip_config()
  for key in clip_defaults:
    c.clips[key] = config_dict.placeholder(clip_defaults.get_ref(key).get_type())
  for key, value in values.items():
    if key not in c:
      raise KeyError(f'{key!r} is not a data-pipeline field; known: {sorted(c)}')
    c[key] = value
  return c


def eval_base(task: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = task
  c.seed = 0
  c.init = config_dict.placeholder(str)
  c.init_step = config_dict.placeholder(int)
  c.random_init = False
  c.model = ml_collections.ConfigDict()
  # None fields are left to the encoder (name None: the ViT); a ConvNet from the command line:
  # --config.model.encoder.name=resnet --config.model.encoder.variant=18
  c.model.encoder = ml_collections.ConfigDict(dict(name=config_dict.placeholder(str), variant='base/16',
                                                   patch_size=config_dict.placeholder(int),
                                                   width=config_dict.placeholder(int),
                                                   depth=config_dict.placeholder(int),
                                                   num_heads=config_dict.placeholder(int),
                                                   mlp_ratio=config_dict.placeholder(float)))
  c.data = data_overrides()
  c.max_train_examples = config_dict.placeholder(int)
  c.max_eval_examples = config_dict.placeholder(int)
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  c.mesh.rules = config_dict.placeholder(tuple)
  c.log_every = 100
  return c


def set_encoder(c: ml_collections.ConfigDict, **fields) -> None:
  """An explicit architecture (no variant) for random init without a workdir."""
  c.model.encoder.variant = None
  for key, value in fields.items():
    c.model.encoder[key] = value


def _parse(arg: str | None, allowed: tuple[str, ...], where: str) -> list[str]:
  tokens = [t.strip() for t in (arg or '').split(',') if t.strip()]
  bad = [t for t in tokens if t not in allowed]
  if bad:
    raise ValueError(f'bad argument {arg!r} for {where}; use any of {list(allowed)} separated by commas.')
  return tokens


def linear_probe(arg: str | None = None) -> ml_collections.ConfigDict:
  """MAE linear probing (He et al. 2022, A.2). ``arg``: 'base' (default) | 'large' | 'huge', optionally ',cpu';
  or 'digits' (the quickstart: cached features, no augmentation)."""
  tokens = _parse(arg, (*IMAGENET_LINEAR_PROBE, 'cpu', 'digits'), 'configs/eval/linear_probe.py')
  sizes = [t for t in tokens if t in IMAGENET_LINEAR_PROBE]
  if len(sizes) > 1 or ('digits' in tokens and (sizes or 'cpu' in tokens)):
    raise ValueError(f'bad argument {arg!r} for configs/eval/linear_probe.py: one size, optionally with ",cpu", '
                     "or 'digits' alone.")
  variant, epochs, paper_top1 = IMAGENET_LINEAR_PROBE[sizes[0] if sizes else 'base']
  c = eval_base('linear_probe')
  c.model.encoder.variant = variant
  c.feature = 'cls'  # CLS token after the final norm (the MAE protocol); 'pooled' = mean of the patch tokens
  # MAE linprobe: RandomResizedCrop(224, bicubic) + flip; eval resize 256 + center crop 224.
  c.data = data_overrides(augment='rrc_flip', crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), hflip=True,
                          interpolation='bicubic', eval_crop_pct=0.875)
  c.cache_features = False  # True: compute each feature once (only with data.augment='none')
  c.feature_batch_size = 1024  # global batch of the frozen forward pass used for cached / eval features
  c.linear_probe = ml_collections.ConfigDict(dict(
    batch_size=16384,  # global batch; lr = base_lr * batch / 256 = 6.4
    base_lr=0.1,
    epochs=epochs,
    warmup_epochs=10,
    min_lr=0.0,
    optimizer='lars',
    momentum=0.9,
    trust_coefficient=0.001,
    weight_decay=0.0,
    bn_epsilon=1e-6,  # BatchNorm without affine before the linear layer
    head_init_std=0.01))
  c.knn = ml_collections.ConfigDict(dict(enabled=True, k=20, temperature=0.07))
  c.paper_top1 = paper_top1  # the published ImageNet-1k number, for comparison
  if 'cpu' in tokens:
    set_encoder(c, **CPU_ENCODER)
    c.data = data_overrides(name='mim_digits', image_size=32, augment='none')
    c.cache_features = True
    c.linear_probe.update(dict(batch_size=256, epochs=2, warmup_epochs=1))
    c.max_train_examples, c.max_eval_examples = 512, 256
    c.feature_batch_size = 256
  if 'digits' in tokens:
    set_encoder(c, **DIGITS_ENCODER)
    c.data = data_overrides(name='mim_digits', augment='none')  # 1.8k 16x16 digits: cache the features
    c.cache_features = True
    c.feature_batch_size = 512
    # LARS moves a weight by ~lr x 0.001 of its norm per step: with ~5 steps per epoch the paper's base_lr 0.1
    # leaves the head untrained; base_lr 10 at batch 256 is close to the paper's peak lr (docs/evaluation.md).
    c.linear_probe.update(dict(batch_size=256, base_lr=10.0, epochs=90, warmup_epochs=10))
    c.paper_top1 = None
  return c


def knn(arg: str | None = None) -> ml_collections.ConfigDict:
  """Weighted k-NN (k 20, T 0.07) on the frozen CLS features. ``arg``: None, 'cpu' or 'digits'."""
  tokens = _parse(arg, ('cpu', 'digits'), 'configs/eval/knn.py')
  c = eval_base('knn')
  c.feature = 'cls'
  c.feature_batch_size = 1024
  c.data = data_overrides(augment='none', eval_crop_pct=0.875)
  c.knn = ml_collections.ConfigDict(dict(k=20, temperature=0.07))
  if 'cpu' in tokens:
    set_encoder(c, **CPU_ENCODER)
    c.data = data_overrides(name='mim_digits', image_size=32, augment='none')
    c.max_train_examples, c.max_eval_examples, c.feature_batch_size = 512, 256, 256
  if 'digits' in tokens:
    set_encoder(c, **DIGITS_ENCODER)
    c.data = data_overrides(name='mim_digits', augment='none')
    c.feature_batch_size = 512
  return c


def finetune(size: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """MAE end-to-end fine-tuning on ImageNet-1k (He et al. 2022, A.3, Table 9). ``arg``: None or 'cpu'."""
  tokens = _parse(arg, ('cpu',), f'configs/eval/finetune_vit_{size}.py')
  variant, epochs, base_lr, decay, drop_path, paper_top1 = IMAGENET_FINETUNE[size]
  c = eval_base('finetune')
  c.model.encoder.variant = variant
  # RandomResizedCrop(224, 0.08-1, bicubic) + flip + RandAugment rand-m9-mstd0.5-inc1; eval resize 256 + center
  # crop 224.
  c.data = data_overrides(augment='rrc_flip_randaug', crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3),
                          hflip=True, interpolation='bicubic', eval_crop_pct=0.875)
  c.random_erasing = 0.25  # probability per image (timm RandomErasing, mode 'pixel', one box)
  c.batch_size = 1024  # global
  c.epochs = float(epochs)
  c.warmup_epochs = 5.0
  c.total_steps = -1  # > 0 overrides epochs
  c.warmup_steps = -1
  c.optimizer = ml_collections.ConfigDict(dict(
    base_lr=base_lr,  # lr = base_lr * batch / 256
    b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05, min_lr=1e-6, layer_decay=decay))
  c.optimizer.grad_clip_norm = config_dict.placeholder(float)
  c.drop_path = drop_path
  c.global_pool = True  # mean of the patch tokens + fc_norm (MAE); False: the CLS token after the final norm
  c.head_init_std = 2e-5
  c.mixup = ml_collections.ConfigDict(dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5,
                                           label_smoothing=0.1))
  c.compute_dtype = 'float32'  # 'bfloat16' on accelerators (params and optimizer stay float32)
  c.remat = 'none'  # or 'full' / 'dots' (mim_jax.models.vit.REMAT_POLICIES)
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=2, async_save=True))
  c.eval_every_steps = -1  # -1: once per epoch, 0: only at the end (there is always one at the end)
  c.eval_batch_size = 1024
  c.paper_top1 = paper_top1
  # The few-label setting: this share of the training labels (a class-stratified sample drawn with
  # train_subset_seed, the same for every arm); None = all of them.
  c.train_fraction = config_dict.placeholder(float)
  c.train_subset_seed = 0
  if 'cpu' in tokens:  # the same code path (RandAugment, erasing, mixup) on digits at 32x32
    set_encoder(c, **CPU_ENCODER)
    c.data = data_overrides(name='mim_digits', image_size=32, augment='rrc_flip_randaug')
    _few_steps(c, batch_size=32, eval_examples=128)
  return c


def _few_steps(c: ml_collections.ConfigDict, batch_size: int, eval_examples: int) -> None:
  """A fine-tune of six steps with an evaluation halfway and a checkpoint (the ':cpu' / ':tiny' variants)."""
  c.batch_size = batch_size
  c.total_steps, c.warmup_steps = 6, 2
  c.log_every = 2
  c.eval_every_steps = 3
  c.eval_batch_size = eval_examples
  c.max_eval_examples = eval_examples
  c.checkpoint.every_steps = 3


def finetune_fashion_mnist(arg: str | None = None) -> ml_collections.ConfigDict:
  """Fine-tuning on Fashion-MNIST (the encoder of configs/mae/fashion_mnist.py). ``arg``: None or 'tiny'.

  A short schedule for a 2-core CPU (10 epochs of 60,000 images), so light regularization: mild crops and
  flips (a mirrored garment keeps its class), label smoothing 0.1, drop path 0.1, layer decay 0.75, no
  mixup / CutMix / erasing (they pay off over the paper's 100 epochs, not over 10). Chosen up front, not tuned:
  the accuracy during training is read on the test split, so nothing may be tuned on it."""
  tokens = _parse(arg, ('tiny',), 'configs/eval/finetune_fashion_mnist.py')
  c = finetune('base')
  set_encoder(c, **FASHION_MNIST_ENCODER)
  c.paper_top1 = None
  c.data = data_overrides(name='fashion_mnist', augment='rrc_flip', crop_scale=(0.6, 1.0), hflip=True)
  c.batch_size = 256
  c.epochs = 10.0
  c.warmup_epochs = 1.0
  c.optimizer.base_lr = 1e-3  # peak lr 1e-3 at batch 256
  c.optimizer.layer_decay = 0.75
  c.drop_path = 0.1
  c.random_erasing = 0.0
  c.mixup.prob = 0.0  # label smoothing stays
  c.checkpoint.every_steps = 500
  c.log_every = 100
  c.eval_every_steps = 0  # once, at the end
  c.eval_batch_size = 1000
  if 'tiny' in tokens:
    set_encoder(c, patch_size=7, width=32, depth=1, num_heads=2, mlp_ratio=2.0)
    _few_steps(c, batch_size=16, eval_examples=64)
  return c


ILLAMA_FASHION_MNIST_ENCODER = dict(FASHION_MNIST_ENCODER, **ILLAMA_OPTIONS)


def illama_fashion_mnist(arg: str | None = None) -> ml_collections.ConfigDict:
  """iLLaMA trained from scratch on Fashion-MNIST (supervised): the fine-tune recipe of
  :func:`finetune_fashion_mnist` with random init, the ViT's shape (patch 7, 128 x 4, 4 heads) and iLLaMA's blocks.
  ``arg`` (comma-separated): 'soft' (default: the official schedule shape, rate 1 = full attention, then fully
  causal after the cutoff; the cutoff is a quarter of training, the official is 50 of 300 epochs) | 'linear' (the
  rate ramps 1 -> 0 over the cutoff) | 'causal' (causal from the first step: the official 'standard' mode at rate
  0) | 'bidirectional' (rate 1 throughout); 'tiny' (a few steps, for tests)."""
  tokens = _parse(arg, ('soft', 'linear', 'causal', 'bidirectional', 'tiny'), 'configs/illama/fashion_mnist.py')
  c = finetune_fashion_mnist('tiny' if 'tiny' in tokens else None)
  set_encoder(c, **ILLAMA_FASHION_MNIST_ENCODER)
  c.random_init = True
  c.data.name = 'fashion_mnist'
  c.global_pool = False  # iLLaMA's head reads the last (CLS) token after the final RMSNorm
  if 'tiny' in tokens:
    set_encoder(c, patch_size=7, width=32, depth=1, num_heads=2, mlp_ratio=2.0, swiglu_multiple_of=32)
  modes = [t for t in tokens if t != 'tiny'] or ['soft']
  if len(modes) > 1:
    raise ValueError(f'pick one soft-mask mode for configs/illama/fashion_mnist.py, got {modes}.')
  c.soft_mask = {
      'soft': dict(mode='soft', rate=1.0, schedule='constant', cutoff_fraction=0.25),
      'linear': dict(mode='soft', rate=1.0, schedule='linear', cutoff_fraction=0.25),
      'causal': dict(mode='standard', rate=0.0),
      'bidirectional': dict(mode='standard', rate=1.0),
  }[modes[0]]
  return c


# size: warmup epochs, mixup, cutmix, drop path, soft-mask schedule, cutoff epochs (the official scripts; base's
# script sets no warmup, so main_soft.py's default 50 applies), top-1 of the official logs (logs/illama-*-in1k-*.txt).
ILLAMA_IN1K = {
    'tiny': (5.0, 0.1, 0.1, 0.0, 'constant', 50.0, 75.0),
    'small': (5.0, 0.5, 0.5, 0.1, 'linear', 50.0, 79.9),
    'base': (50.0, 0.95, 1.0, 0.4, 'linear', 25.0, 81.6),
}


def illama_in1k(size: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """iLLaMA's supervised ImageNet-1k recipe (``scripts/train_illama_{size}_in1k.sh`` with ``main_soft.py``'s
  defaults): 300 epochs, batch 4096 (128 x 8 GPUs x update_freq 4), AdamW lr 4e-3 at 4096 (so base_lr 2.5e-4
  per 256), weight decay 0.05, min lr 1e-6, label smoothing 0.1, RandAugment rand-m9-mstd0.5-inc1, random erasing
  0.25, and per size (:data:`ILLAMA_IN1K`) the warmup, mixup / CutMix, drop path and the soft mask (rate 1 = full
  attention, constant or ramped to 0 over the cutoff, then causal). ``arg``: None or 'cpu' (a few steps of the
  same shapes on whatever ImageNet is prepared)."""
  tokens = _parse(arg, ('cpu',), f'configs/illama/illama_{size}_in1k.py')
  c = finetune('base', 'cpu' if 'cpu' in tokens else None)
  c.model.encoder.variant = f'illama_{size}/16'
  c.random_init = True
  c.global_pool = False
  warmup, mixup, cutmix, drop_path, schedule, cutoff, top1 = ILLAMA_IN1K[size]
  c.paper_top1 = top1
  c.epochs, c.warmup_epochs = 300.0, warmup
  if 'cpu' not in tokens:
    c.batch_size = 4096
  c.optimizer.base_lr = 4e-3 * 256 / 4096
  c.optimizer.min_lr = 1e-6
  c.optimizer.weight_decay = 0.05
  c.optimizer.layer_decay = 1.0
  c.drop_path = drop_path
  c.mixup.mixup_alpha, c.mixup.cutmix_alpha = mixup, cutmix
  c.soft_mask = dict(mode='soft', rate=1.0, schedule=schedule, cutoff_epochs=cutoff)
  if 'cpu' in tokens:  # a few steps: the switch to causal inside them
    c.soft_mask = dict(mode='soft', rate=1.0, schedule=schedule, cutoff_fraction=0.5)
  return c


# ResNet-18's blocks at a quarter of the width, with the small-image stem (3x3 stride 1, no max-pool): 28 px keeps
# 28 / 14 / 7 / 4 px maps. ConvNeXt-atto's depths at half width, patch 2 and no stage-0 downsampling: 14/7/3/1 px.
FASHION_MNIST_CONVNETS = {
    'resnet': dict(name='resnet', block='basic', depths=(2, 2, 2, 2), widths=(16, 32, 64, 128), stem='small',
                   stem_width=16),
    'convnext': dict(name='convnext', depths=(2, 2, 6, 2), dims=(20, 40, 80, 160), patch_size=2, stage0_stride=1),
}


def convnet_fashion_mnist(arg: str | None = None) -> ml_collections.ConfigDict:
  """A ConvNet trained from scratch (supervised) on Fashion-MNIST with the fine-tune recipe of
  :func:`finetune_fashion_mnist` (10 epochs, AdamW, peak lr 1e-3 at batch 256, label smoothing 0.1, mild crops +
  flips), no layer decay or drop path. (5 epochs reached 86.45% at epoch 3 with the lr still high: short of the
  dataset's ConvNet anchors.) ``arg`` (comma-separated): 'resnet' (default) | 'convnext'; 'tiny' (a few steps)."""
  tokens = _parse(arg, ('resnet', 'convnext', 'tiny'), 'configs/convnets/fashion_mnist.py')
  c = finetune_fashion_mnist('tiny' if 'tiny' in tokens else None)
  kinds = [t for t in tokens if t != 'tiny'] or ['resnet']
  if len(kinds) > 1:
    raise ValueError(f'pick one ConvNet for configs/convnets/fashion_mnist.py, got {kinds}.')
  c.model.encoder = ml_collections.ConfigDict(FASHION_MNIST_CONVNETS[kinds[0]])
  c.random_init = True
  c.data.name = 'fashion_mnist'
  c.optimizer.layer_decay = 1.0
  c.drop_path = 0.0
  c.eval_every_steps = -1  # once per epoch
  if 'tiny' in tokens:
    c.model.encoder.depths = (1, 1, 1, 1)
  return c




def selfie_finetune_digits(arg: str | None = None) -> ml_collections.ConfigDict:
  """Selfie's claim, semi-supervised: fine-tune the whole ResNet of configs/selfie/digits.py on 10% of the digits'
  training labels (135 images, class-stratified), from a Selfie workdir (its first 3 stages; the 4th starts
  fresh) or from random init. Chosen up front for a ConvNet on 135 images, not tuned (accuracy is read on the
  test split): batch 32, 100 epochs (400 steps, 10 of warmup), AdamW peak lr 1e-3, wd 0.05, mild crops, no flip,
  label smoothing 0.1, no mixup / erasing / layer decay / drop path. ``arg``: None or 'tiny' (a few steps)."""
  from mim_jax.recipes import SELFIE_DIGITS_RESNET  # the ResNet configs/selfie/digits.py pre-trains

  tokens = _parse(arg, ('tiny',), 'configs/selfie/finetune_digits.py')
  c = finetune('base')
  c.model.encoder = ml_collections.ConfigDict(SELFIE_DIGITS_RESNET)
  c.paper_top1 = None
  c.data = data_overrides(name='mim_digits', augment='rrc_flip', crop_scale=(0.6, 1.0), hflip=False)
  c.train_fraction = 0.1
  c.batch_size = 32
  c.epochs, c.warmup_epochs = 100.0, 10.0
  c.optimizer.base_lr = 8e-3  # peak lr 1e-3 at batch 32
  c.optimizer.layer_decay = 1.0
  c.drop_path = 0.0
  c.random_erasing = 0.0
  c.mixup.prob = 0.0  # label smoothing stays
  c.checkpoint.every_steps = 200
  c.log_every = 50
  c.eval_every_steps = 0  # once, at the end
  c.eval_batch_size = 512
  if 'tiny' in tokens:
    c.model.encoder = ml_collections.ConfigDict(dict(SELFIE_DIGITS_RESNET, widths=(8, 16, 16, 32), stem_width=8))
    _few_steps(c, batch_size=16, eval_examples=64)
  return c


def videomae_finetune_moving_digits(arg: str | None = None) -> ml_collections.ConfigDict:
  """Fine-tuning a VideoMAE workdir (configs/videomae/moving_digits.py) on the moving-digits clips: the ViT on the
  whole clip, mean-pooled, fc_norm and a linear head (VideoMAE's fine-tune model), AdamW, 30 epochs at batch 64
  (peak lr 5e-4), layer decay 0.75, drop path 0.1, label smoothing 0.1, mixup only (no CutMix or erasing: a box
  pasted into a 32 px moving sprite clip hides most of it). ``arg`` (comma-separated): 'direction' (the label is
  the motion direction); 'tiny' (a few steps). For a converted video dataset set data.name / data.data_dir and
  data.clips (kind='stored', test_views=(segments, crops) for multi-view testing)."""
  from mim_jax.data.clips import default_clip_config

  tokens = _parse(arg, ('direction', 'tiny'), 'configs/videomae/finetune_moving_digits.py')
  c = finetune('base')
  c.paper_top1 = None
  c.data = data_overrides(name='mim_digits')
  c.data.num_frames = 8
  c.data.clips = default_clip_config()
  c.data.clips.label = 'direction' if 'direction' in tokens else 'class'
  c.batch_size = 64
  c.epochs, c.warmup_epochs = 30.0, 3.0
  c.optimizer.base_lr = 2e-3  # peak 5e-4 at batch 64
  c.optimizer.layer_decay = 0.75
  c.drop_path = 0.1
  c.random_erasing = 0.0
  c.mixup = ml_collections.ConfigDict(dict(mixup_alpha=0.8, cutmix_alpha=0.0, prob=1.0, switch_prob=0.5,
                                           label_smoothing=0.1))
  c.checkpoint.every_steps = 200
  c.log_every = 50
  c.eval_every_steps = 0
  c.eval_batch_size = 128
  if 'tiny' in tokens:
    _few_steps(c, batch_size=8, eval_examples=32)
  return c


def finetune_digits(arg: str | None = None) -> ml_collections.ConfigDict:
  """Fine-tuning on the bundled digits (the quickstart). ``arg``: None or 'tiny' (a few steps, for tests)."""
  tokens = _parse(arg, ('tiny',), 'configs/eval/finetune_digits.py')
  c = finetune('base')
  set_encoder(c, **DIGITS_ENCODER)
  c.paper_top1 = None
  # Digits are 16x16 and orientation matters: mild crops, no flip, no RandAugment (its photometric ops -
  # solarize, posterize, color - and shears/rotations of a 16-pixel glyph mostly destroy the class evidence).
  c.data = data_overrides(name='mim_digits', augment='rrc_flip', crop_scale=(0.6, 1.0), hflip=False)
  c.batch_size = 128
  c.epochs = 100.0  # 10 steps per epoch on the 1347 training digits
  c.warmup_epochs = 5.0
  c.optimizer.base_lr = 1e-3  # peak lr 5e-4 at batch 128
  c.optimizer.layer_decay = 0.75
  c.drop_path = 0.1
  c.random_erasing = 0.0  # a box of up to a third of a 16x16 glyph, on top of CutMix, is too much for 1.4k images
  c.checkpoint.every_steps = 500
  c.log_every = 50
  c.eval_every_steps = 100
  c.eval_batch_size = 512
  if 'tiny' in tokens:
    set_encoder(c, patch_size=4, width=32, depth=1, num_heads=2, mlp_ratio=2.0)
    _few_steps(c, batch_size=16, eval_examples=64)
  return c
