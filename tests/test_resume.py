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
    preempt_after(m, progress_lib.Progress, STEPS // 2)
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
def test_checkpoint_of_another_method_architecture_or_size_is_named(tmp_path):
  workdir = str(tmp_path / "run")
  config = byol(tmp_path)
  config.train_steps = 2
  pretrain.run(config, workdir)
  ckpts = checkpointing.checkpoint_dir(workdir)

  # Through the trainer, as a user meets it: even with resume_from_older, a
  # mismatch is not damage, so nothing is moved aside.
  other = simclr(tmp_path)
  other.resume_from_older = True
  with pytest.raises(errors.CheckpointMismatchError) as error:
    pretrain.run(other, workdir)
  message = str(error.value)
  assert message.startswith(f"Checkpoint {ckpts}/2 does not match this config: it was written "
                            "by method 'byol', and this config is method 'simclr'.")
  assert "use another --workdir" in message
  assert sorted(os.listdir(ckpts)) == ["2"]

  # The other differences, checked on abstract states (nothing compiled).
  wider = byol(tmp_path)
  wider.model.width = 0.25
  adamw = byol(tmp_path)
  adamw.optimizer.name = "adamw"
  heads = byol(tmp_path)
  heads.byol.projector_dim = 8
  ckpt = checkpointing.Checkpointer(workdir, max_to_keep=3, read_only=True)
  mesh = mesh_lib.create_mesh(2)
  for bad, why in [
      (wider, "another architecture or optimizer (model.width=0.125 there, 0.25 here)"),
      (adamw, "another architecture or optimizer (optimizer.name="
              f"{byol(tmp_path).optimizer.name!r} there, 'adamw' here)"),
      (heads, "online/params/model/predictor/dense0/kernel has shape (16, 32) there and "
              "(8, 32) here"),
      (config, None)]:
    found = ckpt.mismatch(2, pretrain.Trainer(bad, INFO, mesh).abstract_state(), bad)
    if why is None:  # the config that wrote it
      assert found is None
    else:
      assert why in found
  ckpt.close()
