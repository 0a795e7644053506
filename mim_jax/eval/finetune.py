"""Full fine-tuning of a pre-trained encoder with a new classification head: the ``finetune`` evaluation task.

The MAE fine-tune recipe (DESIGN.md §3; He et al. 2022, A.3):

* model: the pre-trained ViT without masking, drop path (stochastic depth, linearly increasing to
  ``drop_path`` over the blocks), then the global average of the patch tokens, ``fc_norm`` (LayerNorm, eps
  1e-6) and a linear head (weights ``trunc_normal(2e-5)``, bias 0). With global pooling the encoder's final norm
  is not used (``fc_norm`` replaces it), as in the reference; ``global_pool=False`` uses the normed CLS token;
* AdamW (0.9, 0.999), weight decay 0.05 except 1-D params, biases and the CLS token, layer-wise lr decay
  (:mod:`mim_jax.eval.layer_decay`: ``decay ** (depth + 1 - layer_id)``), ``lr = base_lr * batch / 256``,
  per-step warmup then cosine to ``min_lr``;
* train augmentation from the data pipeline (``data.augment``; the ImageNet recipes use 'rrc_flip_randaug',
  :mod:`mim_jax.eval.randaugment`), random erasing 0.25 (:mod:`mim_jax.eval.random_erasing`), then Mixup 0.8 /
  CutMix 1.0 with label smoothing 0.1 (:mod:`mim_jax.eval.mixup`), soft-target cross-entropy; eval resize +
  center crop;
* top-1 / top-5 on the eval split every ``eval_every_steps`` and at the end.

The state, its sharding, the jitted step (with donation and the non-finite guard) and the checkpoints are the
pre-training ones (:mod:`mim_jax.train`), so fine-tuning scales and resumes the same way.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mim_jax.data import pipeline
from mim_jax.eval import layer_decay
from mim_jax.eval import mixup as mixup_lib
from mim_jax.eval import pretrained as pretrained_lib
from mim_jax.eval import streaming
from mim_jax.eval.random_erasing import random_erasing
from mim_jax.eval.linear_probe import topk_accuracy
from mim_jax.models.vit import EMBED, ViTEncoder, dtype_from_name
from mim_jax.train import checkpoint as ckpt_lib
from mim_jax.train import metrics as metrics_lib
from mim_jax.train import optim
from mim_jax.train import sharding as shd
from mim_jax.train import state as state_lib
from mim_jax.utils import tree_paths

NO_WEIGHT_DECAY = ('cls_token', 'pos_embed', 'dist_token')  # the reference ViT's no_weight_decay()


def log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


class Classifier(nn.Module):
  """ViT encoder + (global average pool + fc_norm | CLS) + linear head. Params: encoder, fc_norm, head."""

  encoder: ViTEncoder
  num_classes: int
  global_pool: bool = True
  head_init_std: float = 2e-5

  @nn.compact
  def __call__(self, images: jax.Array, deterministic: bool = True) -> jax.Array:
    tokens = self.encoder(images, deterministic=deterministic)
    if self.global_pool:
      x = tokens[:, 1:].mean(axis=1)
      x = nn.LayerNorm(epsilon=1e-6, dtype=jnp.float32, use_fast_variance=False,
                       scale_init=nn.with_logical_partitioning(nn.initializers.ones, (EMBED,)),
                       bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (EMBED,)),
                       name='fc_norm')(x)
    else:
      x = tokens[:, 0]
    head_init = nn.initializers.truncated_normal(self.head_init_std)
    return nn.Dense(self.num_classes, dtype=jnp.float32,
                    kernel_init=nn.with_logical_partitioning(head_init, (EMBED, None)),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
                    name='head')(x.astype(jnp.float32))


class FinetuneObjective:
  """Fine-tuning in the trainer's method interface (``init`` / ``loss_fn``), so the pre-training train state,
  sharded init, jitted step and checkpoints are reused unchanged."""

  name = 'finetune'

  def __init__(self, model: Classifier, mix: mixup_lib.MixupConfig, erasing_prob: float = 0.0):
    self.model = model
    self.mix = mix
    self.erasing_prob = float(erasing_prob)

  def init(self, rng, images):
    return self.model.init({'params': rng, 'dropout': rng}, images)['params'], {}

  def loss_fn(self, params, extras, batch, rng, step):
    del step
    erase_rng, mix_rng, drop_rng = jax.random.split(rng, 3)
    images, _ = random_erasing(erase_rng, batch['image'], self.erasing_prob)  # per image, before mixing (timm)
    images, targets, info = mixup_lib.mix_batch(mix_rng, images, batch['label'], self.model.num_classes, self.mix)
    logits = self.model.apply({'params': params}, images, deterministic=False, rngs={'dropout': drop_rng})
    loss = mixup_lib.soft_cross_entropy(logits, targets)
    return loss, ({'loss': loss, 'mix_lam': info['lam']}, extras)

  def logits(self, params, images):
    return self.model.apply({'params': params}, images, deterministic=True)


def weight_decay_mask(params):
  """True where the reference fine-tune decays: more than one dimension, not a bias, not CLS / position tokens."""

  def decayed(path, p):
    names = [tree_paths.key_name(k) for k in path]
    named = [n for n in names if n != 'value']  # a logical-partitioning box adds a 'value' step
    return p.ndim > 1 and named[-1] != 'bias' and not any(n in NO_WEIGHT_DECAY for n in named)

  return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(opt_cfg, schedule, multipliers) -> optax.GradientTransformation:
  """AdamW with the fine-tune decay mask, optional clipping, then the layer-decay lr multipliers."""
  parts = []
  if opt_cfg.get('grad_clip_norm', None):
    parts.append(optax.clip_by_global_norm(opt_cfg.grad_clip_norm))
  parts.append(optax.adamw(schedule, b1=opt_cfg.get('b1', 0.9), b2=opt_cfg.get('b2', 0.999),
                           eps=opt_cfg.get('eps', 1e-8), weight_decay=opt_cfg.get('weight_decay', 0.05),
                           mask=weight_decay_mask))
  parts.append(layer_decay.scale_by_multipliers(multipliers))
  return optax.chain(*parts)


def build_model(config, pre: pretrained_lib.Pretrained, num_classes: int) -> Classifier:
  global_pool = bool(config.get('global_pool', True))
  encoder = pre.method.encoder_module().clone(
    drop_path=float(config.get('drop_path', 0.0)), use_mask_token=False, final_norm=not global_pool,
    dtype=dtype_from_name(config.get('compute_dtype', 'float32')), remat=config.get('remat', 'none'))
  return Classifier(encoder, num_classes, global_pool, float(config.get('head_init_std', 2e-5)))


def pretrained_encoder_params(pre: pretrained_lib.Pretrained, model: Classifier) -> dict:
  """The pre-trained encoder params the classifier uses: the mask token (pre-training only) and, with global
  pooling, the final norm (replaced by fc_norm) are dropped, as the reference does."""
  params = dict(pre.encoder_params())
  params.pop('mask_token', None)
  if not model.encoder.final_norm:
    params.pop('norm', None)
  return params


def resolve_steps(config, num_train: int, batch: int) -> tuple[int, int, int]:
  steps_per_epoch = max(1, num_train // batch)
  total = config.get('total_steps', -1)
  total = total if total and total > 0 else int(round(config.epochs * steps_per_epoch))
  warm = config.get('warmup_steps', -1)
  warm = warm if warm is not None and warm >= 0 else int(round(config.warmup_epochs * steps_per_epoch))
  if total < 1:
    raise ValueError('the fine-tune has no steps: set config.epochs > 0 or config.total_steps > 0.')
  return total, min(warm, total), steps_per_epoch


def eval_interval(eval_every_steps: int, steps_per_epoch: int, total: int) -> int:
  """Steps between evaluations: -1 (any negative) once per epoch, 0 only at the end, else as given."""
  if eval_every_steps < 0:
    return steps_per_epoch
  return eval_every_steps or total


def run(config, workdir: str) -> dict[str, Any]:
  """Fine-tunes and evaluates; returns the flat summary values (fractions in [0, 1])."""
  t0 = time.perf_counter()
  pre = pretrained_lib.load(config)
  data_cfg = pre.config.data
  info = pipeline.dataset_info(data_cfg)
  if not info.num_classes:
    raise ValueError(f'dataset {info.name!r} has no class labels; set config.data.name to a labelled dataset.')
  num_classes = int(info.num_classes)
  mesh_cfg = config.get('mesh', None) or {}
  mesh = shd.make_mesh(mesh_cfg.get('data', -1), mesh_cfg.get('fsdp', 1))
  rules = shd.rules_from_config(mesh_cfg.get('rules', None))
  shd.check_batch_divisible(config.batch_size, mesh)
  if config.batch_size > info.num_train:
    raise ValueError(f'config.batch_size={config.batch_size} is larger than the {info.num_train} training '
                     'examples; lower it.')

  model = build_model(config, pre, num_classes)
  mix = mixup_lib.MixupConfig(**dict(config.get('mixup', None) or {}))
  objective = FinetuneObjective(model, mix, config.get('random_erasing', 0.0))
  total, warmup, steps_per_epoch = resolve_steps(config, info.num_train, config.batch_size)
  opt = config.optimizer
  peak = optim.scaled_lr(opt.base_lr, config.batch_size)
  schedule = optim.warmup_cosine(peak, total, warmup, opt.get('min_lr', 0.0))
  example = jnp.zeros((2, *info.image_shape), jnp.float32)
  abstract = nn.meta.unbox(jax.eval_shape(objective.init, jax.random.PRNGKey(0), example)[0])
  multipliers = layer_decay.layer_decay_multipliers(abstract, model.encoder.depth, opt.get('layer_decay', 1.0))
  tx = make_optimizer(opt, schedule, multipliers)

  rng = jax.random.PRNGKey(config.seed)
  init_rng, base_rng = jax.random.split(rng)
  loss_scaling = state_lib.loss_scaling_from_config(config)  # compute_dtype='float16': dynamic loss scaling
  state, shardings = state_lib.create_sharded_state(state_lib.make_init_fn(objective, tx, example, loss_scaling),
                                                    init_rng, mesh, rules)
  if pre.source != 'random':
    encoder_params = pretrained_encoder_params(pre, model)
    pretrained_lib.check_same_structure(encoder_params, state.params['encoder'], 'the pre-trained encoder')
    encoder = streaming.put_params(encoder_params, shardings.params['encoder'])
    state = state.replace(params={**state.params, 'encoder': encoder})

  per_host = config.batch_size // jax.process_count()
  iterator = pipeline.train_iterator(data_cfg, per_host, seed=config.seed, process_index=jax.process_index(),
                                     process_count=jax.process_count())
  ck = config.checkpoint
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, 'finetune_checkpoints'), every_steps=ck.every_steps,
                                       keep=ck.keep, async_save=ck.get('async_save', True))
  start_step = checkpointer.latest_step()
  if start_step is not None:
    state = checkpointer.restore(start_step, ckpt_lib.abstract_like(state, shardings), iterator)
    log(f'Resumed the fine-tune from {checkpointer.directory}/{start_step}.')
  log(f'fine-tune {pre.source} ({pre.config.method}, step {pre.step}) on {info.name}: {num_classes} classes, '
      f'{total} steps ({total / steps_per_epoch:.1f} epochs of {steps_per_epoch} steps), {warmup} warmup, '
      f'lr = base_lr {opt.base_lr:g} x batch {config.batch_size} / 256 = {peak:.3e}, layer decay '
      f'{opt.get("layer_decay", 1.0)}, drop path {model.encoder.drop_path}, random erasing '
      f'{objective.erasing_prob}, {mix}')

  step_fn = state_lib.jit_train_step(state_lib.make_train_step(objective, tx, schedule, loss_scaling), shardings,
                                     mesh, rules)
  forward = streaming.jit_forward(objective.logits, shardings.params, mesh, rules)
  eval_batch = int(config.get('eval_batch_size', 1024))

  def evaluate(params) -> dict[str, float]:
    batches = streaming.eval_batches(data_cfg, data_cfg.eval_split, eval_batch, mesh,
                                     config.get('max_eval_examples', None))
    logits, labels = streaming.gather(forward, params, batches)
    return topk_accuracy(logits, labels)

  writer = metrics_lib.MetricWriter(workdir)
  progress = metrics_lib.Progress(total, config.batch_size, int(state.step))
  every_eval = eval_interval(int(config.get('eval_every_steps', -1)), steps_per_epoch, total)
  history: list[tuple[int, float]] = []
  pending: list[dict] = []
  try:
    for step in range(int(state.step), total):
      state, m = step_fn(state, shd.global_batch(next(iterator), mesh), base_rng)
      pending.append(m)
      done = step + 1
      if done % config.log_every == 0 or done == total:
        rows = jax.device_get(pending)
        pending = []
        avg = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        img_s, steps_s = progress.rate(done)
        writer.write(done, {f'finetune/{k}': v for k, v in avg.items()})
        log('fine-tune ' + progress.line(done, avg, img_s, steps_s))
        if not math.isfinite(avg['train/loss']) or int(state.nonfinite_steps):
          raise FloatingPointError(f'fine-tune loss is not finite at step {done}; lower config.optimizer.base_lr '
                                   'or set config.optimizer.grad_clip_norm.')
      if done % every_eval == 0 or done == total:
        acc = evaluate(state.params)
        history.append((done, acc['top1']))
        writer.write(done, {'finetune/eval/top1': acc['top1'], 'finetune/eval/top5': acc['top5']})
        log(f'fine-tune step {done}: eval top-1 {100 * acc["top1"]:.2f}%, top-5 {100 * acc["top5"]:.2f}%')
      if checkpointer.manager.should_save(done) and done != total:
        checkpointer.save(done, state, iterator)
    if start_step is None or start_step < total:
      checkpointer.save(total, state, iterator, force=True)
    checkpointer.wait()
  finally:
    checkpointer.close()
    writer.close()
  if not history:  # resumed from a finished run: evaluate the restored params
    acc = evaluate(state.params)
    history.append((total, acc['top1']))
  history += _logged_evals(workdir, total)  # evaluations before a resume count for the best too
  _figures(workdir)
  return {
    'finetune/top1': acc['top1'], 'finetune/top5': acc['top5'],
    'finetune/best_top1': max(a for _, a in history), 'finetune/steps': total,
    'finetune/epochs': round(total / steps_per_epoch, 2), 'finetune/peak_lr': peak,
    'finetune/seconds': round(time.perf_counter() - t0, 1),
    'method': 'none' if pre.source == 'random' else pre.config.method, 'init': pre.source,
    'checkpoint_step': pre.step,
  }


def _logged_evals(workdir: str, total: int) -> list[tuple[int, float]]:
  from mim_jax.eval import plots

  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  steps, values = plots.series(plots.read_metrics_jsonl(path), 'finetune/eval/top1')
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
