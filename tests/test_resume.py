"""Exact resume (2N straight == N, preempted, resumed to 2N) and checkpoints of another config."""

import os

import chex
import pytest

from configs import moco as moco_config
from configs import simclr as simclr_config
from sslx.core import checkpointing
from sslx import errors
from sslx.core import mesh as mesh_lib
from sslx.jobs import pretrain
from sslx.core import progress as progress_lib
from conftest import INFO, preempt_after, tiny_config

STEPS = 6


def _small(config, tmp_path):
  config.model.update(name="resnet10", width=0.125)
  config.update(train_steps=STEPS, batch_size=16, num_devices=2, log_every_steps=1,
                checkpoint_every_steps=2)
  config.optimizer.warmup_epochs = 0.0
  config.data.update(data_dir=str(tmp_path.parent / "tfds"), image_size=16)
  config.eval.update(knn=False, linear=False)
  return config


def byol(tmp_path):
  return _small(tiny_config(), tmp_path)


def moco_v2(tmp_path):
  c = _small(moco_config.get_config("mnist5k,v2"), tmp_path)
  c.moco.update(dim=16, projector_hidden_dims=(32,), queue_size=64, bn_groups=2)
  return c


def simclr(tmp_path):
  c = _small(simclr_config.get_config(), tmp_path)
  c.simclr.update(projector_hidden_dims=(32,), projector_dim=16)
  return c


@pytest.mark.slow
def test_preempted_and_resumed_run_ends_with_the_same_state(tmp_path, monkeypatch):
  # MoCo v2 has every kind of state: an EMA key encoder, a queue and its
  # pointer, and a random BN shuffle per step. (BYOL's EMA target is checked
  # bit for bit after kill -9 in tests/test_crash_safety.py.)
  config = moco_v2(tmp_path)
  straight = str(tmp_path / "straight")
  pretrain.run(config, straight)

  interrupted = str(tmp_path / "interrupted")
  with monkeypatch.context() as m:
    # SIGTERM while step 2 is logged: step 3's stop decision sees it, so step 3 is the last.
    preempt_after(m, progress_lib.Progress, STEPS // 2 - 1)
    with pytest.raises(errors.Preempted, match=f"after step {STEPS // 2}"):
      pretrain.run(config, interrupted)
  assert checkpointing.Checkpointer(interrupted, max_to_keep=3, read_only=True).latest_step() == 3
  pretrain.run(config, interrupted)

  expected, step = checkpointing.load_all(straight)
  resumed, resumed_step = checkpointing.load_all(interrupted)
  assert step == resumed_step == STEPS
  # Everything: weights, BN statistics, optimizer moments, EMA target / queue
  # and its pointer, step, rng. The resumed half recomputes the same data
  # order and augmentations from the step number.
  chex.assert_trees_all_close(resumed, expected, rtol=1e-6, atol=1e-7)
  assert set(expected) == {"online", "method_state", "opt_state", "train"}


@pytest.mark.slow
def test_a_rerun_that_changes_what_the_checkpoint_means_is_refused_naming_the_field(tmp_path):
  workdir = str(tmp_path / "run")
  config = byol(tmp_path)
  config.train_steps = 2
  pretrain.run(config, workdir)
  ckpts = checkpointing.checkpoint_dir(workdir)

  # Through the trainer, as a user meets it: even with resume_from_older, another run's
  # checkpoint is not damage, so nothing is moved aside.
  other = simclr(tmp_path)
  other.update(train_steps=2, resume_from_older=True)
  with pytest.raises(errors.CheckpointMismatchError) as error:
    pretrain.run(other, workdir)
  message = str(error.value)
  assert message.startswith(f"Cannot resume {ckpts}/2: it was written by another run: "
                            "config.method='byol' there, 'simclr' here;")
  assert "Use a new --workdir, or rerun with --config.resume_changes=method," in message
  assert "\n" not in message and sorted(os.listdir(ckpts)) == ["2"]

  # Each field, on abstract states (nothing compiled): what differs is named with both values.
  mesh = mesh_lib.create_mesh(2)

  def mismatch(changed, **fields):
    trainer = pretrain.Trainer(changed, INFO, mesh)
    ckpt = checkpointing.Checkpointer(workdir, max_to_keep=3, read_only=True,
                                      identity=pretrain.identity(changed, trainer))
    try:
      return ckpt.mismatch(2, trainer.abstract_state())
    finally:
      ckpt.close()

  def changed(**fields):
    c = byol(tmp_path)
    c.train_steps = 2
    for path, value in fields.items():
      node = c
      *parents, last = path.split("__")
      for parent in parents:
        node = node[parent]
      node[last] = value
    return c

  for fields, named in [
      (dict(batch_size=32), "config.batch_size=16 there, 32 here"),
      (dict(train_steps=4), "config.train_steps=2 there, 4 here"),
      (dict(seed=1), "config.seed=0 there, 1 here"),
      (dict(data__dataset="mnistm5k"), "config.data.dataset='mnist5k' there, 'mnistm5k' here"),
      (dict(data__image_size=20), "config.data.image_size=16 there, 20 here"),
      (dict(model__width=0.25), "config.model.width=0.125 there, 0.25 here"),
      (dict(optimizer__name="adamw"), "config.optimizer.name='sgd' there, 'adamw' here"),
      (dict(optimizer__base_learning_rate=0.123), "config.optimizer.base_learning_rate="),
      (dict(byol__tau_base=0.9), "config.byol.tau_base=0.996 there, 0.9 here"),
      (dict(views__v1__crop_area_min=0.2), "config.views.v1.crop_area_min=0.5 there, 0.2 here"),
  ]:
    found = mismatch(changed(**fields))
    assert found is not None and named in found, (fields, found)
    first = next(iter(fields)).replace("__", ".")
    assert f"--config.resume_changes={first}" in found, found
  # Fields that change nothing saved are free; so are accepted changes.
  assert mismatch(changed()) is None
  assert mismatch(changed(log_every_steps=7, checkpoint_every_steps=9, eval__knn_k=3,
                          plots__enabled=False, dtype="bfloat16", num_devices=1)) is None
  assert mismatch(changed(train_steps=4, resume_changes="train_steps")) is None
  # An accepted change of a head's size still meets the arrays' check.
  found = mismatch(changed(byol__projector_dim=8, resume_changes="byol"))
  assert "online/params/model/predictor/dense0/kernel has shape (16, 32) there and (8, 32) here" \
      in found


@pytest.mark.slow
def test_the_process_count_is_part_of_a_tfds_runs_fingerprint_only():
  config = {"job": "pretrain", "method": "byol", "data": {"dataset": "mnist5k"}}
  assert pretrain.fingerprint(config, 2)["process_count"] == 2
  for name in ("npz:/d.npz", "folder:/photos"):
    config["data"]["dataset"] = name
    assert "process_count" not in pretrain.fingerprint(config, 2)  # one stream for any count
