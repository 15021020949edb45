"""Weighted kNN classification against a numpy reference (Wu et al., 2018, eq. 8)."""

import numpy as np
import pytest

from sslx.evaluation import knn


def _numpy_knn_predictions(bank, bank_labels, queries, k, temperature, num_classes):
  bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
  queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  scores = np.zeros((len(queries), num_classes))
  for i, q in enumerate(queries):
    sims = bank @ q
    nearest = np.argsort(-sims)[:k]
    for j in nearest:
      scores[i, bank_labels[j]] += np.exp(sims[j] / temperature)
  return scores


def test_class_scores_match_numpy():
  rng = np.random.default_rng(0)
  bank = rng.normal(size=(300, 16)).astype(np.float32)
  labels = rng.integers(0, 7, size=300)
  queries = rng.normal(size=(40, 16)).astype(np.float32)
  got = np.asarray(knn.knn_class_scores(bank, labels, queries, k=20, temperature=0.1,
                                        num_classes=7))
  expected = _numpy_knn_predictions(bank, labels, queries, 20, 0.1, 7)
  np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_accuracy_matches_numpy_and_reports_top5():
  rng = np.random.default_rng(1)
  centers = rng.normal(size=(10, 8)) * 3
  bank_labels = rng.integers(0, 10, size=500)
  bank = centers[bank_labels] + rng.normal(size=(500, 8))
  test_labels = rng.integers(0, 10, size=120)
  test = centers[test_labels] + rng.normal(size=(120, 8))
  got = knn.knn_accuracy(bank, bank_labels, test, test_labels, k=25, temperature=0.07,
                         num_classes=10, query_batch=50)
  scores = _numpy_knn_predictions(bank, bank_labels, test, 25, 0.07, 10)
  expected_top1 = np.mean(np.argmax(scores, 1) == test_labels)
  expected_top5 = np.mean([y in np.argsort(-s)[:5] for s, y in zip(scores, test_labels)])
  assert got["top1"] == pytest.approx(expected_top1)
  assert got["top5"] == pytest.approx(expected_top5)
  assert got["top1"] > 0.5  # clusters are separable: a broken vote would be near 0.1


def test_no_top5_with_few_classes_and_k_capped_by_bank_size():
  bank = np.eye(3, dtype=np.float32)
  got = knn.knn_accuracy(bank, np.arange(3), bank, np.arange(3), k=200, num_classes=3)
  assert got == {"top1": 1.0}
