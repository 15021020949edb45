"""The frozen-feature protocols on one set of features: kNN, linear probe, few labels.

`evaluate_frozen` extracts an encoder's features of the train and test splits
once and runs on them the weighted kNN classifier, the L-BFGS linear probe
and the few-label linear probes. `Evaluator` does it for several encoders of
one architecture fed one preprocessing (pretraining's final and periodic
evaluations: the pretrained encoder beside a random one), with one compiled
feature extractor for all of them.

`max_train_examples` evaluates on a deterministic sample of the train split
that keeps every class (`sslx.data.subsets.sample_indices`), not its first
examples, which in a class-sorted folder or npz would be a few classes only.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from absl import logging
import numpy as np

from sslx import data
from sslx.data import subsets
from sslx.data.info import DatasetInfo, Preprocessing
from sslx.evaluation import features as features_lib
from sslx.evaluation import few_label
from sslx.evaluation import knn
from sslx.evaluation import linear_probe

PyTree = Any
describe = features_lib.describe


def evaluate_frozen(extract: features_lib.FeatureExtractor, *, num_classes: int, batch_size: int,
                    knn_k: int | None, knn_temperature: float = 0.1, linear: bool = True,
                    train_indices: np.ndarray | None = None, seed: int = 0,
                    few_label_subsets: dict[int, list] | Callable | None = None,
                    few_label_l2: float | None = None, return_features: bool = False):
  """kNN (when knn_k is set) and linear-probe top-1/top-5 on the test split, same features.

  `train_indices`: the train examples to use (sorted; None: all).
  `few_label_subsets` {N: [positions in those train features, one array per
  draw]}, or a function from their labels to it (the labels come with the
  features, so no separate pass over the split), adds `few_label_linear`:
  {N: mean/std top-1 of probes fitted on those images only}.
  With `return_features`, returns (results, {'train': (x, y), 'test': (x, y),
  'train_indices': the split's indices of the train rows, or None for all}).
  """
  clock = _Clock()
  train_x, train_y = extract("train", batch_size=batch_size, indices=train_indices)
  test_x, test_y = extract("test", batch_size=batch_size)
  clock.lap("features")
  results = {}
  if knn_k:
    results["knn"] = knn.knn_accuracy(train_x, train_y, test_x, test_y, k=knn_k,
                                      temperature=knn_temperature, num_classes=num_classes)
  if linear:
    results["linear"] = linear_probe.linear_probe_accuracy(
        train_x, train_y, test_x, test_y, num_classes=num_classes, seed=seed)
  clock.lap("kNN and linear probe")
  if callable(few_label_subsets):
    few_label_subsets = few_label_subsets(train_y)
  if few_label_subsets:
    largest = max(len(indices) for chosen in few_label_subsets.values() for indices in chosen)
    results["few_label_linear"] = {
        n: few_label.linear_few_label(train_x, test_x, test_y, train_y, chosen,
                                      num_classes=num_classes,
                                      l2=few_label_l2 or few_label.DEFAULT_L2, pad_to=largest)
        for n, chosen in few_label_subsets.items()}
    clock.lap("few-label probes")
  if return_features:
    return results, {"train": (train_x, train_y), "test": (test_x, test_y),
                     "train_indices": train_indices}
  return results


class Evaluator:
  """kNN / linear / few-label evaluation of encoders of one architecture and one input.

  `eval_config` is pretraining's `config.eval`; `data_config` names the
  dataset, whose splits are read through `preprocessing` (the encoder's own).
  """

  def __init__(self, encoder, preprocessing: Preprocessing, data_config, mesh, dtype,
               eval_config, num_classes: int | None):
    self.encoder, self.preprocessing, self.mesh = encoder, preprocessing, mesh
    self.data_config, self.dtype, self.config = data_config, dtype, eval_config
    self.num_classes = num_classes
    self._embed = None  # one compilation for every encoder and every evaluation
    self._train_indices = False  # not sampled yet

  def train_indices(self, seed: int) -> np.ndarray | None:
    """The train examples evaluated on: all, or a sample of `max_train_examples` of them."""
    if self._train_indices is False:
      info: DatasetInfo = data.get_dataset_info(self.data_config)
      self._train_indices = subsets.sample_indices(
          self.data_config, info.train_split, self.config.get("max_train_examples"), seed)
      if self._train_indices is not None:
        logging.info("evaluation: %d of the %s %s images (eval.max_train_examples), every class "
                     "in proportion", len(self._train_indices), info.name, info.train_split)
    return self._train_indices

  def extractor(self, variables) -> features_lib.FeatureExtractor:
    c = self.config
    if self._embed is None:
      self._embed = features_lib.make_embed_fn(self.encoder, self.preprocessing, self.dtype,
                                               layer=c.get("feature_layer"),
                                               grid=c.get("feature_grid", 1))
    return features_lib.FeatureExtractor(
        self.encoder, variables, data_config=self.data_config, preprocessing=self.preprocessing,
        mesh=self.mesh, dtype=self.dtype, embed_fn=self._embed)

  def evaluate(self, encoders: dict[str, PyTree], *, seed: int, few_label_subsets=None,
               features: dict | None = None) -> dict[str, dict[str, Any]]:
    """{name: results} for each named encoder's variables; pass a dict as `features` to get
    their features back ({name: {'train': (x, y), 'test': (x, y), 'train_indices'}})."""
    c = self.config
    results = {}
    for name, variables in encoders.items():
      results[name], feats = evaluate_frozen(
          self.extractor(variables), num_classes=self.num_classes, batch_size=c.batch_size,
          knn_k=c.knn_k if c.knn else None, knn_temperature=c.knn_temperature,
          linear=c.linear, train_indices=self.train_indices(seed), seed=seed,
          few_label_subsets=few_label_subsets, few_label_l2=c.few_label_l2,
          return_features=True)
      if features is not None:
        features[name] = feats
    return results


class _Clock:
  """Logs how long each part of an evaluation took (where the quick start's minutes go)."""

  def __init__(self):
    self._t = time.perf_counter()

  def lap(self, what: str) -> None:
    now = time.perf_counter()
    logging.info("evaluation: %s took %.1fs", what, now - self._t)
    self._t = now
