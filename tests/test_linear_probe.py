"""The linear probe: fits separable data, matches the optimum, picks L2 without the test split."""

import numpy as np
import pytest

from sslx.evaluation import linear_probe


def test_separable_features_reach_full_train_and_test_accuracy():
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(6, 20)) * 4
  y = rng.integers(0, 6, size=600)
  x = centers[y] + rng.normal(size=(600, 20))
  params = linear_probe.fit_logistic_regression(x.astype(np.float32), y, 1e-4, num_classes=6)
  train_acc = np.mean(np.argmax(x @ np.asarray(params["w"]) + np.asarray(params["b"]), 1) == y)
  assert train_acc == 1.0
  result = linear_probe.linear_probe_accuracy(x[:500], y[:500], x[500:], y[500:], num_classes=6)
  assert result["train_top1"] == 1.0 and result["top1"] == 1.0 and result["top5"] == 1.0


def test_solution_is_the_regularised_optimum():
  """At the optimum the gradient of CE + l2/2 |W|^2 vanishes (numpy, from the formula)."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(200, 5)).astype(np.float32)
  y = rng.integers(0, 3, size=200)
  l2 = 0.1
  params = linear_probe.fit_logistic_regression(x, y, l2, num_classes=3)
  w, b = np.asarray(params["w"], np.float64), np.asarray(params["b"], np.float64)
  logits = x @ w + b
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  residual = (p - np.eye(3)[y]) / len(x)
  np.testing.assert_allclose(x.T @ residual + l2 * w, 0.0, atol=1e-4)
  np.testing.assert_allclose(residual.sum(0), 0.0, atol=1e-4)


def test_zero_weight_padding_leaves_the_optimum_unchanged():
  """Padding to a shared size (one compilation for many subset sizes) fits the same model."""
  rng = np.random.default_rng(3)
  x = rng.normal(size=(50, 5)).astype(np.float32)
  y = rng.integers(0, 3, size=50)
  plain = linear_probe.fit_logistic_regression(x, y, 0.1, num_classes=3)
  padded = linear_probe.fit_logistic_regression(x, y, 0.1, num_classes=3, pad_to=80)
  for k in ("w", "b"):
    np.testing.assert_allclose(np.asarray(padded[k]), np.asarray(plain[k]), atol=1e-5)
  # A padding row that carried weight would pull b towards class 0: check it is not tiny.
  wrong = linear_probe.fit_logistic_regression(
      np.concatenate([x, np.zeros((30, 5), np.float32)]), np.concatenate([y, np.zeros(30, int)]),
      0.1, num_classes=3)
  assert np.max(np.abs(np.asarray(wrong["b"]) - np.asarray(plain["b"]))) > 0.05


def test_l2_is_chosen_on_training_data_only():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(300, 10))
  y = (x[:, 0] > 0).astype(int)
  # The test labels are the opposite of the rule; if they influenced the choice
  # of L2 or the fit, the result would change. It must not.
  a = linear_probe.linear_probe_accuracy(x[:200], y[:200], x[200:], y[200:], num_classes=2)
  b = linear_probe.linear_probe_accuracy(x[:200], y[:200], x[200:], 1 - y[200:], num_classes=2)
  assert a["l2"] == b["l2"]
  assert a["top1"] == pytest.approx(1.0 - b["top1"])
  assert "top5" not in a
