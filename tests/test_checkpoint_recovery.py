"""A corrupt newest checkpoint: a clear error naming it, and an opt-in fallback that loses nothing."""

import logging
import os

import pytest

from sslx.jobs import pretrain
from conftest import main_config, run_main as _main


@pytest.mark.slow
def test_truncated_newest_checkpoint_is_named_and_the_previous_one_can_be_taken(tmp_path,
                                                                                tfds_dir, caplog):
  workdir = str(tmp_path / "run")
  flags = ["--config.cpu_devices=2", "--config.eval.knn=False", "--config.eval.linear=False",
           "--config.resume_changes=train_steps"]  # the reruns train longer
  # The runs before and after the failure in this process; the failure through main.py.
  pretrain.run(main_config(tfds_dir, "--config.train_steps=4", *flags), workdir)
  ckpts = os.path.join(workdir, "checkpoints")
  # Truncate every data file of step 4's online parameters (a half-written copy, a bad disk).
  online = os.path.join(ckpts, "4", "online")
  truncated = 0
  for root, _, files in os.walk(online):
    for name in files:
      if os.path.basename(root) == "d":
        os.truncate(os.path.join(root, name), 10)
        truncated += 1
  assert truncated

  failed = _main(workdir, tfds_dir, "--config.train_steps=6", *flags)
  assert failed.returncode == 2
  # Reported as a one-line error, not a crash (main.py silences the asyncio
  # "Event loop is closed" noise that Orbax's threads can print at exit).
  assert f"error: Cannot restore checkpoint {ckpts}/4" in failed.stderr
  assert "Traceback" not in failed.stderr and "Event loop is closed" not in failed.stderr
  assert "Older checkpoints: steps 2" in failed.stderr and "resume_from_older=True" in failed.stderr
  assert sorted(os.listdir(ckpts)) == ["2", "4"]  # nothing moved or deleted without the flag

  caplog.set_level(logging.INFO)
  resumed = pretrain.run(main_config(tfds_dir, "--config.train_steps=6",
                                     "--config.resume_from_older=True", *flags), workdir)
  assert resumed["step"] == 6
  assert f"Resuming from {ckpts}/2" in caplog.text
  assert "step 3: compiled and ran the first step" in caplog.text
  # The bad step is kept for inspection beside the new ones.
  assert sorted(os.listdir(ckpts)) == ["2", "4", "4.unrestorable", "6"]
