"""Few-label evaluation: what pretraining buys when only N images per class are labelled.

Label efficiency is self-supervision's promise (SimCLR, Chen et al., 2020,
Sec. 6 and Table 7; BYOL Table 2: 1% and 10% of ImageNet's labels). For each
N in `labels_per_class`, and each of `draws` random labelled subsets
(`sslx.data.subsets.stratified_subset`, seeds seed..seed+draws-1, the same
images for every encoder):

  * linear probe: multinomial logistic regression (L-BFGS) on frozen features
    of the N x C labelled images, standardised with the mean and std of the
    whole train split's features (which needs no labels), at a fixed L2
    strength: with one image per class there is nothing to hold out for
    choosing it;
  * from scratch: the same architecture, randomly initialised, trained with
    labels only (cross-entropy, SGD + Nesterov, random crops) on those
    images: the supervised baseline pretraining has to beat.

Accuracies are the mean (and standard deviation) over the draws, on the
whole test split.
"""

from __future__ import annotations

from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sslx import data
from sslx.core import compile_once
from sslx.core import health
from sslx.core import loop as loop_lib
from sslx.core import mesh as mesh_lib
from sslx.core import rngs as rngs_lib
from sslx.core.train_state import TrainState
from sslx.data import subsets
from sslx.data.info import DatasetInfo, Preprocessing
from sslx.evaluation import features as features_lib
from sslx.evaluation import finetuning
from sslx.evaluation import linear_probe
from sslx.evaluation.metrics import top1_top5

# With 1-10 images per class there is no held-out set to choose the L2
# strength on; 1e-2 (on standardised features, mean cross-entropy) is the
# middle of the full probe's grid, not a tuned value (`eval.few_label_l2`).
DEFAULT_L2 = 1e-2


def draw_subsets(train_labels: np.ndarray, per_class: int, draws: int,
                 seed: int) -> list[np.ndarray]:
  """`draws` stratified subsets of `per_class` labelled images each (indices into the split)."""
  return [subsets.stratified_subset(train_labels, per_class=per_class, seed=seed + d)
          for d in range(draws)]


def linear_few_label(train_x: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                     train_y: np.ndarray, chosen: list[np.ndarray], *, num_classes: int,
                     l2: float = DEFAULT_L2, pad_to: int | None = None) -> dict[str, float]:
  """Mean/std test top-1 of logistic regressions fitted on each subset in `chosen`.

  Every fit is padded to `pad_to` rows (default: the largest subset), so all
  share one compilation; the padding has zero weight.
  """
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  x = jnp.asarray((train_x - mean) / std, jnp.float32)
  tx = jnp.asarray((test_x - mean) / std, jnp.float32)
  scores, largest = [], pad_to or max(len(indices) for indices in chosen)
  for indices in chosen:
    params = linear_probe.fit_logistic_regression(x[indices], jnp.asarray(train_y[indices]), l2,
                                                  num_classes=num_classes, pad_to=largest)
    logits = np.asarray(tx @ params["w"] + params["b"])
    scores.append(top1_top5(logits, test_y, num_classes)["top1"])
  return _summary(scores)


def _summary(scores, diverged: list[str] | None = None) -> dict[str, Any]:
  """Mean and spread of the draws' test top-1; draws that diverged are named, not averaged."""
  out = {"top1": float(np.mean(scores)) if scores else float("nan"),
         "top1_std": float(np.std(scores)) if scores else float("nan"),
         "draws": len(scores), "per_draw": [float(s) for s in scores]}
  if diverged:
    out["diverged"] = diverged
  return out


def cell(result: dict[str, Any], width: int = 6) -> str:
  """A table cell: the mean top-1, or 'diverged' where every draw diverged."""
  if result.get("diverged") and not result.get("draws"):
    return f"{'diverged':>{width}}"
  return f"{result['top1']:>{width}.1%}"


class ScratchTrainer:
  """Trains the encoder architecture from random init on a few labelled images.

  One jitted step (compiled once) serves every subset: `steps` steps of
  `batch_size` random crops from the subset's images, repeated and shuffled
  by the pretraining pipeline, with fine-tuning's step and head
  (sslx/evaluation/finetuning.py), on the one training loop
  (sslx/core/loop.py) without checkpoints: a non-finite step stops that
  draw (`nonfinite`, pretraining's policy) and the table says it diverged
  instead of printing a number for it.
  """

  def __init__(self, backbone, *, info: DatasetInfo, preprocessing: Preprocessing, data_config,
               mesh, config: ml_collections.ConfigDict, nonfinite: ml_collections.ConfigDict,
               dtype=jnp.float32):
    self.backbone, self.info, self.preprocessing = backbone, info, preprocessing
    self.data_config = preprocessing.data_config(data_config)
    self.mesh, self.config, self.dtype = mesh, config, dtype
    self.loop_config = ml_collections.ConfigDict(dict(
        nonfinite=nonfinite.to_dict(), log_every_steps=config.steps,
        checkpoint_every_steps=None))
    self.encoder = backbone.module(dtype)
    self.head = finetuning.ClassifierHead(info.num_classes)
    self._embed = features_lib.make_embed_fn(self.encoder, preprocessing, dtype)
    c = config
    self.tx = finetuning.create_optimizer(
        jax.eval_shape(self._init_params, rngs_lib.seed_key(0))[0], backbone=backbone,
        frozen_groups=0, peak_lr=c.base_learning_rate * c.batch_size / 256,
        backbone_lr_ratio=1.0, weight_decay=c.weight_decay, momentum=0.9, warmup_steps=0,
        train_steps=c.steps)
    # One compilation each serves every subset (same shapes, new seed).
    self._init = compile_once.jit(self._init_state)
    self._step = jax.jit(finetuning.make_train_step(self.encoder, self.head, self.tx,
                                                    preprocessing, dtype, nonfinite.action),
                         donate_argnums=0)

  def _init_params(self, key):
    size = self.preprocessing.image_size
    enc = self.encoder.init(rngs_lib.derive(key, "init/encoder"), jnp.zeros((1, size, size, 3)),
                            train=False)
    head_params, head_stats = finetuning.init_head(self.head, rngs_lib.derive(key, "init/head"),
                                                   self.backbone.feature_dim)
    return ({"encoder": enc["params"], "head": head_params},
            {"encoder": enc["batch_stats"], "head": head_stats})

  def _init_state(self, key):
    params, batch_stats = self._init_params(key)
    return TrainState.create(params=params, batch_stats=batch_stats, opt_state=self.tx.init(params),
                             rng=rngs_lib.derive(key, "train"))

  def test_accuracy(self, indices: np.ndarray, seed: int, eval_batch_size: int) -> float:
    """Test top-1 after training from scratch on the train images `indices` (split indices)."""
    state = mesh_lib.replicate(self._init(rngs_lib.seed_key(seed)), self.mesh)
    views = ml_collections.ConfigDict({"v1": self.config.view})
    loop = loop_lib.Loop(config=self.loop_config, mesh=self.mesh, num_steps=self.config.steps,
                         global_batch_size=self.config.batch_size,
                         log_every_steps=self.config.steps,  # one line per draw
                         name=f"from-scratch baseline ({len(indices)} images, seed {seed})")
    state, _ = loop.run(state, self._step, lambda start: data.make_pretrain_iterator(
        self.data_config, views, global_batch_size=self.config.batch_size, seed=seed,
        split=self.info.train_split, indices=indices, start_step=start))
    state = jax.device_get(state)
    variables = mesh_lib.replicate(
        {"params": state.params["encoder"], "batch_stats": state.batch_stats["encoder"]},
        self.mesh)
    test_images = data.make_eval_iterator(self.data_config, "test",
                                          batch_size=eval_batch_size // jax.process_count())
    feats = features_lib.extract_features(lambda x: self._embed(variables, x), test_images,
                                          self.mesh)
    logits = np.asarray(self.head.apply({"params": state.params["head"],
                                         "batch_stats": state.batch_stats["head"]},
                                        jnp.asarray(feats[0]), train=False))
    return top1_top5(logits, feats[1], self.info.num_classes)["top1"]

  def evaluate(self, chosen: list[np.ndarray], seed: int, *,
               eval_batch_size: int) -> dict[str, Any]:
    """Mean test top-1 over the draws `chosen` (split indices); diverged draws are named."""
    scores, diverged = [], []
    for d, indices in enumerate(chosen):
      try:
        scores.append(self.test_accuracy(indices, seed + d, eval_batch_size))
      except health.NonFiniteError as e:
        logging.warning("The from-scratch baseline of draw %d diverged: %s", d, e)
        diverged.append(f"draw {d}: {str(e).split(';')[0]}")
    return _summary(scores, diverged)
