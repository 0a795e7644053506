"""Weighted k-NN on toy sets whose neighbours (and so the answer) are known by construction."""

import numpy as np
import pytest

from mim_jax.eval.knn import knn_classify, knn_scores


def _unit(deg):
  return [np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))]


# Query at 0 degrees. Neighbours by cosine similarity: one class-0 point at 8 deg (sim 0.990), two class-1
# points at +-53 deg (sim 0.602); class-2 points near 180 deg are the farthest, never among the 3 nearest.
TRAIN = np.array([_unit(8), _unit(53), _unit(-53), _unit(180), _unit(175), _unit(-175)], np.float32)
LABELS = np.array([0, 1, 1, 2, 2, 2])
QUERY = np.array([_unit(0)], np.float32)


def test_weighting_decides_between_one_close_and_two_far_neighbours():
  # T = 0.07: exp(0.990/0.07) >> 2 exp(0.602/0.07), so the single close neighbour wins.
  assert knn_classify(TRAIN, LABELS, QUERY, [0], num_classes=3, k=3)['top1'] == 1.0
  # Large temperature: weights become ~uniform and the 2-vs-1 majority wins.
  assert knn_classify(TRAIN, LABELS, QUERY, [1], num_classes=3, k=3, temperature=100.0)['top1'] == 1.0


def test_votes_are_exp_similarity_over_temperature_of_the_k_nearest():
  scores = knn_scores(TRAIN, LABELS, QUERY, num_classes=3, k=3, temperature=0.5)
  s_close, s_far = np.cos(np.deg2rad(8)), np.cos(np.deg2rad(53))
  expected = [np.exp(s_close / 0.5), 2 * np.exp(s_far / 0.5), 0.0]  # class 2 is outside the 3 nearest
  np.testing.assert_allclose(scores[0], expected, rtol=1e-5)


def test_features_are_l2_normalized():
  rng = np.random.default_rng(0)
  scaled_train = TRAIN * rng.uniform(0.1, 50.0, size=(len(TRAIN), 1)).astype(np.float32)
  a = knn_scores(TRAIN, LABELS, QUERY, num_classes=3, k=3, temperature=0.5)
  b = knn_scores(scaled_train, LABELS, 7.0 * QUERY, num_classes=3, k=3, temperature=0.5)
  np.testing.assert_allclose(a, b, rtol=1e-5)


@pytest.mark.parametrize('batch_size', [1, 7, 128])
def test_matches_brute_force_for_any_batch_size(batch_size):
  rng = np.random.default_rng(1)
  train = rng.normal(size=(50, 8)).astype(np.float32)
  labels = rng.integers(0, 4, size=50)
  queries = rng.normal(size=(23, 8)).astype(np.float32)
  tn = train / np.linalg.norm(train, axis=1, keepdims=True)
  qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  sims = qn @ tn.T
  expected = np.zeros((23, 4))
  for i in range(23):
    for j in np.argsort(-sims[i])[:5]:
      expected[i, labels[j]] += np.exp(sims[i, j] / 0.07)
  got = knn_scores(train, labels, queries, num_classes=4, k=5, batch_size=batch_size)
  np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_k_larger_than_train_set_and_top5():
  res = knn_classify(TRAIN, LABELS, QUERY, [2], num_classes=3, k=20)
  assert res['top1'] == 0.0 and res['top5'] == 1.0


def test_few_label_knn_draws_fixed_label_sets_and_reports_mean_and_std():
  from mim_jax.eval.knn import few_label_indices, few_label_knn

  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(4), 50)  # 4 classes, 50 each
  centers = rng.normal(size=(4, 16)) * 3
  train = centers[labels] + rng.normal(size=(200, 16))
  test_labels = np.repeat(np.arange(4), 20)
  test = centers[test_labels] + rng.normal(size=(80, 16))
  sets = few_label_indices(labels, 5, 3, seed=1)
  assert len(sets) == 3 and all(len(s) == 20 for s in sets)
  assert all(np.array_equal(np.bincount(labels[s], minlength=4), [5, 5, 5, 5]) for s in sets)
  assert not np.array_equal(sets[0], sets[1])  # different draws
  again = few_label_indices(labels, 5, 3, seed=1)
  assert all(np.array_equal(a, b) for a, b in zip(sets, again))  # the same images for every encoder
  # a class with fewer examples than asked contributes all of them
  short = few_label_indices(np.array([0, 0, 1, 1, 1, 1]), 3, 1, seed=0)[0]
  assert sorted(np.bincount(np.array([0, 0, 1, 1, 1, 1])[short])) == [2, 3]

  good = few_label_knn(train, labels, test, test_labels, labels_per_class=5, draws=3, num_classes=4, k=20)
  assert good['top1'] > 0.9 and good['top1_std'] >= 0.0
  noise = few_label_knn(rng.normal(size=(200, 16)), labels, test, test_labels, labels_per_class=5, draws=3,
                        num_classes=4)
  assert noise['top1'] < 0.5  # features without class structure stay near chance with few labels
  with pytest.raises(ValueError, match='labels_per_class'):
    few_label_indices(labels, 0, 3, seed=0)
