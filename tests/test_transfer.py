"""Transfer evaluation pieces: label subsets, checkpoints, the linear heads, frozen fine-tuning."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sslx import data
from sslx import errors
from sslx.core.train_state import TrainState
from sslx.data.info import Preprocessing
from sslx.evaluation import finetuning
from sslx.jobs import linear_eval
from sslx import models
from sslx.evaluation import transfer
from sslx.data import subsets

# Unequal classes, as real datasets have.
LABELS = np.repeat(np.arange(5), [100, 50, 200, 7, 1])


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 1.0])
def test_fraction_subset_is_stratified(fraction):
  chosen = subsets.stratified_subset(LABELS, fraction=fraction, seed=3)
  assert np.all(np.diff(chosen) > 0)  # sorted, no repeats
  counts = np.bincount(LABELS[chosen], minlength=5)
  expected = [max(1, int(round(fraction * n))) for n in np.bincount(LABELS)]
  np.testing.assert_array_equal(counts, expected)


def test_per_class_subset_takes_n_of_each_class_or_all_of_a_small_one():
  chosen = subsets.stratified_subset(LABELS, per_class=10, seed=0)
  np.testing.assert_array_equal(np.bincount(LABELS[chosen]), [10, 10, 10, 7, 1])


def test_subset_is_a_function_of_labels_size_and_seed_only():
  a = subsets.stratified_subset(LABELS, fraction=0.1, seed=7)
  np.testing.assert_array_equal(a, subsets.stratified_subset(LABELS.copy(), fraction=0.1, seed=7))
  assert not np.array_equal(a, subsets.stratified_subset(LABELS, fraction=0.1, seed=8))
  # Class c's choice does not depend on the other classes (per-class generators):
  # dropping class 0 keeps exactly the same images of classes 1-4.
  rest = LABELS[LABELS > 0]
  b = subsets.stratified_subset(rest, fraction=0.1, seed=7)
  np.testing.assert_array_equal(b + 100, a[LABELS[a] > 0])
  # Unlabelled examples (-1) are never chosen.
  with_unlabelled = np.concatenate([LABELS, -np.ones(30, int)])
  assert np.all(with_unlabelled[subsets.stratified_subset(with_unlabelled, fraction=1.0)] >= 0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "exactly one"), (dict(fraction=0.1, per_class=3), "exactly one"),
    (dict(fraction=0.0), "(0, 1]"), (dict(fraction=1.5), "(0, 1]"), (dict(per_class=0), ">= 1")])
def test_subset_arguments_are_checked(kwargs, message):
  with pytest.raises(errors.ConfigError, match=message.replace("(", r"\(").replace("]", r"\]")):
    subsets.stratified_subset(LABELS, **kwargs)


def test_eval_iterator_reads_exactly_the_subset(tmp_path):
  data_config = ml_collections.ConfigDict(dict(
      dataset="mnist5k", data_dir=str(tmp_path), download=True, image_size=28,
      eval_crop_fraction=1.0, shuffle_buffer=100, cache=True, num_parallel_calls=1, prefetch=0))
  labels = subsets.read_labels(data_config, "train")
  assert labels.shape == (4000,) and set(np.unique(labels)) == set(range(10))
  chosen, read = subsets.label_subset(data_config, "train", fraction=0.01, per_class=None,
                                      seed=0)
  np.testing.assert_array_equal(read, labels)
  assert len(chosen) == 40
  got_images, got_labels = [], []
  for batch in data.make_eval_iterator(data_config, "train", batch_size=16, indices=chosen):
    got_images.append(batch["image"][batch["mask"]])
    got_labels.append(batch["label"][batch["mask"]])
  np.testing.assert_array_equal(np.concatenate(got_labels), labels[chosen])
  # The same images as reading the whole split and picking the indices.
  everything = np.concatenate([b["image"] for b in data.make_eval_iterator(
      data_config, "train", batch_size=1000)])
  np.testing.assert_array_equal(np.concatenate(got_images), everything[chosen])


def test_parse_checkpoint():
  assert transfer.parse_checkpoint("random", None) == ("random", None)
  assert transfer.parse_checkpoint("/a/run/checkpoints/600/", None) == ("/a/run", 600)
  assert transfer.parse_checkpoint("/a/run", 200) == ("/a/run", 200)
  with pytest.raises(errors.ConfigError, match="checkpoint is not set"):
    transfer.parse_checkpoint(None, None)
  with pytest.raises(errors.ConfigError, match="names step 600"):
    transfer.parse_checkpoint("/a/run/checkpoints/600", 200)


def test_multi_head_loss_matches_independent_numpy_heads():
  """Each head's gradient is that of its own CE + wd/2 |W|^2 (numpy, from the formula)."""
  rng = np.random.default_rng(1)
  f = rng.normal(size=(12, 5)).astype(np.float32)
  y = rng.integers(0, 3, size=12)
  heads = {"w": rng.normal(size=(4, 5, 3)).astype(np.float32),
           "b": rng.normal(size=(4, 3)).astype(np.float32)}
  wds = np.array([0.0, 0.1, 0.0, 1.0], np.float32)
  grads = jax.grad(linear_eval.multi_head_loss)(heads, f, y, wds)
  for g in range(4):
    logits = f @ heads["w"][g] + heads["b"][g]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    residual = (p - np.eye(3)[y]) / len(y)
    np.testing.assert_allclose(grads["w"][g], f.T @ residual + wds[g] * heads["w"][g], atol=1e-5)
    np.testing.assert_allclose(grads["b"][g], residual.sum(0), atol=1e-5)


def test_holdout_split_is_disjoint_stratified_and_covers_all():
  labels = np.repeat(np.arange(4), 50)
  fit, held = linear_eval.holdout_split(labels, 0.1, seed=0)
  assert not set(fit) & set(held) and len(fit) + len(held) == 200
  np.testing.assert_array_equal(np.bincount(labels[held]), [5, 5, 5, 5])


_BACKBONE = models.get_backbone(
    ml_collections.ConfigDict(dict(name="resnet10", width=0.125, stem="cifar")))


def _tiny_finetune(frozen_groups, ratio, steps=3):
  model_config = ml_collections.ConfigDict(dict(name="resnet10", width=0.125, stem="cifar"))
  encoder = models.create_encoder(model_config, frozen_groups=frozen_groups)
  head = finetuning.ClassifierHead(3)
  init = models.create_encoder(model_config).init(jax.random.PRNGKey(0),
                                                   jnp.zeros((1, 16, 16, 3)), train=False)
  head_init = head.init(jax.random.PRNGKey(1),
                        jnp.zeros((1, models.feature_dim(model_config))), train=False)
  params = {"encoder": init["params"], "head": head_init["params"]}
  tx = finetuning.create_optimizer(params, backbone=models.get_backbone(model_config),
                                 frozen_groups=frozen_groups, peak_lr=0.5,
                                 backbone_lr_ratio=ratio, weight_decay=1e-3, momentum=0.9,
                                 warmup_steps=0, train_steps=steps)
  state = TrainState.create(params=params, batch_stats={"encoder": init["batch_stats"],
                                                        "head": head_init["batch_stats"]},
                            opt_state=tx.init(params))
  prep = Preprocessing(image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)
  step = jax.jit(finetuning.make_train_step(encoder, head, tx, prep, jnp.float32))
  rng = np.random.default_rng(0)
  start = state
  for _ in range(steps):
    images = rng.integers(0, 256, size=(8, 1, 16, 16, 3), dtype=np.uint8)
    state, _ = step(state, {"views": {"v1": images}, "label": rng.integers(0, 3, size=8)})
  return start, state


def _by_group(tree):
  out = {}
  for path, leaf in jax.tree.leaves_with_path(tree):
    out.setdefault(_BACKBONE.layer_group([str(k.key) for k in path]), []).append(
        np.asarray(leaf))
  return out


@pytest.mark.parametrize("train_from", ["stage1", "stage3", "head"])
def test_frozen_layers_keep_weights_and_bn_statistics(train_from):
  frozen = finetuning.train_from_choices(_BACKBONE).index(train_from)
  start, end = _tiny_finetune(frozen, ratio=0.1)
  for tree in ("params", "batch_stats"):
    before = _by_group(getattr(start, tree)["encoder"])
    after = _by_group(getattr(end, tree)["encoder"])
    for i, group in enumerate(models.LAYER_GROUPS):
      same = all(np.array_equal(a, b) for a, b in zip(before[group], after[group]))
      assert same == (i < frozen), (tree, group, train_from)
  assert not np.array_equal(start.params["head"]["out"]["kernel"], end.params["head"]["out"]["kernel"])


def test_backbone_learning_rate_ratio_scales_the_encoder_update():
  """SGD's first step is -lr * grad: the encoder moves ratio x what it moves at ratio 1."""
  start, full = _tiny_finetune(0, ratio=1.0, steps=1)
  _, tenth = _tiny_finetune(0, ratio=0.1, steps=1)
  delta = lambda s: jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b),
                                 s.params, start.params)
  chex.assert_trees_all_close(jax.tree.map(lambda d: 0.1 * d, delta(full)["encoder"]),
                              delta(tenth)["encoder"], atol=1e-7, rtol=1e-4)
  chex.assert_trees_all_close(delta(full)["head"], delta(tenth)["head"], atol=1e-7)


def test_param_labels_name_every_group():
  params = {"encoder": {"stem_conv": {"kernel": 0}, "stage2_block0": {"conv1": {"kernel": 0}}},
            "head": {"out": {"kernel": 0}}}
  labels = finetuning.param_labels(params, frozen_groups=2, backbone=_BACKBONE)
  assert labels == {"encoder": {"stem_conv": {"kernel": "frozen"},
                                "stage2_block0": {"conv1": {"kernel": "encoder"}}},
                    "head": {"out": {"kernel": "head"}}}
