"""The shared config skeleton and its validation.

Every recipe in ``configs/`` starts from :func:`base_config` and overrides what the paper sets. Field
reference (defaults in parentheses):

  method ('mae')            registered method name (mim_jax.methods.method_names())
  seed (0)                  init, masks and data order all derive from it
  batch_size                global batch over all devices and hosts
  epochs / warmup_epochs    schedule length in passes over the train split...
  total_steps / warmup_steps  ...or explicit step counts (> 0 / >= 0 take precedence; -1: from the epochs)
  stop_after_steps (-1)     stop early without changing the schedule (for tests / time-boxed runs)
  optimizer                 name ('adamw' | 'sgd' | 'lamb': timm's, as SparK uses it), base_lr (lr = base_lr * batch
                            / 256), b1, b2, eps, weight_decay (weight_decay_end: a cosine from one to the other),
                            min_lr,
                            grad_clip_norm (None), schedule ('cosine' = warmup + cosine; 'multistep' = warmup, then
                            x gamma (0.1) at each of milestones, given as fractions of the run)
  model.encoder             name ('vit': a registered encoder, mim_jax.models.encoders) and its settings: for the
                            ViT variant ('base/16') or patch_size/width/depth/num_heads/mlp_ratio
  model.decoder             width, depth, num_heads (MAE decoder)
  mask                      name (a mim_jax.masking generator) and its settings, e.g. ratio
  norm_pix_loss (True)      per-patch normalized pixel target
  loss_on ('masked')        MAE: the loss on the masked patches only, or 'all' patches (the paper's ablation)
  compute_dtype ('float32') 'bfloat16' for mixed precision (params stay float32)
                            or 'float16' (GPUs without bfloat16, e.g. V100/T4) with dynamic loss scaling; prefer
                            'bfloat16' where the hardware has it (TPU, A100/H100, recent CPUs): same range as
                            float32, no scaling, no skipped steps
  loss_scale                float16 only: initial (2**15) and growth_interval (2000). The loss is scaled before
                            the backward pass and the grads unscaled in float32; a step whose grads overflow is
                            skipped and halves the scale (floor 1), growth_interval applied steps double it (cap
                            2**24). Overflow skips are expected: counted in train/overflow_steps, logged with
                            train/loss_scale, never a 'nonfinite' failure (mim_jax.train.state.DynamicLossScale)
  attention_impl ('auto')    'auto': the fused C++ CPU kernel (mim_jax.kernels.attention_cpu) on a single CPU device
                            in float32, else 'einsum'; 'cpu_fused' insists on the kernel; 'xla' / 'cudnn' use
                            jax.nn.dot_product_attention ('cudnn': GPU, bfloat16/float16)
  remat ('none')            per-block rematerialization in the backward pass: 'full' keeps only each block's input
                            (least memory, ~1/3 more compute), 'dots' also keeps the weight-matmul outputs
                            (mim_jax.models.vit.REMAT_POLICIES); True/False mean 'full'/'none'
  mesh                      data (-1 = all devices), fsdp (1), rules (None = the default logical rules)
  data                      see mim_jax.data.pipeline.default_data_config
  checkpoint                every_steps, keep, async_save, directory (None = <workdir>/checkpoints; may be
                            gs://... so that all hosts of a pod write to it)
  log_every                 steps between progress lines / metrics rows
  nonfinite ('stop')        'stop': raise on a non-finite loss/grad (checked at log steps and before each save; the
                            update is skipped either way, so no checkpoint holds it); 'skip': skip that update and
                            count it in train/nonfinite_steps (float16 overflows under loss scaling do not count)
  transfer_guard ('allow')  'log' / 'disallow': report / refuse implicit host<->device copies in the step loop
                            (jax.transfer_guard; the batch is put explicitly, metrics are fetched at log steps)
  eval                      what runs after pre-training (see mim_jax.eval.pretrain_eval): feature ('cls' /
                            'pooled'), max_train_examples / max_eval_examples (features are streamed; only these
                            many are held), raw_pixels_max_features, linear_probe, knn, random_init_baseline, figure
  monitors ({})             online evaluators every N steps, by name: kind knn / least_squares / reconstruction /
                            val_loss (see mim_jax.eval.monitors)
  task ('pretrain')         evaluation configs (configs/eval/) set 'linear_probe' / 'knn' / 'finetune'
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from mim_jax.data.pipeline import default_data_config


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = 'mae'
  c.seed = 0
  c.batch_size = 4096
  c.epochs = 800.0
  c.warmup_epochs = 40.0
  c.total_steps = -1
  c.warmup_steps = -1
  c.stop_after_steps = -1
  # A resume refuses a config whose schedule differs from the run's config.json (batch size, step counts, the
  # optimizer): it would not continue the same run. True accepts the new values (mim_jax.train.loop).
  c.accept_schedule_change = False

  c.optimizer = ml_collections.ConfigDict(dict(
      name='adamw', base_lr=1.5e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05, min_lr=0.0))
  c.optimizer.grad_clip_norm = config_dict.placeholder(float)

  c.model = ml_collections.ConfigDict()
  c.model.encoder = ml_collections.ConfigDict(dict(variant='base/16', mlp_ratio=4.0))
  c.model.decoder = ml_collections.ConfigDict(dict(width=512, depth=8, num_heads=16, mlp_ratio=4.0))
  c.mask = ml_collections.ConfigDict(dict(name='random', ratio=0.75))
  c.norm_pix_loss = True
  c.loss_on = 'masked'  # MAE: 'masked' patches only (the paper) | 'all' (its ablation)
  c.compute_dtype = 'float32'
  c.loss_scale = ml_collections.ConfigDict(dict(initial=2.0**15, growth_interval=2000))  # float16 only
  c.attention_impl = 'auto'
  c.remat = 'none'

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  c.mesh.rules = config_dict.placeholder(tuple)
  c.data = default_data_config('imagenet2012')
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=3, async_save=True))
  c.checkpoint.directory = config_dict.placeholder(str)
  c.log_every = 100
  c.nonfinite = 'stop'
  c.transfer_guard = 'allow'

  c.eval = ml_collections.ConfigDict()
  c.eval.enabled = True
  c.eval.feature = 'cls'  # 'cls' (the MAE linear-probe protocol) or 'pooled' (mean of patch tokens)
  c.eval.max_train_examples = 20000  # cap on the probe's train features (frozen-feature evaluation)
  c.eval.max_eval_examples = 10000
  c.eval.raw_pixels_max_features = 4096  # the raw-pixel logistic regression only for images this small
  c.eval.linear_probe = ml_collections.ConfigDict(dict(epochs=90, batch_size=256, base_lr=0.1, warmup_epochs=10))
  # labels_per_class > 0 adds the few-label k-NN (knn_{n}shot/top1: that many labelled images per class, mean and
  # std over label_draws draws); 0 turns it off.
  c.eval.knn = ml_collections.ConfigDict(dict(k=20, temperature=0.07, labels_per_class=10, label_draws=5,
                                              label_seed=0))
  c.eval.random_init_baseline = True
  c.eval.figure = True
  c.task = 'pretrain'
  # e.g. dict(knn=dict(every_steps=100), val_loss=dict(every_steps=100), reconstruction=dict(every_steps=500))
  c.monitors = ml_collections.ConfigDict()
  return c


_CHOICES = {
    'compute_dtype': ('float32', 'bfloat16', 'float16'),
    'attention_impl': ('auto', 'einsum', 'cpu_fused', 'xla', 'cudnn'),
    'nonfinite': ('stop', 'skip'),
    'transfer_guard': ('allow', 'log', 'disallow'),
}


def _validate_remat(value) -> None:
  from mim_jax.models.vit import remat_policy_name

  try:
    remat_policy_name(value)
  except ValueError as e:
    raise ValueError(f'config.{e}') from None


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the bad field and what would fix it. (The method checks its own fields when it is
  built, and the train state its loss-scale settings.)"""
  from mim_jax import masking
  from mim_jax.masking.radial import RADIAL

  for key, choices in _CHOICES.items():
    value = config.get(key)
    if value not in choices:
      raise ValueError(f'config.{key}={value!r} is not one of {choices}.')
  _validate_remat(config.get('remat', 'none'))
  if config.mask.name not in (*masking.names(), RADIAL):
    raise ValueError(f'config.mask.name={config.mask.name!r} is unknown; available: {masking.names()} (and '
                     f"'{RADIAL}', which radial_mae draws from its voxels).")
  if not isinstance(config.batch_size, int) or config.batch_size < 1:
    raise ValueError(f'config.batch_size must be a positive int, got {config.batch_size!r}.')
  if config.optimizer.base_lr <= 0:
    raise ValueError(f'config.optimizer.base_lr must be > 0, got {config.optimizer.base_lr}.')
  if config.log_every < 1:
    raise ValueError(f'config.log_every must be >= 1, got {config.log_every}.')
  if config.checkpoint.every_steps < 1 or config.checkpoint.keep < 1:
    raise ValueError('config.checkpoint.every_steps and config.checkpoint.keep must be >= 1.')
  if config.eval.feature not in ('cls', 'pooled'):
    raise ValueError(f"config.eval.feature must be 'cls' or 'pooled', got {config.eval.feature!r}.")


def resolve_steps(config, steps_per_epoch: int) -> tuple[int, int]:
  """``(total_steps, warmup_steps)`` of a run: ``total_steps`` / ``warmup_steps`` when set (> 0 / >= 0), else
  ``epochs`` / ``warmup_epochs`` passes of ``steps_per_epoch`` optimizer steps. Pre-training and fine-tuning
  configs share these fields."""
  total = config.get('total_steps', -1)
  if total is not None and total != -1 and total < 1:  # -1 (or None) means "from epochs"; 0 is a mistake
    raise ValueError(f'config.total_steps={total}: a run needs at least one step (or -1 to count config.epochs).')
  total = total if total is not None and total > 0 else int(round(config.epochs * steps_per_epoch))
  warm = config.get('warmup_steps', -1)
  if warm is not None and warm < -1:
    raise ValueError(f'config.warmup_steps={warm}: use 0 or more steps (or -1 to count config.warmup_epochs).')
  warm = warm if warm is not None and warm >= 0 else int(round(config.warmup_epochs * steps_per_epoch))
  if total < 1:
    raise ValueError('the run has no steps: set config.total_steps > 0 or config.epochs > 0.')
  return total, min(warm, total)
