"""SIGTERM / SIGINT during training: finish the step, checkpoint it, exit 75; a rerun resumes."""

import logging
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from sslx.core import checkpointing
from sslx.core import preemption
from sslx.jobs import pretrain
from conftest import REPO, TINY_FLAGS, main_config, subprocess_env


FLAGS = ["--config.log_every_steps=1", "--config.checkpoint_every_steps=1000",
         "--config.cpu_devices=2", "--config.eval.knn=False", "--config.eval.linear=False"]


def _start(workdir, tfds_dir, *flags):
  cmd = [sys.executable, "main.py", "--config=configs/byol.py", f"--workdir={workdir}",
         f"--config.data.data_dir={tfds_dir}", *TINY_FLAGS, *FLAGS, *flags]
  env = subprocess_env()
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM])  # SIGINT: same handler, tested below
def test_signal_saves_the_current_step_and_a_rerun_resumes(tmp_path, tfds_dir, sig, caplog):
  workdir = str(tmp_path / "run")
  proc = _start(workdir, tfds_dir, "--config.train_steps=100000")
  # Wait until training is under way (a few logged steps), then signal it.
  deadline = time.time() + 300
  stderr = []
  for line in proc.stderr:
    stderr.append(line)
    if re.search(r"step 3/100000", line) or time.time() > deadline:
      break
  proc.send_signal(sig)
  rest_out, rest_err = proc.communicate(timeout=300)
  stderr = "".join(stderr) + rest_err
  assert proc.returncode == preemption.EXIT_CODE, stderr[-3000:]
  match = re.search(rf"Stopped by {signal.Signals(sig).name} after step (\d+); newest "
                    r"checkpoint: .*/checkpoints/(\d+)\. Rerun the same command to resume", stderr)
  assert match, stderr[-3000:]
  stopped = int(match.group(1))
  assert stopped >= 3 and int(match.group(2)) == stopped and "Traceback" not in stderr
  ckpt = checkpointing.Checkpointer(workdir, max_to_keep=1, read_only=True)
  assert ckpt.latest_step() == stopped  # no periodic save was due: this one is the signal's

  # The rerun (here asked to stop two steps later, in this process) resumes at the saved step.
  caplog.set_level(logging.INFO)
  rerun = pretrain.run(main_config(tfds_dir, *FLAGS, f"--config.train_steps={stopped + 2}",
                                   "--config.resume_changes=train_steps"),
                       workdir)
  assert rerun["step"] == stopped + 2
  assert f"Resuming from {ckpt.directory}/{stopped}" in caplog.text
  assert f"step {stopped + 1}: compiled and ran the first step" in caplog.text


@pytest.mark.parametrize("sig", preemption.SIGNALS)
def test_both_signals_request_a_stop_and_handlers_are_restored(sig):
  before = signal.getsignal(sig)
  with preemption.StopRequest() as stop:
    assert not stop.requested()
    os.kill(os.getpid(), sig)
    os.kill(os.getpid(), signal.SIGTERM)  # a second signal while stopping changes nothing
    time.sleep(0.1)  # Python runs handlers between bytecodes of the main thread
    assert stop.requested() and stop.signal_name == signal.Signals(sig).name
  assert signal.getsignal(sig) is before
