"""Stratified choices of examples by their labels (pure numpy; sslx.data.subsets uses them).

Per class c with n_c examples, `stratified_subset` keeps max(1, round(fraction * n_c))
(or min(per_class, n_c)) of them, `proportional_subset` a total of `size` with each
class in proportion; which ones is a permutation of the class's indices drawn
from numpy's generator seeded with (seed, c): nothing about the method, the
checkpoint, the device count or the order in which classes are visited.
"""

from __future__ import annotations

import numpy as np

from sslx.errors import ConfigError


def stratified_subset(labels: np.ndarray, *, fraction: float | None = None,
                      per_class: int | None = None, seed: int = 0) -> np.ndarray:
  """Sorted indices into `labels` of a class-stratified subset.

  Args:
    labels: int labels [N] of the whole labelled split (in stored order);
      negative labels (unlabelled) are never chosen.
    fraction: keep this fraction of every class, in (0, 1].
    per_class: keep this many examples of every class (all of a smaller one).
    seed: the subset is a function of (labels, fraction or per_class, seed).

  Raises:
    ConfigError: neither or both of fraction / per_class, or out of range.
  """
  if (fraction is None) == (per_class is None):
    raise ConfigError("Give exactly one of label_fraction and labels_per_class "
                      f"(got {fraction} and {per_class}).")
  if fraction is not None and not 0.0 < fraction <= 1.0:
    raise ConfigError(f"label_fraction must be in (0, 1], got {fraction}.")
  if per_class is not None and per_class < 1:
    raise ConfigError(f"labels_per_class must be >= 1, got {per_class}.")
  labels = np.asarray(labels)
  chosen = []
  for c in np.unique(labels[labels >= 0]):
    members = np.flatnonzero(labels == c)
    count = (min(per_class, len(members)) if per_class is not None
             else max(1, int(round(fraction * len(members)))))
    order = np.random.default_rng([int(seed) % 2**32, int(c)]).permutation(len(members))
    chosen.append(members[order[:count]])
  return np.sort(np.concatenate(chosen)) if chosen else np.zeros([0], np.int64)


def proportional_subset(labels: np.ndarray, size: int, *, seed: int = 0) -> np.ndarray:
  """Sorted indices of `size` of `labels`' examples, each class in proportion to its share.

  Class c of n_c of the N examples keeps floor(size n_c / N) examples, and the
  classes with the largest remainders one more each (ties: lower class first)
  until `size` are kept; which ones is a permutation seeded with (seed, c), as
  in `stratified_subset`. Unlabelled examples (label < 0) count as one class.
  """
  labels = np.asarray(labels)
  n = len(labels)
  if size >= n:
    return np.arange(n)
  classes, counts = np.unique(labels, return_counts=True)
  exact = size * counts / n
  keep = np.floor(exact).astype(int)
  for i in sorted(range(len(classes)), key=lambda i: (-(exact[i] - keep[i]), i))[:size - keep.sum()]:
    keep[i] += 1
  chosen = []
  for c, k in zip(classes, keep):
    members = np.flatnonzero(labels == c)
    order = np.random.default_rng([int(seed) % 2**32, int(c) % 2**32]).permutation(len(members))
    chosen.append(members[order[:k]])
  return np.sort(np.concatenate(chosen))
