"""Subsets of a split: stratified, seeded choices that keep every class.

`sample_indices` is every "at most N examples" of sslx (`eval.max_train_examples`):
a deterministic sample of the whole split in which each class keeps its share,
never the first N stored examples (npz files and image folders store their
examples class by class, so those would be a few classes only).

Few-label subsets are a stratified, seeded choice of labelled training examples.

Semi-supervised transfer (SimCLR's and BYOL's 1% and 10% ImageNet tables)
trains on a fraction of the labels. For the comparison to mean anything every
method must see the same images, so the subset here is a pure function of the
split's labels, the requested size and the seed: nothing about the method,
the checkpoint, the device count or the order in which classes are visited.

Per class c with n_c examples, `fraction` keeps max(1, round(fraction * n_c))
of them and `per_class` keeps min(per_class, n_c); which ones is a permutation
of the class's indices drawn from numpy's generator seeded with (seed, c).
"""

from __future__ import annotations

from typing import Any

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


def read_labels(data_config: Any, split: str) -> np.ndarray:
  """All labels of `split` (a dataset split name), in stored order, without decoding images."""
  # Imported here: the subsets above need no TensorFlow, and neither does the
  # trainer that imports this module.
  from sslx.data import datasets  # pylint: disable=g-import-not-at-top
  src = datasets.load_split(data_config, split, process_index=0, process_count=1)
  labels = src.dataset.map(lambda ex: ex["label"]).batch(8192)
  return np.concatenate([np.zeros([0], np.int32), *labels.as_numpy_iterator()])


def label_subset(data_config: Any, split: str, *, fraction: float | None,
                 per_class: int | None, seed: int) -> tuple[np.ndarray | None, np.ndarray | None]:
  """(indices of the few-label subset of `split` or None for all of it, the split's labels).

  `per_class`, when given, takes precedence over `fraction`; `fraction` 1.0
  (or None) with no `per_class` means the whole split, and then the labels
  are not read (None is returned for them).
  """
  if per_class is not None:
    fraction = None
  elif fraction is None or fraction == 1.0:
    return None, None
  labels = read_labels(data_config, split)
  if labels.size and labels.max() < 0:
    raise ConfigError(f"{data_config.dataset} split {split!r} has no labels to subsample.")
  return stratified_subset(labels, fraction=fraction, per_class=per_class, seed=seed), labels


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


def sample_indices(data_config: Any, split: str, size: int | None, seed: int) -> np.ndarray | None:
  """Sorted indices of a sample of `size` examples of `split`, or None for the whole split.

  Labelled data keeps each class's share (`proportional_subset`), unlabelled
  data is a seeded random sample. TFDS datasets that TFDS stored in a hash-
  shuffled order (every TFDS dataset unless its builder disables shuffling,
  e.g. imagenet2012) take the first `size` examples: already a random sample
  of every class, and read without a pass over the split's labels.
  """
  if size is None:
    return None
  from sslx.data import datasets  # pylint: disable=g-import-not-at-top  (TensorFlow)
  total = datasets.split_size(data_config, split)
  if size >= total:
    return None
  if datasets.stored_in_random_order(data_config):
    return np.arange(size)
  labels = read_labels(data_config, split)
  return proportional_subset(labels, size, seed=seed)
