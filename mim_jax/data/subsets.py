"""Evaluation subsets: which examples of a split an evaluator reads when it is told to read at most N of them.

Never a prefix: a split may be stored in class order (datasets converted before the converter shuffled, or built
by other tools), and a prefix of a class-sorted split holds only the first classes. A subset is a seeded random
sample of the split, stratified by label where the split's labels can be read cheaply (every class gets its
share, the largest remainders rounding up), uniform otherwise; the same seed gives the same subset for every
arm of a comparison and every re-run. Kept free of jax: grain worker processes import the pipeline.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Subset:
  """The examples of a split an evaluation reads: ``indices`` (ascending) or None for the whole split."""

  indices: np.ndarray | None
  split_size: int
  seed: int
  kind: str  # 'all' | 'stratified' | 'uniform'

  def __len__(self) -> int:
    return self.split_size if self.indices is None else len(self.indices)

  def describe(self) -> dict:
    """What a summary records about it."""
    return {'examples': len(self), 'of': self.split_size, 'sample': self.kind, 'seed': self.seed}


def stratified_counts(labels: np.ndarray, n: int) -> dict[int, int]:
  """``{label: how many}`` summing to ``n``: each class's share of ``n``, rounded down, then one more for the
  classes with the largest remainders (ties to the smaller label)."""
  classes, counts = np.unique(labels, return_counts=True)
  exact = n * counts / counts.sum()
  take = np.floor(exact).astype(np.int64)
  order = np.lexsort((classes, -(exact - take)))  # largest remainder first, then the smaller label
  take[order[:n - int(take.sum())]] += 1
  return {int(c): int(k) for c, k in zip(classes, take)}


def sample(split_size: int, n: int | None, seed: int, labels: np.ndarray | None = None) -> Subset:
  """A seeded sample of ``n`` of ``split_size`` examples (the whole split when ``n`` is None or not smaller)."""
  if n is None or int(n) >= split_size:
    return Subset(None, split_size, int(seed), 'all')
  if int(n) <= 0:
    raise ValueError(f'an evaluation subset needs at least one example, got max_examples={n!r}.')
  rng = np.random.default_rng([int(seed), split_size, int(n)])
  if labels is None:
    return Subset(np.sort(rng.choice(split_size, int(n), replace=False)), split_size, int(seed), 'uniform')
  labels = np.asarray(labels)
  if len(labels) != split_size:
    raise ValueError(f'{len(labels)} labels for a split of {split_size} examples.')
  picked = [rng.choice(np.flatnonzero(labels == c), k, replace=False)
            for c, k in stratified_counts(labels, int(n)).items() if k]
  return Subset(np.sort(np.concatenate(picked)), split_size, int(seed), 'stratified')


def check_labels(train_labels: np.ndarray, eval_labels: np.ndarray, num_classes: int | None, what: str) -> list[str]:
  """Warnings for a probe whose training labels miss classes of the dataset; a ValueError when the training and
  evaluation labels share no class (a probe could not score anything)."""
  train, test = set(np.unique(train_labels).tolist()), set(np.unique(eval_labels).tolist())
  if not train & test:
    raise ValueError(f'{what}: the training examples have labels {sorted(train)[:10]} and the evaluation examples '
                     f'{sorted(test)[:10]}, with none in common; evaluate on splits of the same classes (or '
                     'raise max_train_examples / max_eval_examples).')
  warnings = []
  if num_classes:
    missing = sorted(set(range(int(num_classes))) - train)
    if missing:
      warnings.append(f'warning: {what}: the training subset has no example of {len(missing)} of the '
                      f'{num_classes} classes ({missing[:10]}{"..." if len(missing) > 10 else ""}); raise '
                      'max_train_examples for a probe that sees every class.')
  unseen = sorted(test - train)
  if unseen:
    warnings.append(f'warning: {what}: {len(unseen)} classes of the evaluation examples never occur in training '
                    f'({unseen[:10]}); those examples cannot be classified correctly.')
  return warnings
