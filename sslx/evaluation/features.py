"""Frozen-encoder features of whole splits: the one extractor for pretraining and the jobs.

Centre crops (`make_eval_iterator`), normalised with the dataset's statistics,
through the encoder in inference mode (running BatchNorm statistics), sharded
over the mesh; padded rows are dropped and every process gets all features.
The images are fed as the encoder's `Preprocessing` says (size, centre crop,
grey, mean and std: the encoder's own, not the evaluation dataset's), so an
encoder's features are the same whichever form the images come in and
whichever job asks (`sslx/evaluation/frozen.py` runs the protocols on them).

Which features (`config.eval.feature_layer`, `config.eval.feature_grid`): by
default the encoder's pooled representation, what the contrastive papers
probe. Any feature map of the backbone (`stem`, `stage1`, ... for a ResNet)
can be read instead, average-pooled over a `feature_grid` x `feature_grid`
partition of its positions and flattened, so that the spatial layout
survives. That is the classic pretext tasks' protocol: a linear classifier
on every layer's features, pooled to a few thousand dimensions (Zhang, Isola
& Efros 2016, Table 2; Zhang, Isola & Efros 2017, "split-brain", Table 2;
Gidaris et al. 2018, Tables 1 and 3), since a pretext task's last layers
specialise in the task.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from sslx import data
from sslx.core import mesh as mesh_lib
from sslx.data import augment
from sslx.data.info import Preprocessing

PyTree = Any


def grid_pool(feature_map: jax.Array, grid: int) -> jax.Array:
  """[B, H, W, C] -> [B, grid * grid * C]: the mean of each cell of a grid x grid partition.

  Cell i along an axis of size S spans [floor(i S / grid), ceil((i + 1) S / grid)),
  the rule of PyTorch's AdaptiveAvgPool2d: cells cover every position, and
  overlap by one where S is not a multiple of `grid`. Cells are flattened
  row-major, channels last; grid=1 is global average pooling.
  """
  b, h, w, c = feature_map.shape

  def cells(size):
    return [(i * size // grid, -(-(i + 1) * size // grid)) for i in range(grid)]

  x = feature_map.astype(jnp.float32)
  pooled = [jnp.mean(x[:, r0:r1, c0:c1], axis=(1, 2)) for r0, r1 in cells(h) for c0, c1 in cells(w)]
  return jnp.stack(pooled, axis=1).reshape(b, grid * grid * c)


def make_embed_fn(encoder, preprocessing: Preprocessing, dtype="float32", *,
                  layer: str | None = None, grid: int = 1):
  """jit(variables, uint8 images) -> features: normalise, then the encoder in inference mode.

  The images are the preprocessing's crops (the pipeline made them); this
  scales them to [0, 1] and normalises them with its mean and std. The
  features are the encoder's pooled representation, or with `layer` that
  feature map grid-pooled (`grid_pool`).
  """
  mean, std = preprocessing.mean, preprocessing.std

  @jax.jit
  def embed(variables, images):
    x = augment.normalize(augment.to_float01(images), mean, std, dtype)
    return select(encoder.apply(variables, x, train=False), layer, grid)
  return embed


def describe(layer: str | None, grid: int = 1) -> str:
  """'' for the pooled output, else ' on stage3 (2x2 grid)': what the printed results add."""
  return f" on {layer} ({grid}x{grid} grid)" if layer else ""


def select(output, layer: str | None = None, grid: int = 1) -> jax.Array:
  """The features frozen evaluation reads from a BackboneOutput (see the module doc)."""
  if layer is None:
    return output.pooled
  return grid_pool(output.feature_maps[layer], grid)


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

  def __init__(self, encoder, variables: PyTree, *, data_config, preprocessing: Preprocessing,
               mesh, dtype="float32", embed_fn=None, layer: str | None = None, grid: int = 1):
    """`data_config` names the dataset; `preprocessing` is the encoder's input. `embed_fn`: a
    `make_embed_fn` of this encoder and preprocessing to reuse (its compilation with it);
    otherwise one is made for `layer` and `grid` (`make_embed_fn`)."""
    self.encoder, self.mesh = encoder, mesh
    self.data_config = preprocessing.data_config(data_config)
    self.variables = mesh_lib.replicate(variables, mesh)
    self._embed = embed_fn or make_embed_fn(encoder, preprocessing, dtype, layer=layer, grid=grid)

  def __call__(self, split: str, *, batch_size: int, indices=None):
    """(features [N, D] float32, labels [N]) of `split` ('train' or 'test'), of the examples
    `indices` (sorted) or all; `batch_size` is global."""
    it = data.make_eval_iterator(self.data_config, split,
                                 batch_size=batch_size // jax.process_count(), indices=indices)
    return extract_features(lambda x: self._embed(self.variables, x), it, self.mesh)
