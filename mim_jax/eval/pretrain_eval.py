"""Evaluation at the end of pre-training: frozen-feature probes for the pre-trained encoder and, as the
baseline, for a randomly initialised encoder of the same architecture; a raw-pixel baseline where it makes
sense; a reconstruction figure. Writes everything into the workdir's flat ``summary.json``.

Keys (fractions in [0, 1]): ``linear_probe/top1`` (the MAE probe head: BatchNorm without affine + linear,
LARS), ``knn/top1`` (k=20, T=0.07), ``logreg/top1`` (scikit-learn logistic regression), each also under
``random_init/``; ``knn_{n}shot/top1`` and ``knn_{n}shot/top1_std``, the few-label k-NN (``eval.knn.labels_per_class``
= n labelled images per class, mean and std over ``eval.knn.label_draws`` draws; also under ``random_init/`` and
``raw_pixels/``); ``raw_pixels/logreg/top1`` and ``raw_pixels/knn/top1`` when an image has at most
``eval.raw_pixels_max_features`` values.

The features stream through the method (``method.feature``) sharded over the run's mesh, from at most
``eval.max_train_examples`` / ``eval.max_eval_examples`` images of each split: only the ``[N, D]`` features are
held on the host, never the images, so the same code serves the digits and ImageNet recipes.

Figures: ``reconstruction.png``, ``loss_curve.png`` (train loss, monitored losses, lr) and, when accuracy
monitors ran, ``probe_accuracy.png`` (their accuracies against the step, with the final probes as last points);
the final accuracies are also appended to metrics.jsonl / TensorBoard as ``eval/...`` at the last step.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import flax.linen as nn
import jax
import numpy as np

from mim_jax import workdir as workdir_lib
from mim_jax.data import pipeline, subsets
from mim_jax.eval import knn as knn_lib
from mim_jax.eval import linear_probe as lp
from mim_jax.eval import plots
from mim_jax.eval import streaming, two_view
from mim_jax.eval.visualize import reconstruction_figure
from mim_jax.methods.base import reconstructs
from mim_jax.train import metrics as metrics_lib
from mim_jax.train import sharding as shd
from mim_jax.utils.logging import log

FEATURE_BATCH = 256  # global batch of the frozen forward pass


def config_hash(config) -> str:
  return hashlib.sha256(config.to_json(sort_keys=True).encode()).hexdigest()[:12]


def probe_all(train_x, train_y, test_x, test_y, num_classes: int, cfg, seed: int) -> dict[str, float]:
  lin = lp.train_linear_probe(train_x, train_y, test_x, test_y, num_classes=num_classes,
                              epochs=cfg.linear_probe.epochs, batch_size=cfg.linear_probe.batch_size,
                              base_lr=cfg.linear_probe.base_lr, warmup_epochs=cfg.linear_probe.warmup_epochs,
                              seed=seed)
  knn = knn_lib.knn_classify(train_x, train_y, test_x, test_y, num_classes=num_classes, k=cfg.knn.k,
                             temperature=cfg.knn.temperature)
  logreg = lp.logistic_regression_probe(train_x, train_y, test_x, test_y)
  return {'linear_probe/top1': lin['top1'], 'linear_probe/top5': lin['top5'], 'knn/top1': knn['top1'],
          'logreg/top1': logreg['top1'], **few_label(train_x, train_y, test_x, test_y, num_classes, cfg)}


def few_label(train_x, train_y, test_x, test_y, num_classes: int, cfg) -> dict[str, float]:
  """``knn_{n}shot/top1`` (and ``_std``): the k-NN with ``eval.knn.labels_per_class`` labelled images per class,
  over ``eval.knn.label_draws`` draws (seeded by ``eval.knn.label_seed``: the same images for every encoder)."""
  n = int(cfg.knn.get('labels_per_class', 0))  # workdirs written before the field existed: off
  if n <= 0:
    return {}
  out = knn_lib.few_label_knn(train_x, train_y, test_x, test_y, labels_per_class=n,
                              draws=int(cfg.knn.get('label_draws', 5)), seed=int(cfg.knn.get('label_seed', 0)),
                              num_classes=num_classes, k=cfg.knn.k, temperature=cfg.knn.temperature)
  return {f'knn_{n}shot/top1': out['top1'], f'knn_{n}shot/top1_std': out['top1_std']}


def _split_features(features: streaming.FrozenFeatures, config):
  cfg = config.eval
  train = features.split(config.data, config.data.train_split, cfg.max_train_examples, FEATURE_BATCH)
  test = features.split(config.data, config.data.eval_split, cfg.max_eval_examples, FEATURE_BATCH)
  return train, test


def _raw_pixels(config, method, mesh, rules, num_classes: int) -> dict[str, float]:
  """Logistic regression and k-NN on the raw (normalized) pixels of the single-image eval batch, where an image has
  few enough values for that to be a baseline (the digits' 256) rather than a 150,528-feature fit (ImageNet)."""
  fields = method.batch_fields(False)
  limit = int(config.eval.get('raw_pixels_max_features', 4096))  # workdirs written before the field existed
  if 'image' not in fields or int(np.prod(fields['image'].shape)) > limit:
    return {}
  cfg = config.eval

  def pixels(_, batch):
    return batch['image'].reshape(batch['image'].shape[0], -1)

  forward = streaming.jit_forward(pixels, None, mesh, rules)
  data = {}
  for name, split, cap in (('train', config.data.train_split, cfg.max_train_examples),
                           ('test', config.data.eval_split, cfg.max_eval_examples)):
    batches = streaming.eval_batches(config.data, split, FEATURE_BATCH, mesh, cap, fields=fields,
                                     record_transform=method.record_transform)
    data[name] = streaming.gather(forward, None, batches)
  raw = lp.logistic_regression_probe(*data['train'], *data['test'])
  # the same k-NN as on the encoder's features (cosine, k, temperature)
  knn = knn_lib.knn_classify(*data['train'], *data['test'], num_classes=num_classes, k=cfg.knn.k,
                             temperature=cfg.knn.temperature)
  few = {f'raw_pixels/{k}': v for k, v in few_label(*data['train'], *data['test'], num_classes, cfg).items()}
  return {'raw_pixels/logreg/top1': raw['top1'], 'raw_pixels/knn/top1': knn['top1'], **few}


def _probes(config, method, params, mesh, rules, num_classes: int) -> dict[str, float]:
  """The frozen-feature probes (and their random-init and raw-pixel baselines) on a labelled dataset."""
  cfg = config.eval
  results: dict[str, float] = {}
  (train_x, train_y), (test_x, test_y) = _split_features(
      streaming.FrozenFeatures(method, params, mesh, rules, cfg.feature), config)
  for warning in subsets.check_labels(train_y, test_y, num_classes, 'end-of-training probes'):
    log(warning)
  results.update(probe_all(train_x, train_y, test_x, test_y, num_classes, cfg, config.seed))
  if cfg.random_init_baseline:
    # Eager, not jitted: XLA fuses the initializers' arithmetic differently (values differ in the last bit).
    random_params, random_extras = method.init(jax.random.PRNGKey(config.seed + 1), method.example_batch(2))
    random_params = method.eval_params(nn.meta.unbox(random_params), random_extras)
    random = streaming.FrozenFeatures(method, jax.device_get(random_params), mesh, rules, cfg.feature)
    (rtrain_x, _), (rtest_x, _) = _split_features(random, config)
    rand = probe_all(rtrain_x, train_y, rtest_x, test_y, num_classes, cfg, config.seed)
    results.update({f'random_init/{k}': v for k, v in rand.items()})
  results.update(_raw_pixels(config, method, mesh, rules, num_classes))
  return results


def evaluate_pretrained(config, workdir: str, method, params, step: int, mesh=None, rules=None) -> dict:
  """Runs the configured evaluations on ``params`` (host arrays, or the train state's on ``mesh``); returns
  (and writes) the summary values."""
  cfg = config.eval
  t0 = time.perf_counter()
  if mesh is None:
    mesh = shd.make_mesh(config.mesh.data, config.mesh.fsdp)
    rules = shd.rules_from_config(config.mesh.get('rules', None))
  info = pipeline.dataset_info(config.data)
  if not info.num_classes and not hasattr(method, 'reconstruct_pair'):
    log('The dataset has no labels: skipping probes.')
    return {}
  params, _ = streaming.place_params(method, params, mesh, rules)
  results: dict = {}
  if info.num_classes:
    results.update(_probes(config, method, params, mesh, rules, int(info.num_classes)))
  else:  # unlabelled pairs (the stereo dataset): the figure only
    log('The dataset has no labels: skipping probes.')
  if cfg.figure and hasattr(method, 'reconstruct_pair'):  # two views: held-out pairs from the eval split
    test = two_view.held_out_pairs(config.data, method.pairs, 8, seed=config.seed)
    with nn.logical_axis_rules(rules), jax.set_mesh(mesh):
      out = jax.jit(method.reconstruct_pair, out_shardings=shd.replicated(mesh))(
          params, test['view1'], test['view2'], jax.random.PRNGKey(config.seed))
    path = os.path.join(workdir, 'reconstruction.png')
    if jax.process_index() == 0:
      reconstruction_figure(test['view1'], np.asarray(out['pred_images']), np.asarray(out['mask_images']), path,
                            mean=info.mean, std=info.std, title=f'{config.method} step {step}',
                            reference=test['view2'])
    results['figure'] = os.path.basename(path)
  elif cfg.figure and reconstructs(method):
    test = pipeline.eval_arrays(config.data, split=config.data.eval_split, max_examples=8,
                                fields=method.batch_fields(False), record_transform=method.record_transform)
    with nn.logical_axis_rules(rules), jax.set_mesh(mesh):
      out = jax.jit(method.reconstruct, out_shardings=shd.replicated(mesh))(params, test['image'],
                                                                              jax.random.PRNGKey(config.seed))
    path = os.path.join(workdir, 'reconstruction.png')
    if jax.process_index() == 0:
      reconstruction_figure(test['image'], np.asarray(out['pred_images']), np.asarray(out['mask_images']), path,
                            mean=info.mean, std=info.std, title=f'{config.method} step {step}')
    results['figure'] = os.path.basename(path)
  summary = {**results, 'method': config.method, 'checkpoint_step': int(step), 'config_hash': config_hash(config),
             'eval/feature': cfg.feature, 'eval/seconds': round(time.perf_counter() - t0, 1),
             **streaming.subset_summary(config.data, 'eval', cfg.max_train_examples, cfg.max_eval_examples)}
  summary.update(run_figures(workdir, step, results))
  workdir_lib.update_summary(workdir, summary)
  log('Evaluation (frozen encoder, %s feature) at step %d:\n%s' % (cfg.feature, step, json.dumps(
      {k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}, indent=2)))
  return summary


def run_figures(workdir: str, step: int, results: dict) -> dict[str, str]:
  """Logs the final probe accuracies to metrics.jsonl (as ``eval/...`` at the last step) and draws
  ``loss_curve.png`` (train loss, validation loss if monitored, lr) and ``probe_accuracy.png`` (the online
  monitors' accuracies over the run, with the final probes as the last points). Returns the file names drawn."""
  accuracies = {f'eval/{k}': v for k, v in results.items() if isinstance(v, float) and k.endswith(('top1', 'top5'))}
  if accuracies:
    writer = metrics_lib.MetricWriter(workdir)
    writer.write(step, accuracies)
    writer.close()
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  out: dict[str, str] = {}
  if jax.process_index() != 0 or not os.path.exists(metrics_path):
    return out
  figures = [('figures/loss_curve', 'loss_curve.png', plots.plot_loss_curve,
              {'keys': ('train/loss', 'monitor/*loss')})]
  rows = plots.read_metrics(metrics_path)
  if any(k.startswith('monitor/') and k.endswith('top1') for row in rows for k in row):
    figures.append(('figures/probe_accuracy', 'probe_accuracy.png', plots.plot_probe_curve,
                    {'keys': ('monitor/*top1', 'eval/linear_probe/top1', 'eval/knn/top1')}))
  # Without accuracy monitors the final probes are one point each: nothing to draw against the step, and nothing
  # to say about it (the default runs have none; config.monitors.knn adds them, see mim_jax/eval/monitors.py).
  for key, name, draw, kwargs in figures:
    try:
      draw(metrics_path, os.path.join(workdir, name), **kwargs)
      out[key] = name
    except ValueError as e:  # e.g. no monitors configured: nothing to draw against the step
      log(f'{name} not drawn: {e}')
  return out
