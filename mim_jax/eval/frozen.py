"""Linear probe and k-NN on a frozen pre-trained encoder: the ``linear_probe`` and ``knn`` evaluation tasks.

Protocol (MAE, DESIGN.md §3): features computed without masking, the CLS token after the final norm (or the
mean of the patch tokens with ``feature='pooled'``); the probe head is BatchNorm without affine + a linear
layer, trained with LARS at ``lr = base_lr * batch / 256``, per-step warmup then cosine; top-1 / top-5 on the
eval split. The frozen forward pass, the expensive part, runs sharded over the ('data', 'fsdp') mesh like
pre-training.

Two paths:

* ``cache_features=True`` (the fast path; requires ``data.augment='none'``): the train and eval features are
  computed once, then :func:`mim_jax.eval.linear_probe.train_linear_probe` trains the head on them;
* otherwise every step draws an augmented batch (``data.augment``, e.g. RandomResizedCrop + flip), runs the
  frozen encoder and updates the head in one jitted, sharded step.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from mim_jax.data import pipeline, subsets
from mim_jax.eval import knn as knn_lib
from mim_jax.eval import linear_probe as lp
from mim_jax.eval import pretrained as pretrained_lib
from mim_jax.eval import streaming
from mim_jax.train import metrics as metrics_lib
from mim_jax.train import sharding as shd
from mim_jax.utils.logging import log


@dataclasses.dataclass
class FrozenEncoder:
  """The pre-trained method's params placed on the mesh, with its sharded frozen feature."""

  pretrained: pretrained_lib.Pretrained
  mesh: Any
  rules: Any
  features_of: streaming.FrozenFeatures
  num_classes: int

  @property
  def data_cfg(self):
    return self.pretrained.config.data

  @property
  def params(self):
    return self.features_of.params

  def features(self, split: str, max_examples: int | None, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(features [N, D], labels [N])`` of the first ``max_examples`` of ``split`` (eval transform)."""
    return self.features_of.split(self.data_cfg, split, max_examples, batch_size)


def frozen_encoder(config) -> FrozenEncoder:
  pre = pretrained_lib.load(config)
  mesh_cfg = config.get('mesh', None) or {}
  mesh = shd.make_mesh(mesh_cfg.get('data', -1), mesh_cfg.get('fsdp', 1))
  rules = shd.rules_from_config(mesh_cfg.get('rules', None))
  num_classes = pre.info.num_classes
  if not num_classes:
    raise ValueError(f'dataset {pre.info.name!r} has no class labels: probes need a labelled dataset '
                     '(set config.data.name to one).')
  features = streaming.FrozenFeatures(pre.method, pre.params, mesh, rules, config.feature)
  return FrozenEncoder(pre, mesh, rules, features, int(num_classes))


def _check_cache(config) -> None:
  augment = config.data.get('augment', None)
  if config.get('cache_features', False) and augment not in (None, 'none'):
    raise ValueError(f"config.cache_features=True computes each training feature once, so it needs "
                     f"config.data.augment='none' (got {augment!r}); set --config.data.augment=none or "
                     '--config.cache_features=False for the augmented probe.')


def run_linear_probe(config, workdir: str) -> dict[str, Any]:
  """Trains and evaluates the linear probe; returns the flat summary values (fractions in [0, 1])."""
  _check_cache(config)
  t0 = time.perf_counter()
  enc = frozen_encoder(config)
  bs = int(config.get('feature_batch_size', 1024))
  eval_x, eval_y = enc.features(enc.data_cfg.eval_split, config.get('max_eval_examples', None), bs)
  probe = dict(config.linear_probe)
  out: dict[str, Any] = {}
  train = None
  if config.get('cache_features', False):
    train = enc.features(enc.data_cfg.train_split, config.get('max_train_examples', None), bs)
    _check_labels(train[1], eval_y, enc, 'linear probe')
    log(f'linear probe on cached features: {train[0].shape} train, {eval_x.shape} eval')
    res = lp.train_linear_probe(*train, eval_x, eval_y, num_classes=enc.num_classes, seed=config.seed, **probe)
    batch = lp.clip_batch_size(probe.get('batch_size', 16384), len(train[0]), probe.get('min_steps_per_epoch', 4))
  else:
    res, batch = _train_streaming(config, enc, eval_x, eval_y, workdir)
  out.update({'linear_probe/top1': res['top1'], 'linear_probe/top5': res['top5'],
              'linear_probe/feature': config.feature, 'linear_probe/batch_size': int(batch),
              'linear_probe/peak_lr': probe.get('base_lr', 0.1) * batch / 256})
  if config.get('knn', {}).get('enabled', False):
    if train is None:
      train = enc.features(enc.data_cfg.train_split, config.get('max_train_examples', None), bs)
    out.update(_knn(config, enc, train, (eval_x, eval_y)))
  out['linear_probe/seconds'] = round(time.perf_counter() - t0, 1)
  return {**out, **_provenance(enc), **streaming.subset_summary(enc.data_cfg, 'linear_probe',
                                                                  config.get('max_train_examples', None),
                                                                  config.get('max_eval_examples', None))}


def run_knn(config, workdir: str) -> dict[str, Any]:
  """Weighted k-NN (k, temperature from ``config.knn``) on the frozen features."""
  del workdir
  t0 = time.perf_counter()
  enc = frozen_encoder(config)
  bs = int(config.get('feature_batch_size', 1024))
  train = enc.features(enc.data_cfg.train_split, config.get('max_train_examples', None), bs)
  test = enc.features(enc.data_cfg.eval_split, config.get('max_eval_examples', None), bs)
  out = _knn(config, enc, train, test)
  out['knn/seconds'] = round(time.perf_counter() - t0, 1)
  return {**out, **_provenance(enc), **streaming.subset_summary(enc.data_cfg, 'knn',
                                                                  config.get('max_train_examples', None),
                                                                  config.get('max_eval_examples', None))}


def _check_labels(train_labels, eval_labels, enc: FrozenEncoder, what: str) -> None:
  for warning in subsets.check_labels(train_labels, eval_labels, enc.num_classes, what):
    log(warning)


def _knn(config, enc: FrozenEncoder, train, test) -> dict[str, Any]:
  _check_labels(train[1], test[1], enc, 'k-NN')
  k, temperature = int(config.knn.get('k', 20)), float(config.knn.get('temperature', 0.07))
  res = knn_lib.knn_classify(*train, *test, num_classes=enc.num_classes, k=k, temperature=temperature)
  return {'knn/top1': res['top1'], 'knn/top5': res['top5'], 'knn/k': k, 'knn/temperature': temperature}


def _augmented(method):
  """The augmented probe's train records: the method's eval form when it builds its own (video, points, ...),
  else the default image transform with the probe's ``data.augment``."""

  def transform(data_cfg, source, train):
    del train
    return method.record_transform(data_cfg, source, False)

  return transform


def _provenance(enc: FrozenEncoder) -> dict[str, Any]:
  pre = enc.pretrained
  # A random-init baseline has no pre-training method: 'none' keeps report rows from suggesting one.
  method = 'none' if pre.source == 'random' else pre.config.method
  return {'method': method, 'init': pre.source, 'checkpoint_step': pre.step}


def _train_streaming(config, enc: FrozenEncoder, eval_x, eval_y, workdir: str):
  """The augmented probe: every step runs the frozen encoder on a fresh augmented batch (sharded)."""
  cfg = dict(config.linear_probe)
  info = pipeline.dataset_info(enc.data_cfg)
  batch = streaming.fit_batch(lp.clip_batch_size(cfg.get('batch_size', 16384), info.num_train,
                                                 cfg.get('min_steps_per_epoch', 4)), info.num_train, enc.mesh)
  steps_per_epoch = info.num_train // batch
  epochs = cfg.get('epochs', 90)
  total = max(1, int(round(epochs * steps_per_epoch)))
  schedule = lp.probe_schedule(cfg.get('base_lr', 0.1), batch, steps_per_epoch, epochs,
                               cfg.get('warmup_epochs', 10), cfg.get('min_lr', 0.0))
  tx = lp.probe_optimizer(cfg.get('optimizer', 'lars'), schedule, momentum=cfg.get('momentum', 0.9),
                          weight_decay=cfg.get('weight_decay', 0.0),
                          trust_coefficient=cfg.get('trust_coefficient', 0.001))
  head = lp.LinearProbeHead(enc.num_classes, bn_epsilon=cfg.get('bn_epsilon', 1e-6),
                            init_std=cfg.get('head_init_std', 0.01))
  state = lp.init_probe(head, tx, eval_x.shape[1], config.seed)
  probe_step = lp.make_probe_train_step(head, tx)
  method = enc.pretrained.method

  def step(state, params, batch):
    feats = jax.lax.stop_gradient(method.feature(params, batch, config.feature))
    return probe_step(state, feats, batch['label'])

  rep = shd.replicated(enc.mesh)
  enc_shardings = jax.tree.map(lambda x: x.sharding, enc.params)
  jitted = jax.jit(step, in_shardings=(rep, enc_shardings, shd.batch_sharding(enc.mesh)),
                   out_shardings=(rep, rep), donate_argnums=(0,))
  state = jax.device_put(state, rep)
  procs = jax.process_count()
  iterator = pipeline.train_iterator(enc.data_cfg, batch // procs, seed=config.seed,
                                     process_index=jax.process_index(), process_count=procs,
                                     fields=method.batch_fields(False), record_transform=_augmented(method))
  log(f'linear probe (augment={enc.data_cfg.augment!r}): {total} steps of batch {batch} '
      f'({epochs} epochs), peak lr {cfg.get("base_lr", 0.1) * batch / 256:.3g}')
  writer = metrics_lib.MetricWriter(workdir)
  every = int(config.get('log_every', 100))
  losses = []
  try:
    for i in range(total):
      with jax.set_mesh(enc.mesh), nn.logical_axis_rules(enc.rules):
        state, loss = jitted(state, enc.params, shd.global_batch(next(iterator), enc.mesh))
      losses.append(loss)
      if (i + 1) % every == 0 or i + 1 == total:
        mean_loss = float(np.mean(jax.device_get(losses)))
        losses = []
        if not math.isfinite(mean_loss):
          raise FloatingPointError(f'linear probe diverged at step {i + 1} (loss {mean_loss}); lower '
                                   'config.linear_probe.base_lr')
        writer.write(i + 1, {'linear_probe/train_loss': mean_loss, 'linear_probe/lr': float(schedule(i))})
        log(f'linear probe step {i + 1}/{total}: loss {mean_loss:.4f}')
  finally:
    writer.close()
  logits = lp.probe_logits(head, jax.device_get(state), eval_x)
  return lp.topk_accuracy(logits, eval_y), batch
