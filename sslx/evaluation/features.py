"""Frozen-encoder features of whole splits: the one extractor for pretraining and the jobs.

Centre crops (`make_eval_iterator`), normalised with the dataset's statistics,
through the encoder in inference mode (running BatchNorm statistics), sharded
over the mesh; padded rows are dropped and every process gets all features.
`evaluate_frozen` runs the two frozen-feature protocols (kNN and the L-BFGS
linear probe) on the same features, as pretraining's final and periodic
evaluations do.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from absl import logging

import jax
import numpy as np
from jax.experimental import multihost_utils

from sslx import data
from sslx.core import mesh as mesh_lib
from sslx.data import augment
from sslx.evaluation import knn
from sslx.evaluation import linear_probe

PyTree = Any


def make_embed_fn(encoder, mean, std, dtype="float32"):
  """jit(variables, uint8 images) -> pooled features: normalise, then the encoder in inference mode."""
  @jax.jit
  def embed(variables, images):
    x = augment.normalize(augment.to_float01(images), mean, std, dtype)
    return encoder.apply(variables, x, train=False).pooled
  return embed


def extract_features(embed_fn: Callable[[jax.Array], jax.Array], batches,
                     mesh) -> tuple[np.ndarray, np.ndarray]:
  """Runs `embed_fn(images) -> features` over eval batches on the mesh.

  `batches` yields per-process dicts with 'image', 'label', 'mask' and
  'index' (the example's position in the split); padded rows (mask False) are
  dropped. Every process gets all features back, in the split's order: a
  global batch holds each process's next rows side by side, so without the
  reordering the rows (and every probe fitted on them, and which rows a
  few-label subset picks) would depend on the number of processes.
  """
  features, labels, indices = [], [], []
  for batch in batches:
    global_batch = mesh_lib.to_global(batch, mesh)
    out = embed_fn(global_batch["image"])
    gathered = multihost_utils.process_allgather(
        {"f": out, "y": global_batch["label"], "m": global_batch["mask"],
         "i": global_batch["index"]}, tiled=True)
    mask = np.asarray(gathered["m"], bool)
    features.append(np.asarray(gathered["f"], np.float32)[mask])
    labels.append(np.asarray(gathered["y"])[mask])
    indices.append(np.asarray(gathered["i"])[mask])
  order = np.argsort(np.concatenate(indices), kind="stable")
  return np.concatenate(features)[order], np.concatenate(labels)[order]


class FeatureExtractor:
  """Features of an encoder (module + variables) for whole splits of one dataset."""

  def __init__(self, encoder, variables: PyTree, *, data_config, mean, std, mesh,
               dtype="float32", embed_fn=None):
    """`embed_fn`: a `make_embed_fn` of this encoder to reuse (its compilation with it)."""
    self.encoder, self.data_config, self.mesh = encoder, data_config, mesh
    self.variables = mesh_lib.replicate(variables, mesh)
    self._embed = embed_fn or make_embed_fn(encoder, mean, std, dtype)

  def __call__(self, split: str, *, batch_size: int, indices=None, max_examples=None):
    """(features [N, D] float32, labels [N]) of `split` ('train' or 'test'); global batch size."""
    it = data.make_eval_iterator(self.data_config, split,
                                 batch_size=batch_size // jax.process_count(),
                                 indices=indices, max_examples=max_examples)
    return extract_features(lambda x: self._embed(self.variables, x), it, self.mesh)


def evaluate_frozen(extract: FeatureExtractor, *, num_classes: int, batch_size: int,
                    knn_k: int | None, knn_temperature: float = 0.1, linear: bool = True,
                    max_train_examples: int | None = None, seed: int = 0,
                    few_label_subsets: dict[int, list] | None = None,
                    few_label_l2: float | None = None, return_features: bool = False):
  """kNN (when knn_k is set) and linear-probe top-1/top-5 on the test split, same features.

  `few_label_subsets` {N: [indices into the train split, one per draw]}, or a
  function from the train labels to it (the labels come with the features, so
  no separate pass over the split), adds `few_label_linear`: {N: mean/std
  top-1 of probes fitted on those images only}.
  With `return_features`, returns (results, {'train': (x, y), 'test': (x, y)}).
  """
  clock = _Clock()
  train_x, train_y = extract("train", batch_size=batch_size, max_examples=max_train_examples)
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
    from sslx.evaluation import few_label  # pylint: disable=import-outside-toplevel
    largest = max(len(indices) for chosen in few_label_subsets.values() for indices in chosen)
    results["few_label_linear"] = {
        n: few_label.linear_few_label(train_x, test_x, test_y, train_y, chosen,
                                      num_classes=num_classes,
                                      l2=few_label_l2 or few_label.DEFAULT_L2, pad_to=largest)
        for n, chosen in few_label_subsets.items()}
    clock.lap("few-label probes")
  if return_features:
    return results, {"train": (train_x, train_y), "test": (test_x, test_y)}
  return results


class _Clock:
  """Logs how long each part of an evaluation took (where the quick start's minutes go)."""

  def __init__(self):
    self._t = time.perf_counter()

  def lap(self, what: str) -> None:
    now = time.perf_counter()
    logging.info("evaluation: %s took %.1fs", what, now - self._t)
    self._t = now
