"""Linear probing on frozen features, following the MAE protocol, plus two quick closed-form/sklearn probes.

The MAE head is ``BatchNorm(affine=False, eps=1e-6)`` followed by a linear layer (weights ``normal(0.01)``,
bias 0), trained with LARS (:func:`mim_jax.train.optim.lars`) at ``lr = base_lr * batch / 256`` with a per-step
linear warmup then a half-cycle cosine to ``min_lr``. BatchNorm normalizes with the batch statistics while
training and with its running statistics (flax collection ``batch_stats``, momentum 0.9 == torch's 0.1) at
evaluation.

Everything here works on precomputed feature arrays ``[N, D]`` (the cached-feature fast path). A trainer
that augments images every step can reuse :func:`init_probe`, :func:`make_probe_train_step` and
:func:`probe_logits` with features computed on the fly.

Accuracies are returned as fractions in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mim_jax.eval.features import extract_features
from mim_jax.train import optim


class LinearProbeHead(nn.Module):
  """BatchNorm without affine (eps 1e-6) then Dense: the MAE linear-probe head. Only ``head`` is trainable."""

  num_classes: int
  bn_momentum: float = 0.9  # flax convention; torch's BatchNorm momentum 0.1
  bn_epsilon: float = 1e-6
  init_std: float = 0.01

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = nn.BatchNorm(
      use_running_average=not train,
      momentum=self.bn_momentum,
      epsilon=self.bn_epsilon,
      use_scale=False,
      use_bias=False,
      name='bn',
    )(x)
    return nn.Dense(
      self.num_classes,
      kernel_init=nn.initializers.normal(self.init_std),
      bias_init=nn.initializers.zeros,
      name='head',
    )(x)


@flax.struct.dataclass
class ProbeState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def probe_schedule(
  base_lr: float,
  batch_size: int,
  steps_per_epoch: int,
  epochs: float,
  warmup_epochs: float,
  min_lr: float = 0.0,
) -> optax.Schedule:
  """``base_lr * batch/256``, linear warmup from 0 per step, then half-cycle cosine to ``min_lr`` per step.

  Identical to the MAE reference's per-iteration ``adjust_learning_rate`` (epoch = step / steps_per_epoch).
  """
  peak = optim.scaled_lr(base_lr, batch_size)
  total = max(1, int(round(epochs * steps_per_epoch)))
  warmup = min(total, int(round(warmup_epochs * steps_per_epoch)))
  return optim.warmup_cosine(peak, total, warmup, min_lr)


def probe_optimizer(
  name: str,
  learning_rate: optax.ScalarOrSchedule,
  *,
  momentum: float = 0.9,
  weight_decay: float = 0.0,
  trust_coefficient: float = 0.001,
) -> optax.GradientTransformation:
  """'lars' (the reference), 'sgd' (momentum, lr after momentum like torch) or 'adamw'.

  Weight decay never applies to 1-D params (the bias).
  """
  if name == 'lars':
    return optim.lars(learning_rate, momentum, weight_decay, trust_coefficient)
  if name == 'sgd':
    return optax.chain(
      optax.masked(optax.add_decayed_weights(weight_decay), optim.weight_decay_mask),
      optax.sgd(learning_rate, momentum=momentum or None),
    )
  if name == 'adamw':
    return optax.adamw(learning_rate, weight_decay=weight_decay, mask=optim.weight_decay_mask)
  raise ValueError(f"unknown probe optimizer {name!r}; expected 'lars', 'sgd' or 'adamw'")


def init_probe(head: LinearProbeHead, tx: optax.GradientTransformation, feature_dim: int, seed: int = 0):
  variables = head.init(jax.random.PRNGKey(seed), jnp.zeros((2, feature_dim), jnp.float32), train=False)
  params = variables['params']
  return ProbeState(
    step=jnp.zeros([], jnp.int32),
    params=params,
    batch_stats=variables['batch_stats'],
    opt_state=tx.init(params),
  )


def make_probe_train_step(
  head: LinearProbeHead, tx: optax.GradientTransformation
) -> Callable[[ProbeState, jax.Array, jax.Array], tuple[ProbeState, jax.Array]]:
  """A pure ``(state, features [b, D], labels [b]) -> (state, loss)`` step; jit it (or scan it) yourself."""

  def step(state: ProbeState, x: jax.Array, y: jax.Array):
    def loss_fn(params):
      logits, mutated = head.apply(
        {'params': params, 'batch_stats': state.batch_stats}, x, train=True, mutable=['batch_stats']
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y).mean()
      return loss, mutated['batch_stats']

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return ProbeState(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state), loss

  return step


def probe_logits(head: LinearProbeHead, state: ProbeState, features: np.ndarray, batch_size: int = 4096):
  """Eval-mode logits (BatchNorm with running statistics), batched."""
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  fn = jax.jit(lambda v, x: head.apply(v, x, train=False))
  return extract_features(lambda x: fn(variables, x), np.asarray(features, np.float32), batch_size, jit=False)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, ks=(1, 5)) -> dict[str, float]:
  """``{'top1': ..., 'top5': ...}`` as fractions; k is capped at the number of classes."""
  scores, labels = np.asarray(scores), np.asarray(labels)
  order = np.argsort(-scores, axis=-1, kind='stable')
  out = {}
  for k in ks:
    hit = (order[:, : min(k, scores.shape[-1])] == labels[:, None]).any(axis=-1)
    out[f'top{k}'] = float(hit.mean())
  return out


def clip_batch_size(batch_size: int, num_examples: int, min_steps_per_epoch: int = 4) -> int:
  """Keep the requested batch unless the data is too small for it.

  For small data the batch shrinks to ``num_examples // min_steps_per_epoch`` (at least 1), so an epoch still
  has several steps and dropping the incomplete last batch loses at most a small fraction of the data.
  """
  return max(1, min(batch_size, num_examples // min_steps_per_epoch))


def train_linear_probe(
  train_features,
  train_labels,
  eval_features,
  eval_labels,
  *,
  num_classes: int,
  epochs: int = 90,
  batch_size: int = 16384,
  base_lr: float = 0.1,
  warmup_epochs: float = 10,
  weight_decay: float = 0.0,
  seed: int = 0,
  optimizer: str = 'lars',
  momentum: float = 0.9,
  trust_coefficient: float = 0.001,
  min_lr: float = 0.0,
  bn_epsilon: float = 1e-6,
  head_init_std: float = 0.01,
  min_steps_per_epoch: int = 4,
  eval_batch_size: int = 4096,
) -> dict[str, float]:
  """Train the MAE probe head on cached features and return ``{'top1', 'top5'}`` on the eval features.

  ``batch_size`` is clipped by :func:`clip_batch_size`; the learning rate is ``base_lr * batch / 256`` of the
  clipped batch. Each epoch sees a fresh permutation (seeded, so reruns give the same numbers) and drops the
  incomplete last batch, like the reference's ``drop_last=True`` loader. A whole epoch runs as one jitted
  ``lax.scan``; the training features live on the default device. The keyword names match the fields of
  ``configs/eval/linear_probe.py``'s ``linear_probe`` block, so ``**config.linear_probe`` can be passed.
  """
  x_train = jnp.asarray(np.asarray(train_features, np.float32))
  y_train = jnp.asarray(np.asarray(train_labels, np.int32))
  n, dim = x_train.shape
  if y_train.shape != (n,):
    raise ValueError(f'train_labels must have shape ({n},), got {y_train.shape}')
  batch = clip_batch_size(batch_size, n, min_steps_per_epoch)
  steps_per_epoch = n // batch
  schedule = probe_schedule(base_lr, batch, steps_per_epoch, epochs, warmup_epochs, min_lr)
  tx = probe_optimizer(
    optimizer, schedule, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient
  )
  head = LinearProbeHead(num_classes, bn_epsilon=bn_epsilon, init_std=head_init_std)
  state = init_probe(head, tx, dim, seed)
  step = make_probe_train_step(head, tx)

  @jax.jit
  def run_epoch(state, key):
    perm = jax.random.permutation(key, n)[: steps_per_epoch * batch].reshape(steps_per_epoch, batch)
    return jax.lax.scan(lambda s, idx: step(s, x_train[idx], y_train[idx]), state, perm)

  data_key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
  for epoch in range(epochs):
    state, losses = run_epoch(state, jax.random.fold_in(data_key, epoch))
  if epochs and not math.isfinite(float(losses[-1])):
    raise FloatingPointError(f'linear probe diverged (loss {float(losses[-1])}); lower base_lr')
  logits = probe_logits(head, state, eval_features, eval_batch_size)
  return topk_accuracy(logits, eval_labels)


def _standardize(train: np.ndarray, *others: np.ndarray):
  mean = train.mean(0)
  std = train.std(0) + 1e-6
  return [(a - mean) / std for a in (train, *others)]


def least_squares_probe(
  train_features,
  train_labels,
  eval_features,
  eval_labels,
  *,
  num_classes: int,
  l2_reg: float = 1e-3,
  chunk_size: int = 65536,
) -> dict[str, float]:
  """Closed-form ridge regression onto one-hot labels: a quick, optimizer-free probe.

  Features are standardized with the training statistics; ``l2_reg`` is relative (the ridge penalty is
  ``l2_reg * N`` on standardized features, i.e. relative to the mean eigenvalue of the Gram matrix). The Gram
  matrix is accumulated in float64 over row chunks, so memory stays ``O(D^2 + chunk * D)``.
  """
  x_tr = np.asarray(train_features, np.float64)
  x_ev = np.asarray(eval_features, np.float64)
  y_tr = np.asarray(train_labels, np.int64)
  x_tr, x_ev = _standardize(x_tr, x_ev)
  n, dim = x_tr.shape
  targets = np.eye(num_classes)[y_tr]
  y_mean = targets.mean(0)
  gram = np.zeros((dim, dim))
  rhs = np.zeros((dim, num_classes))
  for start in range(0, n, chunk_size):
    xc = x_tr[start : start + chunk_size]
    gram += xc.T @ xc
    rhs += xc.T @ (targets[start : start + chunk_size] - y_mean)
  weights = np.linalg.solve(gram + l2_reg * n * np.eye(dim), rhs)
  return topk_accuracy(x_ev @ weights + y_mean, eval_labels)


def logistic_regression_probe(
  train_features, train_labels, eval_features, eval_labels, *, C: float = 1.0, max_iter: int = 1000
) -> dict[str, float]:
  """scikit-learn multinomial logistic regression on standardized features (for small data sanity checks)."""
  from sklearn.linear_model import LogisticRegression

  x_tr, x_ev = _standardize(np.asarray(train_features, np.float64), np.asarray(eval_features, np.float64))
  clf = LogisticRegression(C=C, max_iter=max_iter)
  clf.fit(x_tr, np.asarray(train_labels))
  scores = clf.predict_proba(x_ev)
  eval_labels = np.asarray(eval_labels)
  labels = np.searchsorted(clf.classes_, eval_labels).clip(0, len(clf.classes_) - 1)
  labels = np.where(clf.classes_[labels] == eval_labels, labels, -1)  # a class unseen in training never hits
  return topk_accuracy(scores, labels)
