"""The few-label evaluation, the metrics log the plots read, and the pictures themselves."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from PIL import Image
import pytest

from sslx import data
from sslx.core import optim
from sslx.core import progress
from sslx.evaluation import few_label
from sslx.evaluation import plots
from sslx.jobs import pretrain
from conftest import tiny_config


def test_byol_predictor_rate_reaches_the_trainers_optimizer():
  """The trainer's optimizer (over {'model', 'probe'}) applies a method's param groups.

  A nested multi_transform once showed `param_group` the outer path
  ('model', 'predictor', ...), so every parameter silently stayed in the main group.
  """
  updates = {}
  for multiplier in (1.0, 10.0):
    config = tiny_config("byol")
    config.byol.predictor_learning_rate_multiplier = multiplier
    config.optimizer.update(name="sgd", momentum=0.0, weight_decay=0.0)
    trainer = pretrain.Trainer(config, _info(), _mesh())
    state = trainer.init_state(0)
    grads = jax.tree.map(jnp.ones_like, state.params)
    step_updates, _ = trainer.tx.update(grads, state.opt_state, state.params)
    # At step 0 the warmup-free schedule is at its peak; take the ratio of the update norms.
    updates[multiplier] = {k: float(optax.global_norm(v))
                           for k, v in step_updates["model"].items()}
    updates[multiplier]["probe"] = float(optax.global_norm(step_updates["probe"]))
  for network in ("encoder", "projector"):
    assert updates[10.0][network] == pytest.approx(updates[1.0][network], rel=1e-6)
  assert updates[10.0]["predictor"] == pytest.approx(10 * updates[1.0]["predictor"], rel=1e-5)
  assert updates[10.0]["probe"] == pytest.approx(updates[1.0]["probe"], rel=1e-6)


def test_a_method_without_groups_keeps_its_optimizer_state_layout():
  """Checkpoints written before param groups existed still restore: same tree for BYOL."""
  config = tiny_config("byol")
  config.byol.predictor_learning_rate_multiplier = 1.0  # no groups (the mnist5k preset has one)
  trainer = pretrain.Trainer(config, _info(), _mesh())
  params = trainer.abstract_state().params
  method_tx = optim.OPTIMIZERS.get(config.optimizer.name)(config.optimizer, lambda s: 1.0)
  old = optax.multi_transform(
      {"model": method_tx, "probe": optax.sgd(optax.constant_schedule(0.1), momentum=0.9)},
      param_labels={"model": "model", "probe": "probe"})
  assert (jax.tree.structure(jax.eval_shape(old.init, params))
          == jax.tree.structure(trainer.abstract_state().opt_state))


def _info():
  from conftest import INFO  # pylint: disable=g-import-not-at-top
  return INFO


def _mesh():
  from sslx.core import mesh  # pylint: disable=g-import-not-at-top
  return mesh.create_mesh(1)


def test_few_label_draws_are_stratified_seeded_and_shared():
  labels = np.repeat(np.arange(4), 30)
  draws = few_label.draw_subsets(labels, 5, 3, seed=7)
  assert len(draws) == 3
  for d in draws:
    np.testing.assert_array_equal(np.bincount(labels[d]), [5, 5, 5, 5])
  assert not np.array_equal(draws[0], draws[1])
  again = few_label.draw_subsets(labels, 5, 3, seed=7)
  assert all(np.array_equal(a, b) for a, b in zip(draws, again))


def test_few_label_probe_matches_a_numpy_reference():
  """The probe's accuracy: softmax regression fitted on the labelled rows only, standardised
  with the statistics of every training row (no labels needed), checked by gradient descent
  in numpy on the same objective (mean cross-entropy + l2/2 |W|^2)."""
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(3, 6)) * 1.5
  train_y = np.repeat(np.arange(3), 40)
  train_x = centres[train_y] + rng.normal(size=(120, 6))
  test_y = np.repeat(np.arange(3), 50)
  test_x = centres[test_y] + rng.normal(size=(150, 6))
  chosen = few_label.draw_subsets(train_y, 4, 2, seed=0)
  l2 = 0.1
  got = few_label.linear_few_label(train_x.astype(np.float32), test_x.astype(np.float32),
                                   test_y, train_y, chosen, num_classes=3, l2=l2)
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  expected = []
  for rows in chosen:
    x, y = (train_x[rows] - mean) / std, np.eye(3)[train_y[rows]]
    w, b = np.zeros((6, 3)), np.zeros(3)
    for _ in range(5000):
      logits = x @ w + b
      p = np.exp(logits - logits.max(1, keepdims=True))
      p /= p.sum(1, keepdims=True)
      w -= 0.5 * (x.T @ (p - y) / len(x) + l2 * w)
      b -= 0.5 * (p - y).mean(0)
    expected.append(np.mean(np.argmax(((test_x - mean) / std) @ w + b, 1) == test_y))
  np.testing.assert_allclose(got["per_draw"], expected, atol=1 / 150 + 1e-9)
  assert got["draws"] == 2 and got["top1"] == pytest.approx(np.mean(got["per_draw"]))
  assert got["top1_std"] == pytest.approx(np.std(got["per_draw"]))


def test_few_label_table_lines_up_encoders_and_the_scratch_baseline():
  config = ml_collections.ConfigDict(dict(data=dict(dataset="mnist5k"), eval=dict(
      few_labels=(10, 1), few_label_draws=5, scratch=dict(draws=1))))
  info = type("Info", (), {"test_split": "test"})
  row = lambda a, b: {1: {"top1": a}, 10: {"top1": b}}
  results = {"pretrained": {"few_label_linear": row(0.5, 0.9)},
             "random_init": {"few_label_linear": row(0.25, 0.6)},
             "scratch": {"few_label_scratch": row(0.2, 0.8)}}
  lines = pretrain.few_label_table(config, info, results).splitlines()
  assert lines[1].split() == ["labels", "per", "class", "1", "10"]
  assert lines[2].split()[-4:] == ["50.0%", "90.0%", "(5", "draws)"]
  assert lines[3].split()[-4:] == ["25.0%", "60.0%", "(5", "draws)"]
  assert lines[4].startswith("  from scratch") and lines[4].split()[-4:] == [
      "20.0%", "80.0%", "(1", "draw)"]
  # A baseline whose every draw diverged prints no number.
  results["scratch"]["few_label_scratch"][1] = {"top1": float("nan"), "draws": 0,
                                                "diverged": ["draw 0: Non-finite loss at step 2"]}
  lines = pretrain.few_label_table(config, info, results).splitlines()
  assert lines[4].split()[-4:] == ["diverged", "80.0%", "(1", "draw)"]


def test_a_diverged_from_scratch_draw_is_named_not_averaged(tmp_path):
  from sslx.core import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  from sslx.data.info import Preprocessing  # pylint: disable=import-outside-toplevel
  from sslx.evaluation import few_label  # pylint: disable=import-outside-toplevel
  from sslx import models  # pylint: disable=import-outside-toplevel
  config = tiny_config()
  config.data.data_dir = str(tmp_path / "tfds")
  config.eval.scratch.update(steps=3, batch_size=16, base_learning_rate=1e38)  # overflows
  info = data.get_dataset_info(config.data)
  scratch = few_label.ScratchTrainer(
      models.get_backbone(config.model), info=info,
      preprocessing=Preprocessing(image_size=16, mean=info.mean, std=info.std),
      data_config=config.data, mesh=mesh_lib.create_mesh(1), config=config.eval.scratch,
      nonfinite=config.nonfinite)
  result = scratch.evaluate([np.arange(0, 4000, 400)], seed=0, eval_batch_size=500)
  assert result["draws"] == 0 and result["diverged"][0].startswith("draw 0: Non-finite")
  assert few_label.cell(result).strip() == "diverged"


def test_metrics_log_keeps_one_run_across_resumes(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  log = progress.MetricsLog(path, start_step=0)
  for step in (2, 4, 6):
    log.append(step, {"loss": step / 10})
  # Resumed from the checkpoint of step 4: step 6 will be run again.
  log = progress.MetricsLog(path, start_step=4)
  log.append(6, {"loss": 0.5})
  assert progress.MetricsLog.read(path) == [{"step": 2, "loss": 0.2}, {"step": 4, "loss": 0.4},
                                            {"step": 6, "loss": 0.5}]
  # A fresh run in the same file starts it over.
  progress.MetricsLog(path, start_step=0)
  assert progress.MetricsLog.read(path) == []


def _png_size(path):
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with Image.open(path) as image:
    image.verify()
  with Image.open(path) as image:
    return image.size


def test_pictures_are_pngs_of_their_stated_size_with_the_logged_values(tmp_path):
  records = [{"step": s, "loss": 1.0 / s, "probe_accuracy": s / 10, "learning_rate": 0.1,
              "effective_rank": float("nan") if s == 2 else float(s)} for s in (2, 4, 6)]
  drawn = plots.training_curves(records, str(tmp_path / "c.png"))
  assert drawn["loss"] == ([2, 4, 6], [0.5, 0.25, 1 / 6])
  assert drawn["effective_rank"] == ([4, 6], [4.0, 6.0])  # a NaN (unlogged) point is left out
  assert _png_size(tmp_path / "c.png") == (1600, 320)  # 4 panels of 4 x 3.2 inches at 100 dpi

  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(3), 20)
  separated = np.eye(3)[labels] * 10 + rng.normal(size=(60, 3)) * 0.1
  coords = plots.embedding_map({"a": separated, "b": rng.normal(size=(60, 3))}, labels,
                               str(tmp_path / "m.png"))
  assert coords["a"].shape == (60, 2)
  # t-SNE keeps well-separated classes apart: each point's nearest neighbour is of its class.
  d = np.linalg.norm(coords["a"][:, None] - coords["a"][None], axis=-1) + np.eye(60) * 1e9
  assert np.all(labels[d.argmin(1)] == labels)
  assert _png_size(tmp_path / "m.png") == (1000, 500)

  bank = rng.normal(size=(30, 4))
  queries = bank[[3, 7]] * 2.0  # cosine similarity ignores the scale: its own row comes first
  neighbours = plots.nearest_neighbours(bank, queries, 8)
  assert neighbours[:, 0].tolist() == [3, 7]
  images = rng.integers(0, 256, (30, 28, 28, 1), np.uint8)
  plots.retrieval_grid(images[[3, 7]], images, neighbours, str(tmp_path / "r.png"),
                       query_labels=np.array([0, 1]), bank_labels=np.arange(30) % 2)
  assert _png_size(tmp_path / "r.png") == (990, 260)  # 9 x 2.6 inches at 100 dpi


def test_pictures_name_a_folders_classes(tmp_path, monkeypatch):
  drawn = []
  monkeypatch.setattr(plots, "save_figure", lambda fig, path: drawn.append(fig))
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(3), 10)
  names = ["cat", "dog", "ferret"]
  plots.embedding_map({"a": rng.normal(size=(30, 3))}, labels, str(tmp_path / "m.png"),
                      class_names=names)
  legend = drawn[-1].legends[0]
  assert [t.get_text() for t in legend.get_texts()] == names
  images = rng.integers(0, 256, (30, 8, 8, 3), np.uint8)
  plots.retrieval_grid(images[[4, 25]], images, np.array([[1, 2], [3, 4]]),
                       str(tmp_path / "r.png"), query_labels=np.array([0, 2]),
                       bank_labels=labels, class_names=names)
  rows = drawn[-1].axes[::3]  # the first panel of each row is its query
  assert [ax.get_ylabel() for ax in rows] == ["cat", "ferret"]
  # Without names, the legend shows the class indices.
  plots.embedding_map({"a": rng.normal(size=(30, 3))}, labels, str(tmp_path / "n.png"))
  assert [t.get_text() for t in drawn[-1].legends[0].get_texts()] == ["0", "1", "2"]
