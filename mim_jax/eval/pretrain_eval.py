"""Evaluation at the end of pre-training: frozen-feature probes for the pre-trained encoder and, as the
baseline, for a randomly initialised encoder of the same architecture; a raw-pixel baseline; a reconstruction
figure. Writes everything into the workdir's flat ``summary.json``.

Keys (fractions in [0, 1]): ``linear_probe/top1`` (the MAE probe head: BatchNorm without affine + linear,
LARS), ``knn/top1`` (k=20, T=0.07), ``logreg/top1`` (scikit-learn logistic regression), each also under
``random_init/``; ``raw_pixels/logreg/top1``.

Figures: ``reconstruction.png``, ``loss_curve.png`` (train loss, monitored losses, lr) and, when accuracy
monitors ran, ``probe_accuracy.png`` (their accuracies against the step, with the final probes as last points);
the final accuracies are also appended to metrics.jsonl / TensorBoard as ``eval/...`` at the last step.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.data import pipeline
from mim_jax.eval import knn as knn_lib
from mim_jax.eval import linear_probe as lp
from mim_jax.eval import plots
from mim_jax.eval.features import extract_features
from mim_jax.eval.visualize import reconstruction_figure


def config_hash(config) -> str:
  return hashlib.sha256(config.to_json(sort_keys=True).encode()).hexdigest()[:12]


def encoder_features(method, params, images: np.ndarray, feature: str, batch_size: int = 256) -> np.ndarray:
  """Frozen features without masking: 'cls' (after the final norm) or 'pooled' (mean of patch tokens)."""
  fn = jax.jit(lambda p, x: method.encode(p, x)[feature].astype(jnp.float32))
  return extract_features(lambda x: fn(params, x), images, batch_size, jit=False, desc=f'{feature} features')


def probe_all(train_x, train_y, test_x, test_y, num_classes: int, cfg, seed: int) -> dict[str, float]:
  lin = lp.train_linear_probe(train_x, train_y, test_x, test_y, num_classes=num_classes,
                              epochs=cfg.linear_probe.epochs, batch_size=cfg.linear_probe.batch_size,
                              base_lr=cfg.linear_probe.base_lr, warmup_epochs=cfg.linear_probe.warmup_epochs,
                              seed=seed)
  knn = knn_lib.knn_classify(train_x, train_y, test_x, test_y, num_classes=num_classes, k=cfg.knn.k,
                             temperature=cfg.knn.temperature)
  logreg = lp.logistic_regression_probe(train_x, train_y, test_x, test_y)
  return {'linear_probe/top1': lin['top1'], 'linear_probe/top5': lin['top5'], 'knn/top1': knn['top1'],
          'logreg/top1': logreg['top1']}


def evaluate_pretrained(config, workdir: str, method, params, step: int) -> dict:
  """Runs the configured evaluations; returns (and writes) the summary values."""
  from mim_jax.train.loop import log, update_summary

  cfg = config.eval
  t0 = time.perf_counter()
  train = pipeline.eval_arrays(config.data, split=config.data.train_split, max_examples=cfg.max_train_examples)
  test = pipeline.eval_arrays(config.data, split=config.data.eval_split, max_examples=cfg.max_eval_examples)
  if train['label'] is None or np.all(train['label'] < 0):
    log('The dataset has no labels: skipping probes.')
    return {}
  num_classes = int(max(train['label'].max(), test['label'].max()) + 1)
  results: dict[str, float] = {}
  feats = {k: encoder_features(method, params, d['image'], cfg.feature) for k, d in (('train', train), ('test', test))}
  results.update(probe_all(feats['train'], train['label'], feats['test'], test['label'], num_classes, cfg,
                           config.seed))
  if cfg.random_init_baseline:
    random_params, _ = method.init(jax.random.PRNGKey(config.seed + 1), jnp.asarray(train['image'][:2]))
    import flax.linen as nn
    random_params = nn.meta.unbox(random_params)
    rfeats = {k: encoder_features(method, random_params, d['image'], cfg.feature)
              for k, d in (('train', train), ('test', test))}
    rand = probe_all(rfeats['train'], train['label'], rfeats['test'], test['label'], num_classes, cfg, config.seed)
    results.update({f'random_init/{k}': v for k, v in rand.items()})
  raw = lp.logistic_regression_probe(train['image'].reshape(len(train['image']), -1), train['label'],
                                     test['image'].reshape(len(test['image']), -1), test['label'])
  results['raw_pixels/logreg/top1'] = raw['top1']

  if cfg.figure:
    try:
      out = method.reconstruct(params, jnp.asarray(test['image'][:8]), jax.random.PRNGKey(config.seed))
      info = pipeline.dataset_info(config.data)
      path = os.path.join(workdir, 'reconstruction.png')
      if jax.process_index() == 0:
        reconstruction_figure(test['image'][:8], np.asarray(out['pred_images']), np.asarray(out['mask_images']),
                              path, mean=info.mean, std=info.std, title=f'{config.method} step {step}')
      results['figure'] = os.path.basename(path)
    except NotImplementedError:
      pass
  summary = {**results, 'method': config.method, 'checkpoint_step': int(step), 'config_hash': config_hash(config),
             'eval/feature': cfg.feature, 'eval/seconds': round(time.perf_counter() - t0, 1)}
  summary.update(run_figures(workdir, step, results))
  update_summary(workdir, summary)
  log('Evaluation (frozen encoder, %s feature) at step %d:\n%s' % (cfg.feature, step, json.dumps(
      {k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}, indent=2)))
  return summary


def run_figures(workdir: str, step: int, results: dict) -> dict[str, str]:
  """Logs the final probe accuracies to metrics.jsonl (as ``eval/...`` at the last step) and draws
  ``loss_curve.png`` (train loss, validation loss if monitored, lr) and ``probe_accuracy.png`` (the online
  monitors' accuracies over the run, with the final probes as the last points). Returns the file names drawn."""
  from mim_jax.train.loop import log
  from mim_jax.train.metrics import MetricWriter

  accuracies = {f'eval/{k}': v for k, v in results.items() if isinstance(v, float) and k.endswith(('top1', 'top5'))}
  if accuracies:
    writer = MetricWriter(workdir)
    writer.write(step, accuracies)
    writer.close()
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  out: dict[str, str] = {}
  if jax.process_index() != 0 or not os.path.exists(metrics_path):
    return out
  figures = [('figures/loss_curve', 'loss_curve.png', plots.plot_loss_curve,
              {'keys': ('train/loss', 'monitor/*loss')})]
  rows = plots.read_metrics_jsonl(metrics_path)
  if any(k.startswith('monitor/') and k.endswith('top1') for row in rows for k in row):
    figures.append(('figures/probe_accuracy', 'probe_accuracy.png', plots.plot_probe_curve,
                    {'keys': ('monitor/*top1', 'eval/linear_probe/top1', 'eval/knn/top1')}))
  else:  # the final probes alone are one point each: nothing to see against the step
    log('probe_accuracy.png not drawn: no accuracy monitors in this run (add config.monitors.knn, see '
        'mim_jax/eval/monitors.py).')
  for key, name, draw, kwargs in figures:
    try:
      draw(metrics_path, os.path.join(workdir, name), **kwargs)
      out[key] = name
    except ValueError as e:  # e.g. no monitors configured: nothing to draw against the step
      log(f'{name} not drawn: {e}')
  return out
