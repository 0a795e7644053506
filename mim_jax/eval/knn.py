"""Weighted k-nearest-neighbour classification on L2-normalized features (the protocol popularized by DINO).

For each query, take the ``k`` training features with the highest cosine similarity ``s``; each votes for its
label with weight ``exp(s / temperature)``; classes are ranked by their summed votes. Defaults: ``k = 20``,
``temperature = 0.07``. Queries are processed in fixed-size batches (the last one padded), so memory is
``O(batch_size * N_train)`` and the scoring function compiles once. Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.eval.features import extract_features
from mim_jax.eval.linear_probe import topk_accuracy


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


@functools.partial(jax.jit, static_argnames=('k', 'num_classes'))
def _votes(queries, train_features, train_labels, *, k: int, temperature: float, num_classes: int):
  sims = l2_normalize(queries) @ train_features.T  # [b, N_train]
  top_sims, top_idx = jax.lax.top_k(sims, k)  # [b, k]
  weights = jnp.exp(top_sims / temperature)
  onehot = jax.nn.one_hot(train_labels[top_idx], num_classes, dtype=weights.dtype)  # [b, k, C]
  return jnp.einsum('bk,bkc->bc', weights, onehot)


def knn_scores(
  train_features,
  train_labels,
  eval_features,
  *,
  num_classes: int,
  k: int = 20,
  temperature: float = 0.07,
  batch_size: int = 128,
) -> np.ndarray:
  """Per-class summed vote weights ``[N_eval, num_classes]`` (higher is better)."""
  train = l2_normalize(jnp.asarray(np.asarray(train_features, np.float32)))
  labels = jnp.asarray(np.asarray(train_labels, np.int32))
  if labels.shape != (train.shape[0],):
    raise ValueError(f'train_labels must have shape ({train.shape[0]},), got {labels.shape}')
  k = min(k, train.shape[0])
  return extract_features(
    lambda q: _votes(q, train, labels, k=k, temperature=temperature, num_classes=num_classes),
    np.asarray(eval_features, np.float32),
    batch_size,
    jit=False,
    desc='knn',
  )


def knn_classify(train_features, train_labels, eval_features, eval_labels, **options) -> dict[str, float]:
  """Weighted k-NN accuracy: ``{'top1': ..., 'top5': ...}``; ``options`` as :func:`knn_scores` (``num_classes``,
  ``k``, ``temperature``, ``batch_size``)."""
  return topk_accuracy(knn_scores(train_features, train_labels, eval_features, **options), eval_labels)


def few_label_indices(train_labels, labels_per_class: int, draws: int, seed: int) -> list[np.ndarray]:
  """``draws`` index sets, each with ``labels_per_class`` training examples of every class (all of a class's
  examples where it has fewer). They depend only on the labels and ``seed``, so every feature set evaluated on one
  split is scored on the same labelled examples."""
  if labels_per_class < 1 or draws < 1:
    raise ValueError(f'few-label k-NN needs labels_per_class >= 1 and draws >= 1, got {labels_per_class}, {draws}.')
  labels = np.asarray(train_labels)
  rng = np.random.default_rng(seed)
  by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
  return [np.sort(np.concatenate([rng.permutation(idx)[:labels_per_class] for idx in by_class]))
          for _ in range(draws)]


def few_label_knn(train_features, train_labels, eval_features, eval_labels, *, labels_per_class: int = 10,
                  draws: int = 5, seed: int = 0, **options) -> dict[str, float]:
  """k-NN that may use only ``labels_per_class`` labelled training images per class, averaged over ``draws`` label
  draws: ``{'top1': mean, 'top1_std': sample std}``. Full-label probes saturate near raw pixels on small data;
  with few labels the geometry of the features matters more, which separates methods better. ``options`` as
  :func:`knn_scores` (``k`` is capped at the number of labelled images)."""
  train_features, train_labels = np.asarray(train_features), np.asarray(train_labels)
  accs = [knn_classify(train_features[idx], train_labels[idx], eval_features, eval_labels, **options)['top1']
          for idx in few_label_indices(train_labels, labels_per_class, draws, seed)]
  return {'top1': float(np.mean(accs)), 'top1_std': float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0}
