"""Subsets of a split: stratified, seeded choices that keep every class.

`sample_indices` is every "at most N examples" of sslx (`eval.max_train_examples`):
a deterministic sample of the whole split in which each class keeps its share,
never the first N stored examples (npz files and image folders store their
examples class by class, so those would be a few classes only).

Few-label subsets (`label_subset`) are a stratified, seeded choice of
labelled training examples. Semi-supervised transfer (SimCLR's and BYOL's 1%
and 10% ImageNet tables) trains on a fraction of the labels; for the
comparison to mean anything every method must see the same images, so a
subset is a pure function of the split's labels, the requested size and the
seed (sslx/data/stratify.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sslx.data.stratify import proportional_subset, stratified_subset  # pylint: disable=unused-import
from sslx.errors import ConfigError


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
