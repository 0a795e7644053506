"""Full fine-tuning of a pre-trained encoder with a new classification head: the ``finetune`` evaluation task.

The MAE fine-tune recipe (DESIGN.md §3; He et al. 2022, A.3):

* model: the pre-trained ViT without masking, drop path (stochastic depth, linearly increasing to
  ``drop_path`` over the blocks), then the global average of the patch tokens, ``fc_norm`` (LayerNorm, eps
  1e-6) and a linear head (weights ``trunc_normal(2e-5)``, bias 0). With global pooling the encoder's final norm
  is not used (``fc_norm`` replaces it), as in the reference; ``global_pool=False`` uses the normed CLS token;
* AdamW (0.9, 0.999), weight decay 0.05 except 1-D params, biases and the CLS token, layer-wise lr decay
  (:func:`mim_jax.train.optim.layer_decay_multipliers`: ``decay ** (num_layers - layer_id)`` with the method's
  layer ids), ``lr = base_lr * batch / 256``,
  per-step warmup then cosine to ``min_lr``;
* train augmentation from the data pipeline (``data.augment``; the ImageNet recipes use 'rrc_flip_randaug',
  :mod:`mim_jax.data.randaugment`), random erasing 0.25 (:mod:`mim_jax.data.random_erasing`), then Mixup 0.8 /
  CutMix 1.0 with label smoothing 0.1 (:mod:`mim_jax.data.mixup`), soft-target cross-entropy; eval resize +
  center crop;
* top-1 / top-5 on the eval split every ``eval_every_steps`` and at the end.

The encoder comes from the pre-training method (``method.finetune_encoder``) and the classifier reads the
encoder's feature contract (``pooled`` or ``cls``), so any registered encoder fine-tunes; the layer ids for layer
decay are the method's. Fine-tuning is an :class:`~mim_jax.methods.base.Objective` run by the pre-training loop
(:func:`mim_jax.train.loop.run`): the same sharded state, jitted step, checkpoints and resume, preemption
handling, transfer guard, fit check and non-finite policy. Fine-tuning takes methods whose eval batches are one
image (``image`` and ``label``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mim_jax import config as config_lib
from mim_jax import workdir as workdir_lib
from mim_jax.data import batch as batch_lib
from mim_jax.data import mixup as mixup_lib
from mim_jax.data import pipeline
from mim_jax.data.random_erasing import random_erasing
from mim_jax.eval import pretrained as pretrained_lib
from mim_jax.eval import streaming
from mim_jax.eval.linear_probe import topk_accuracy
from mim_jax.methods.base import Objective
from mim_jax.models.classifier import Classifier
from mim_jax.models.vit import ViTEncoder, dtype_from_name, soft_mask_schedule
from mim_jax.train import loop
from mim_jax.train import optim
from mim_jax.train import sharding as shd
from mim_jax.train import state as state_lib
from mim_jax.utils.logging import log

NO_WEIGHT_DECAY = ('cls_token', 'pos_embed', 'dist_token')  # the reference ViT's no_weight_decay()


class FinetuneObjective(Objective):
  """Fine-tuning as the train loop's objective: one labelled image per example, random erasing then
  mixup/cutmix, soft-target cross-entropy.

  An encoder with BatchNorm keeps its running statistics in the train state's extras (``batch_stats``: updated by
  every train step, never by the optimizer). ``soft_mask``: iLLaMA's soft-mask schedule (step -> rate), for an
  encoder with ``causal_mask='soft'``; the rate is traced, so the step compiles once, and evaluation uses the rate
  of the step it evaluates."""

  name = 'finetune'

  def __init__(self, model: Classifier, mix: mixup_lib.MixupConfig, image_shape, erasing_prob: float = 0.0,
               soft_mask: Callable[[Any], jax.Array] | None = None, clips=None):
    self.model = model
    self.mix = mix
    self.image_shape = tuple(image_shape)
    self.erasing_prob = float(erasing_prob)
    self.soft_mask = soft_mask
    self.clips = clips  # a ClipInput for video methods; None: one image per example
    if clips is not None and self.erasing_prob:
      raise ValueError('random erasing is defined for images; fine-tune clips with random_erasing=0.')

  @property
  def input_key(self) -> str:
    return 'image' if self.clips is None else 'video'

  def batch_fields(self, train: bool = True):
    if self.clips is None:
      return batch_lib.image_fields(self.image_shape)
    return self.clips.fields(train)

  def record_transform(self, data_cfg, source, train: bool):
    return None if self.clips is None else self.clips.record_transform(data_cfg, source, train)

  def init(self, rng, batch):
    variables = self.model.init({'params': rng, 'dropout': rng}, batch[self.input_key], **self._rate(0))
    extras = {'batch_stats': variables['batch_stats']} if 'batch_stats' in variables else {}
    return variables['params'], extras

  def _rate(self, step) -> dict:
    return {} if self.soft_mask is None else {'soft_mask_rate': self.soft_mask(step)}

  def loss_fn(self, params, extras, batch, rng, step):
    erase_rng, mix_rng, drop_rng = jax.random.split(rng, 3)
    images = batch[self.input_key]
    if self.clips is None:
      images, _ = random_erasing(erase_rng, images, self.erasing_prob)  # per image, before mixing (timm)
    images, targets, info = mixup_lib.mix_batch(mix_rng, images, batch['label'], self.model.num_classes, self.mix)
    rate = self._rate(step)
    metrics = {'mix_lam': info['lam'], **rate}  # the soft-mask rate is logged too
    # BatchNorm in training mode (batch statistics; running averages updated) where the encoder has any.
    mutable = ['batch_stats'] if 'batch_stats' in extras else []
    logits, updated = self.model.apply({'params': params, **extras}, images, deterministic=False,
                                       rngs={'dropout': drop_rng}, mutable=mutable, **rate)
    extras = {**extras, **updated}
    loss = mixup_lib.soft_cross_entropy(logits, targets)
    return loss, ({'loss': loss, **metrics}, extras)

  def logits(self, state_parts, batch):
    """Eval logits from ``(params, extras, step)`` of the train state."""
    params, extras, step = state_parts
    x = batch[self.input_key]
    views = x.shape[1] if self.clips is not None and x.ndim == 6 else 0
    if views:  # multi-view testing: every view classified, the softmax averaged over the views (VideoMAE's merge)
      x = x.reshape(-1, *x.shape[2:])
    logits = self.model.apply({'params': params, **extras}, x, deterministic=True, **self._rate(step))
    if views:
      probs = jax.nn.softmax(logits.reshape(-1, views, logits.shape[-1]), axis=-1).mean(axis=1)
      logits = jnp.log(probs)
    return logits


class ClipInput:
  """What fine-tuning a video method reads: its clips (``video`` [T, H, W, C]) for training and, for evaluation,
  ``views`` clips per video (``data.clips.test_views`` = (segments, crops): ``video`` [V, T, H, W, C] with V > 1)."""

  def __init__(self, method, data_cfg):
    self.method = method
    clips = data_cfg.get('clips', None) or {}
    segments, crops = (int(v) for v in clips.get('test_views', (1, 1)))
    self.views = segments * crops if clips.get('kind', 'moving') == 'stored' else 1  # synthetic clips: one view

  def fields(self, train: bool):
    fields = dict(self.method.batch_fields(train))
    if not train and self.views > 1:
      f = fields['video']
      fields['video'] = batch_lib.Field((self.views, *f.shape), f.dtype, pixels=f.pixels, mean=f.mean, std=f.std)
    return fields

  def record_transform(self, data_cfg, source, train: bool):
    return self.method.record_transform(data_cfg, source, train)


def weight_decay_mask(params):
  """True where the reference fine-tune decays: more than one dimension, not a bias, not CLS / position tokens."""
  return optim.weight_decay_mask(params, NO_WEIGHT_DECAY)


def make_optimizer(opt_cfg, schedule, multipliers):
  """AdamW (0.9, 0.999) with the fine-tune decay mask, optional clipping, then the layer-decay lr multipliers."""
  cfg = ml_collections.ConfigDict({'b1': 0.9, 'b2': 0.999, **dict(opt_cfg)})
  return optim.make_optimizer(cfg, schedule, no_decay_names=NO_WEIGHT_DECAY, lr_multipliers=multipliers)


def build_model(config, pre: pretrained_lib.Pretrained, num_classes: int) -> Classifier:
  global_pool = bool(config.get('global_pool', True))
  encoder = pre.method.finetune_encoder(drop_path=float(config.get('drop_path', 0.0)), pooled=global_pool,
                                        dtype=dtype_from_name(config.get('compute_dtype', 'float32')),
                                        remat=config.get('remat', 'none'))
  # A ConvNet's pooled feature goes to the head as timm's does (ConvNeXt's encoder applies its head norm itself).
  fc_norm = bool(config.get('fc_norm', getattr(encoder, 'fc_norm_default', True)))
  return Classifier(encoder, num_classes, global_pool, float(config.get('head_init_std', 2e-5)), fc_norm)


def model_spec(model: Classifier, info, soft_mask_rate: float | None = None, input_shape=None):
  """The :class:`~mim_jax.weights.spec.ModelSpec` of a fine-tuned classifier: what ``mim_jax.features`` and
  ``python -m mim_jax.convert`` need to rebuild it from the fine-tuning workdir (any registered encoder)."""
  from mim_jax.weights.spec import ModelSpec

  fields = dict(fc_norm=bool(model.global_pool and model.fc_norm), num_classes=int(model.num_classes),
                pixel_mean=tuple(float(v) for v in info.mean), pixel_std=tuple(float(v) for v in info.std))
  if isinstance(model.encoder, ViTEncoder):
    fields.update(global_pool='avg' if model.global_pool else 'token',
                  soft_mask_rate=None if soft_mask_rate is None else float(soft_mask_rate))
  elif not model.global_pool:
    raise ValueError('a ConvNet classifier reads the pooled feature: fine-tune it with global_pool=True.')
  encoder = model.encoder.clone(drop_path=0.0, dtype=jnp.float32)
  return ModelSpec.for_encoder(encoder, input_shape or info.image_shape, **fields)


def write_model_spec(workdir: str, model: Classifier, info, soft_mask_rate: float | None = None,
                     input_shape=None) -> None:
  """``<workdir>/model_spec.json`` (process 0, atomically): the fine-tuned model's description."""
  text = model_spec(model, info, soft_mask_rate, input_shape).to_json()
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    workdir_lib.write_text_atomic(os.path.join(workdir, workdir_lib.MODEL_SPEC_FILE), text)


def soft_mask_from_config(config, encoder, steps_per_epoch: int, total: int):
  """The step -> rate schedule of ``config.soft_mask`` (iLLaMA's ``--soft_mask``, ``--mask_mode``,
  ``--mask_schedule``, ``--cutoff_soft``) for an encoder with ``causal_mask='soft'``; None otherwise.

  ``mode='standard'``: ``rate`` at every step (1: full attention, 0: causal from the start); ``mode='soft'``:
  ``rate`` (``schedule='constant'``) or a ramp to 0 (``'linear'``) for ``cutoff_epochs`` (or ``cutoff_fraction``
  of the run), then causal."""
  block = dict(config.get('soft_mask', None) or {})
  if getattr(encoder, 'causal_mask', 'none') != 'soft':
    if block:
      raise ValueError("config.soft_mask is set but the encoder has no soft causal mask "
                       "(model.encoder.causal_mask='none'); drop config.soft_mask or use an iLLaMA encoder.")
    return None
  known = {'mode', 'rate', 'schedule', 'cutoff_epochs', 'cutoff_fraction'}
  if set(block) - known:
    raise ValueError(f'unknown config.soft_mask field(s) {sorted(set(block) - known)}; known: {sorted(known)}.')
  mode = block.get('mode', 'soft')
  if mode == 'standard':
    return soft_mask_schedule(float(block.get('rate', 1.0)), total + 1, 'constant')
  if mode != 'soft':
    raise ValueError(f"config.soft_mask.mode must be 'standard' or 'soft', got {mode!r}.")
  if ('cutoff_epochs' in block) == ('cutoff_fraction' in block):
    raise ValueError('config.soft_mask (mode soft) needs exactly one of cutoff_epochs (the official --cutoff_soft) '
                     'and cutoff_fraction (of the run).')
  if 'cutoff_epochs' in block:
    cutoff = int(round(float(block['cutoff_epochs']) * steps_per_epoch))
  else:
    cutoff = int(round(float(block['cutoff_fraction']) * total))
  return soft_mask_schedule(float(block.get('rate', 1.0)), cutoff, block.get('schedule', 'constant'))


def labelled_subset(config, data_cfg, info):
  """The training examples a fine-tune reads: all, or ``config.train_fraction`` of them (the few-label setting:
  a seeded sample stratified by class, ``config.train_subset_seed``, the same for every arm of a comparison)."""
  fraction = config.get('train_fraction', None)
  if fraction is None:
    return pipeline.eval_subset(data_cfg, data_cfg.train_split, None)
  fraction = float(fraction)
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f'config.train_fraction must be in (0, 1] (the share of training labels used), got {fraction}.')
  n = max(1, round(fraction * info.num_train))
  return pipeline.eval_subset(data_cfg, data_cfg.train_split, n, int(config.get('train_subset_seed', 0)))


def pretrained_encoder_params(pre: pretrained_lib.Pretrained, expected) -> dict:
  """The pre-trained encoder params the classifier's encoder uses: entries it does not have (the mask token of
  pre-training, the final norm that fc_norm replaces with global pooling, as in the reference) are dropped, and
  the rest must fit exactly, but for the entries the method leaves fresh (``Method.finetune_fresh``)."""
  params = {k: v for k, v in dict(pre.encoder_params()).items() if k in expected}
  pretrained_lib.check_same_structure(params, without_fresh(pre, expected), 'the pre-trained encoder')
  return params


def without_fresh(pre: pretrained_lib.Pretrained, tree) -> dict:
  """``tree`` (the fine-tune encoder's params or statistics) without the entries that start fresh."""
  method = getattr(pre, 'method', None)
  fresh = set(method.finetune_fresh()) if method is not None and getattr(pre, 'source', None) != 'random' else set()
  return {k: v for k, v in dict(tree).items() if k not in fresh}


def eval_interval(eval_every_steps: int, steps_per_epoch: int, total: int) -> int:
  """Steps between evaluations: -1 (any negative) once per epoch, 0 only at the end, else as given."""
  if eval_every_steps < 0:
    return steps_per_epoch
  return eval_every_steps or total


class _EvalHook:
  """Top-1 / top-5 on the eval split every ``every_steps`` steps and at the end, with the train state's own
  shardings (nothing is gathered to one device)."""

  name = 'finetune_eval'

  def __init__(self, context, objective: FinetuneObjective, every_steps: int, data_cfg, batch_size: int,
               max_examples):
    self.every_steps = every_steps
    self.mesh = context.mesh
    shardings = (context.shardings.params, context.shardings.extras, shd.replicated(context.mesh))
    self.forward = streaming.jit_forward(objective.logits, shardings, context.mesh, context.rules)
    self.data_cfg, self.batch_size, self.max_examples = data_cfg, batch_size, max_examples
    self.objective = objective
    self.history: list[tuple[int, float]] = []
    self.last: dict[str, float] | None = None

  def __call__(self, step: int, state) -> dict[str, float]:
    batches = streaming.eval_batches(self.data_cfg, self.data_cfg.eval_split, self.batch_size, self.mesh,
                                     self.max_examples, fields=self.objective.batch_fields(False),
                                     record_transform=self.objective.record_transform)
    parts = (state.params, state.extras, state.step)
    acc = self.last = topk_accuracy(*streaming.gather(self.forward, parts, batches))
    self.history.append((step, acc['top1']))
    log(f'fine-tune step {step}: eval top-1 {100 * acc["top1"]:.2f}%, top-5 {100 * acc["top5"]:.2f}%')
    return {'finetune/eval/top1': acc['top1'], 'finetune/eval/top5': acc['top5']}


def run(config, workdir: str) -> dict[str, Any]:
  """Fine-tunes and evaluates; returns the flat summary values (fractions in [0, 1])."""
  t0 = time.perf_counter()
  pre = pretrained_lib.load(config)
  data_cfg = pre.config.data
  info = pipeline.dataset_info(data_cfg)
  if not info.num_classes:
    raise ValueError(f'dataset {info.name!r} has no class labels; set config.data.name to a labelled dataset.')
  fields = set(pre.method.batch_fields(False))
  clips = None
  if 'video' in fields and 'label' in fields:
    clips = ClipInput(pre.method, data_cfg)
  elif fields != {'image', 'label'}:
    raise ValueError(f'fine-tuning takes methods whose eval batches are one image (or one clip) and its label; '
                     f'method {pre.method.name!r} declares {sorted(fields)}.')
  subset = labelled_subset(config, data_cfg, info)
  if subset.indices is not None:
    info = dataclasses.replace(info, num_train=len(subset))
  if config.batch_size > info.num_train:
    raise ValueError(f'config.batch_size={config.batch_size} is larger than the {info.num_train} training '
                     'examples; lower it.')
  num_classes = int(info.num_classes)
  model = build_model(config, pre, num_classes)
  mix = mixup_lib.MixupConfig(**dict(config.get('mixup', None) or {}))
  steps_per_epoch = info.steps_per_epoch(config.batch_size)
  total, warmup = config_lib.resolve_steps(config, steps_per_epoch)
  soft_mask = soft_mask_from_config(config, model.encoder, steps_per_epoch, total)
  objective = FinetuneObjective(model, mix, info.image_shape, config.get('random_erasing', 0.0), soft_mask, clips)
  write_model_spec(workdir, model, info, None if soft_mask is None else soft_mask(total),
                   None if clips is None else pre.method.clip_shape)
  opt = config.optimizer
  peak = optim.scaled_lr(opt.base_lr, config.batch_size)
  schedule = optim.warmup_cosine(peak, total, warmup, opt.get('min_lr', 0.0))
  abstract = nn.meta.unbox(jax.eval_shape(objective.init, jax.random.PRNGKey(0), objective.example_batch(2))[0])
  multipliers = optim.layer_decay_multipliers(abstract, pre.method.layer_id, pre.method.num_layers,
                                              opt.get('layer_decay', 1.0))
  tx = make_optimizer(opt, schedule, multipliers)

  init_params = init_extras = None
  if pre.source != 'random':
    encoder_params = pretrained_encoder_params(pre, abstract['encoder'])

    def init_params(params, shardings):  # a fresh fine-tune starts from the pre-trained encoder
      placed = shd.place_tree(encoder_params, {k: shardings['encoder'][k] for k in encoder_params})
      return {**params, 'encoder': {**params['encoder'], **placed}}

    stats = pre.method.encoder_variables(pre.params).get('batch_stats')
    if stats is not None:  # and from its BatchNorm running statistics

      def init_extras(extras, shardings):
        fresh_stats = extras['batch_stats']['encoder']
        pretrained_lib.check_same_structure(stats, without_fresh(pre, fresh_stats), 'the BatchNorm statistics')
        placed = shd.place_tree(stats, {k: shardings['batch_stats']['encoder'][k] for k in stats})
        batch_stats = {**extras['batch_stats'], 'encoder': {**fresh_stats, **placed}}
        return {**extras, 'batch_stats': batch_stats}

  mesh_cfg = dict(config.get('mesh', None) or {})
  ck = config.checkpoint
  origin = 'random init' if pre.step is None else f'{pre.config.method}, step {pre.step}'
  description = (f'fine-tune {pre.source} ({origin}) on {info.name}: {num_classes} '
                 f'classes, {total} steps ({total / steps_per_epoch:.1f} epochs of {steps_per_epoch} steps), '
                 f'{warmup} warmup, lr = base_lr {opt.base_lr:g} x batch {config.batch_size} / 256 = {peak:.3e}, '
                 f'layer decay {opt.get("layer_decay", 1.0)}, drop path {config.get("drop_path", 0.0)}, random '
                 f'erasing {objective.erasing_prob}, {mix}'
                 + (f', {len(subset)} of {subset.split_size} training examples ({subset.kind}, seed {subset.seed})'
                    if subset.indices is not None else '')
                 + (f', soft causal mask {dict(config.soft_mask)}' if soft_mask is not None else ''),)
  job = loop.TrainJob(
      objective=objective, data_cfg=data_cfg, data_info=info, batch_size=config.batch_size, total_steps=total,
      tx=tx, schedule=schedule, checkpoint_dir=os.path.join(workdir, 'finetune_checkpoints'), seed=config.seed,
      mesh={'data': mesh_cfg.get('data', -1), 'fsdp': mesh_cfg.get('fsdp', 1), 'rules': mesh_cfg.get('rules')},
      checkpoint_every=ck.every_steps, checkpoint_keep=ck.keep, async_save=ck.get('async_save', True),
      log_every=config.log_every, nonfinite=config.get('nonfinite', 'stop'),
      transfer_guard=config.get('transfer_guard', 'allow'), attention_impl=pre.config.get('attention_impl', 'auto'),
      loss_scaling=state_lib.loss_scaling_from_config(config), metrics_prefix='finetune/',
      log_prefix='fine-tune ', init_params=init_params, init_extras=init_extras, description=description,
      train_indices=subset.indices)
  hooks: list[_EvalHook] = []

  def make_hooks(context):
    every = eval_interval(int(config.get('eval_every_steps', -1)), steps_per_epoch, total)
    hooks.append(_EvalHook(context, objective, every, data_cfg, int(config.get('eval_batch_size', 1024)),
                           config.get('max_eval_examples', None)))
    return hooks

  result = loop.run(job, workdir, make_hooks)
  hook = hooks[0]
  if hook.last is None:  # resumed from a finished run: evaluate the restored params
    hook(total, result.state)
  acc = hook.last
  history = hook.history + _logged_evals(workdir, total)  # evaluations before a resume count for the best too
  _figures(workdir)
  return {
    'finetune/top1': acc['top1'], 'finetune/top5': acc['top5'],
    'finetune/best_top1': max(a for _, a in history), 'finetune/steps': total,
    'finetune/epochs': round(total / steps_per_epoch, 2), 'finetune/peak_lr': peak,
    'finetune/seconds': round(time.perf_counter() - t0, 1),
    'finetune/train_examples': info.num_train,
    'method': 'none' if pre.source == 'random' else pre.config.method, 'init': pre.source,
    'checkpoint_step': pre.step,
  }


def _logged_evals(workdir: str, total: int) -> list[tuple[int, float]]:
  from mim_jax.eval import plots

  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  steps, values = plots.series(plots.read_metrics(path), 'finetune/eval/top1')
  return [(int(s), float(v)) for s, v in zip(steps, values) if s <= total]


def _figures(workdir: str) -> None:
  from mim_jax.eval import plots

  path = os.path.join(workdir, 'metrics.jsonl')
  if jax.process_index() != 0 or not os.path.exists(path):
    return
  try:
    plots.plot_loss_curve(path, os.path.join(workdir, 'finetune_loss.png'), keys=('finetune/train/loss',),
                          lr_key='finetune/train/lr', title='fine-tune')
    plots.plot_probe_curve(path, os.path.join(workdir, 'finetune_accuracy.png'), keys=('finetune/eval/top1',),
                           title='fine-tune eval accuracy')
  except ValueError as e:  # nothing logged yet (a resumed, finished run)
    log(f'no fine-tune figures: {e}')
