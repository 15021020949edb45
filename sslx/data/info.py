"""`DatasetInfo`: what sslx needs to know about a dataset (no TensorFlow needed)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the rest of sslx needs to know about a dataset.

  Attributes:
    name: the name as given in the config ('mnist5k', 'cifar10',
      'npz:/p/f.npz', 'folder:/p').
    num_classes: number of classes; None when the dataset has no labels.
    num_train_examples: size of the pretraining split (turns epochs into steps).
    pretrain_split: split used for pretraining ('train+unlabelled' for stl10).
    train_split: labelled training split (kNN memory bank, probes); None if
      the dataset is unlabelled.
    test_split: evaluation split; None when there is none.
    mean: RGB mean of images scaled to [0, 1].
    std: RGB standard deviation of images scaled to [0, 1].
  """
  name: str
  num_classes: int | None
  num_train_examples: int
  pretrain_split: str
  train_split: str | None
  test_split: str | None
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
