"""Fine-tuning and the augmented probe on the one loop: checkpoints, exact resume, guards."""

import json
import os

import chex
import numpy as np
import pytest

from conftest import preempt_after
from configs import finetune as finetune_config
from configs import linear_eval as linear_eval_config
from sslx import errors
from sslx.core import health
from sslx.core import checkpointing
from sslx.core import progress as progress_lib
from sslx.jobs import finetune
from sslx.jobs import linear_eval

N = 3  # steps before the preemption; the runs are 2N steps long


def _finetune_config(tfds_dir, **overrides):
  c = finetune_config.get_config()
  c.checkpoint = "random"  # no pretraining needed: the loop is what is tested
  c.model.update(name="resnet10", width=0.125)
  c.data.update(data_dir=tfds_dir, image_size=16)
  c.update(labels_per_class=4, batch_size=16, num_devices=2, log_every_steps=1,
           checkpoint_every_steps=2)
  c.eval.batch_size = 500
  c.finetune.epochs = 2 * N * 16 / 40  # 40 labelled images, batch 16: 2N steps
  c.update(overrides)
  return c


def _saved_state(workdir, step):
  return checkpointing.load_all(workdir, step)[0]


@pytest.mark.slow
def test_finetune_preempted_and_resumed_equals_straight_run(tmp_path, tfds_dir, monkeypatch):
  straight_dir, resumed_dir = str(tmp_path / "straight"), str(tmp_path / "resumed")
  straight = finetune.run(_finetune_config(tfds_dir), straight_dir)
  assert straight["train_steps"] == 2 * N

  with monkeypatch.context() as m:
    # SIGTERM while step N-1 is logged: step N's stop decision sees it.
    preempt_after(m, progress_lib.Progress, N - 1)
    with pytest.raises(errors.Preempted, match=rf"fine-tune step {N}; newest checkpoint: "
                                               rf".*/checkpoints/{N}\. Rerun"):
      finetune.run(_finetune_config(tfds_dir), resumed_dir)
  assert sorted(int(d) for d in os.listdir(os.path.join(resumed_dir, "checkpoints"))
                if d.isdigit()) == [2, N]  # the periodic one and the signal's
  assert not os.path.exists(os.path.join(resumed_dir, "eval_results.json"))
  resumed = finetune.run(_finetune_config(tfds_dir), resumed_dir)

  # Every saved array, bit for bit, and the same test result.
  chex.assert_trees_all_equal(_saved_state(resumed_dir, 2 * N), _saved_state(straight_dir, 2 * N))
  for key in ("top1", "final_train_loss"):
    assert resumed[key] == straight[key]

  # A rerun of the finished job restores the last step and evaluates it again.
  again = finetune.run(_finetune_config(tfds_dir), resumed_dir)
  assert again["top1"] == straight["top1"]

  # Another setting in the same workdir is named, not resumed and not overwritten.
  with pytest.raises(errors.CheckpointMismatchError, match="labels_per_class=4 there, 5 here"):
    finetune.run(_finetune_config(tfds_dir, labels_per_class=5), resumed_dir)

  # The fine-tuned encoder is read from the workdir like a pretrained one, with its input.
  saved = checkpointing.read_encoder(resumed_dir)
  assert saved.step == 2 * N and saved.record["params"] == ["encoder"]
  chex.assert_trees_all_equal(saved.variables["params"],
                              _saved_state(resumed_dir, 2 * N)["online"]["params"]["encoder"])


def test_finetune_stops_on_a_non_finite_loss(tmp_path, tfds_dir):
  config = _finetune_config(tfds_dir, checkpoint_every_steps=1)
  config.finetune.base_learning_rate = 1e38  # the first update overflows
  with pytest.raises(health.NonFiniteError, match=r"Non-finite .* at step \d"):
    finetune.run(config, str(tmp_path / "nan"))


def test_finetune_skip_counts_dropped_updates(tmp_path, tfds_dir):
  config = _finetune_config(tfds_dir, checkpoint_every_steps=1)
  config.finetune.base_learning_rate = 1e38
  config.nonfinite.update(action="skip", max_skipped=100)
  workdir = str(tmp_path / "skip")
  finetune.run(config, workdir)
  state = _saved_state(workdir, 2 * N)
  assert int(state["train"]["skipped_updates"]) >= 1
  for leaf in np.asarray(state["online"]["params"]["head"]["out"]["kernel"]).ravel():
    assert np.isfinite(leaf)


@pytest.mark.slow
def test_augmented_linear_probe_checkpoints_and_resumes(tmp_path, tfds_dir, monkeypatch):
  def config():
    c = linear_eval_config.get_config()
    c.checkpoint = "random"
    c.model.update(name="resnet10", width=0.125)
    c.data.update(data_dir=tfds_dir, image_size=16)
    c.update(labels_per_class=8, batch_size=16, num_devices=2, log_every_steps=1,
             checkpoint_every_steps=100)
    c.eval.batch_size = 500
    c.linear.update(augment=True, learning_rates=(0.1, 1.0), weight_decays=(0.0,),
                    epochs=2 * N * 16 / 72)  # 72 fit images (80 minus 8 held out): 2N steps
    return c

  straight = linear_eval.run(config(), str(tmp_path / "straight"))
  assert straight["train_steps"] == 2 * N
  with monkeypatch.context() as m:
    preempt_after(m, progress_lib.Progress, N - 1)
    with pytest.raises(errors.Preempted):
      linear_eval.run(config(), str(tmp_path / "resumed"))
  resumed = linear_eval.run(config(), str(tmp_path / "resumed"))
  chex.assert_trees_all_equal(_saved_state(str(tmp_path / "resumed"), 2 * N),
                              _saved_state(str(tmp_path / "straight"), 2 * N))
  assert resumed["sweep"] == straight["sweep"] and resumed["top1"] == straight["top1"]
  saved = json.load(open(tmp_path / "resumed" / "eval_results.json"))
  assert saved["top1"] == straight["top1"]
