"""main.py as several processes on this machine: checkpoints, preemption, a lost process, evaluation.

Each run starts `python main.py` once per process with `config.distributed`
naming 127.0.0.1 as the coordinator (gloo CPU collectives), as a user does
on a GPU cluster, and checks what the README promises of multi-host runs:
- a checkpoint written by 1 process resumes in 2 processes, and one written
  by 2 resumes in 1 (the SIGTERM test's rerun);
- on data read by index (npz, folders), 2 processes x 1 device continue a
  checkpoint as 1 process x 2 devices does: the same final metrics, bit for bit;
- SIGTERM to one process stops every process after the same step, with one
  checkpoint and exit code 75, and a rerun resumes;
- a process killed with SIGKILL makes the other exit, within seconds, with a
  one-paragraph error (no traceback) and exit code 75, the newest checkpoint
  still restores in full, and both processes rerun resume from it and save
  again;
- an evaluator job run by 2 processes writes one eval_results.json with the
  1-process result.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sslx.core import checkpointing
from sslx.jobs import JOBS
from conftest import REPO, TINY_EVAL, TINY_FLAGS, free_port, main_config, subprocess_env

pytestmark = pytest.mark.slow

FAST = ["--config.eval.knn=False", "--config.eval.linear=False", "--config.plots.enabled=False",
        "--config.cpu_devices=1"]


def _launch(workdir, tfds_dir, num_processes, *flags, config_file="configs/byol.py",
            tiny=TINY_FLAGS + FAST):
  port = free_port()
  env = subprocess_env()
  procs = []
  for i in range(num_processes):
    distributed = [] if num_processes == 1 else [
        "--config.distributed.enabled=True",
        f"--config.distributed.coordinator_address=127.0.0.1:{port}",
        f"--config.distributed.num_processes={num_processes}",
        f"--config.distributed.process_id={i}",
        "--config.distributed.heartbeat_timeout_seconds=10"]
    cmd = [sys.executable, "main.py", f"--config={config_file}", f"--workdir={workdir}",
           f"--config.data.data_dir={tfds_dir}", *tiny, *distributed, *flags]
    procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  return procs


def _finish(procs, timeout=600):
  outputs = [p.communicate(timeout=timeout)[0] for p in procs]
  return [p.returncode for p in procs], outputs


def _run(*args, **kwargs):
  return _finish(_launch(*args, **kwargs))


def _checkpoints(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def _resumed(output, step):
  return re.search(rf"Resuming from \S+/checkpoints/{step}\b", output) is not None


def _results(workdir, name="pretrain_results.json"):
  with open(os.path.join(workdir, name)) as f:
    return json.load(f)


def _wait_for_checkpoint(workdir, step, procs, limit=300):
  start = time.time()
  while not os.path.isdir(os.path.join(workdir, "checkpoints", str(step))):
    assert time.time() - start < limit and all(p.poll() is None for p in procs), \
        [p.communicate()[0][-2000:] for p in procs if p.poll() is not None]
    time.sleep(0.2)


def test_sigterm_to_one_process_stops_all_after_the_same_step(tmp_path, tfds_dir):
  workdir = str(tmp_path / "run")
  procs = _launch(workdir, tfds_dir, 2, "--config.train_steps=1000")
  _wait_for_checkpoint(workdir, 2, procs)
  procs[1].send_signal(signal.SIGTERM)
  codes, outputs = _finish(procs)
  assert codes == [75, 75], outputs[0][-3000:] + outputs[1][-3000:]
  assert "Stopped by SIGTERM after step" in outputs[1]
  assert "Stopped by a signal on another process after step" in outputs[0]
  steps = {int(out.split(" after step ")[1].split(";")[0]) for out in outputs}
  assert len(steps) == 1  # the same step on both
  (stopped,) = steps
  assert _checkpoints(workdir)[-1] == stopped
  # One process resumes the two processes' checkpoint only when told that the (TFDS) data's
  # per-process order may change, and the schedule's length with it.
  codes, outputs = _run(workdir, tfds_dir, 1, f"--config.train_steps={stopped + 2}")
  assert codes == [2] and "the process count: 2 there, 1 here" in outputs[0]
  codes, outputs = _run(workdir, tfds_dir, 1, f"--config.train_steps={stopped + 2}",
                        "--config.resume_changes=process_count,train_steps")
  assert codes == [0], outputs[0][-3000:]
  assert _resumed(outputs[0], stopped) and _results(workdir)["step"] == stopped + 2


def test_a_killed_process_ends_the_other_with_a_clear_error_and_both_resume(tmp_path, tfds_dir):
  workdir = str(tmp_path / "run")
  procs = _launch(workdir, tfds_dir, 2, "--config.train_steps=1000")
  _wait_for_checkpoint(workdir, 4, procs)
  procs[1].kill()
  start = time.time()
  codes, outputs = _finish(procs, timeout=120)
  assert time.time() - start < 60  # the heartbeat is 10 s
  assert codes[0] == 75, outputs[0][-3000:]
  assert "Lost contact with another process of this 2-process run" in outputs[0]
  assert "Traceback" not in outputs[0]
  newest = _checkpoints(workdir)[-1]
  assert newest >= 4
  arrays, step = checkpointing.load_all(workdir)  # the newest step restores in full
  assert step == newest and int(arrays["train"]["step"]) == newest
  # Both processes rerun: each resumes from that step and saves again, with one line of
  # output per process about it and no traceback (experiments/multiprocess_checkpoints.py
  # repeats save, kill, resume, save 20 times in a row).
  codes, outputs = _run(workdir, tfds_dir, 2, f"--config.train_steps={newest + 2}",
                        "--config.resume_changes=train_steps")
  assert codes == [0, 0], "".join(out[-3000:] for out in outputs)
  assert all(_resumed(out, newest) for out in outputs)
  assert "Traceback" not in "".join(outputs)
  arrays, step = checkpointing.load_all(workdir)
  assert step == newest + 2 and int(arrays["train"]["step"]) == newest + 2


@pytest.mark.parametrize("job", ["knn_eval", "linear_eval"])
def test_an_evaluator_with_two_processes_matches_one(tmp_path, tfds_dir, pretrained, job):
  # Two L2 strengths instead of five: the choice is still made, in a third of the L-BFGS time.
  grid = {"linear_eval": [0.0001, 0.01]}.get(job)
  flags = [f"--config.checkpoint={pretrained}",
           *([f"--config.linear.l2_grid={tuple(grid)}"] if grid else [])]
  workdir = str(tmp_path / "two_processes")
  codes, outputs = _run(workdir, tfds_dir, 2, *flags, config_file=f"configs/{job}.py",
                        tiny=TINY_EVAL)
  assert codes == [0, 0], "".join(out[-3000:] for out in outputs)
  assert [f for f in os.listdir(workdir) if f.endswith(".json")] == ["eval_results.json"]
  two = _results(workdir, "eval_results.json")
  # The 1-process reference: the same job and flags (TINY_EVAL) in this process, on 2 devices.
  config = main_config(tfds_dir, *TINY_EVAL, *flags, config_file=f"configs/{job}.py",
                       tiny=False)
  assert config.num_devices == 2
  one = JOBS.get(job)(config, str(tmp_path / "one_process"))
  for key in ("top1", "top5", "num_labelled", "step", "checkpoint"):
    assert two[key] == one[key], key


def test_a_checkpoint_of_one_process_resumes_in_two_and_gives_the_run_of_one(tmp_path, tfds_dir):
  """1 process x 2 devices trains to step 4; from its checkpoint, 1 process x 2 devices and
  2 processes x 1 device both train to step 8 and end with the same metrics, bit for bit."""
  rng = np.random.default_rng(0)
  npz = str(tmp_path / "d.npz")
  np.savez(npz, x_train=rng.integers(0, 256, (200, 16, 16, 3), np.uint8),
           y_train=np.arange(200) % 10)
  flags = [f"--config.data.dataset=npz:{npz}", "--config.data.image_size=16",
           "--config.checkpoint_every_steps=4"]
  tiny = [f for f in TINY_FLAGS + FAST if not f.startswith("--config.cpu_devices")]
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  codes, outputs = _run(one, tfds_dir, 1, *flags, "--config.train_steps=4",
                        "--config.cpu_devices=2", tiny=tiny)
  assert codes == [0], outputs[0][-3000:]
  assert _checkpoints(one) == [4] and _results(one)["step"] == 4
  shutil.copytree(one, two)
  finals = {}
  for n, workdir in ((1, one), (2, two)):
    codes, outputs = _run(workdir, tfds_dir, n, *flags, "--config.train_steps=8",
                          "--config.resume_changes=train_steps",
                          f"--config.cpu_devices={3 - n}", tiny=tiny)
    assert codes == [0] * n, "".join(out[-3000:] for out in outputs)
    assert all(_resumed(out, 4) for out in outputs)
    assert _checkpoints(workdir) == [4, 8] and _results(workdir)["step"] == 8
    finals[n] = _results(workdir)["final_metrics"]
  metrics = [json.loads(line)["step"] for line in open(os.path.join(two, "metrics.jsonl"))]
  assert metrics == [2, 4, 6, 8]  # one log, continued by process 0 only
  for key in ("loss", "byol_cosine", "grad_norm", "probe_loss", "effective_rank"):
    assert finals[2][key] == finals[1][key], key
