"""Weighted k-nearest-neighbour classification of encoder features.

The protocol of Wu et al. (2018, "Unsupervised Feature Learning via
Non-Parametric Instance Discrimination", eq. 8) as used by solo-learn: features
are L2-normalised; each test image takes its k most cosine-similar training
images, each voting for its label with weight exp(similarity / T); the class
with the largest total wins. Defaults k=200, T=0.1.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sslx.core.numerics import l2_normalize


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def knn_class_scores(bank: jax.Array, bank_labels: jax.Array, queries: jax.Array, *,
                     k: int, temperature: float, num_classes: int) -> jax.Array:
  """Vote totals [M, num_classes] for each query (features need not be normalised)."""
  similarity = l2_normalize(queries) @ l2_normalize(bank).T  # [M, N]
  top_similarity, top_index = jax.lax.top_k(similarity, k)
  weights = jnp.exp(top_similarity / temperature)
  votes = jax.nn.one_hot(bank_labels[top_index], num_classes) * weights[..., None]
  return votes.sum(axis=1)


def knn_accuracy(train_features: np.ndarray, train_labels: np.ndarray,
                 test_features: np.ndarray, test_labels: np.ndarray, *, k: int = 200,
                 temperature: float = 0.1, num_classes: int,
                 query_batch: int = 1024) -> dict[str, float]:
  """Top-1 (and top-5 where there are more than 5 classes) accuracy in [0, 1]."""
  k = min(k, len(train_features))
  bank, bank_labels = jnp.asarray(train_features), jnp.asarray(train_labels)
  top1 = top5 = 0
  for start in range(0, len(test_features), query_batch):
    queries = jnp.asarray(test_features[start:start + query_batch])
    labels = test_labels[start:start + query_batch]
    scores = np.asarray(knn_class_scores(bank, bank_labels, queries, k=k,
                                         temperature=temperature, num_classes=num_classes))
    ranked = np.argsort(-scores, axis=1, kind="stable")
    top1 += int(np.sum(ranked[:, 0] == labels))
    top5 += int(np.sum(np.any(ranked[:, :5] == labels[:, None], axis=1)))
  result = {"top1": top1 / len(test_features)}
  if num_classes > 5:
    result["top5"] = top5 / len(test_features)
  return result
