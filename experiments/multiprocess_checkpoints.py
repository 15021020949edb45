r"""Multi-process checkpoints, run after run: save, be killed, resume, save again.

    python experiments/multiprocess_checkpoints.py --runs=20 --out=/tmp/mp_ckpt
    python experiments/multiprocess_checkpoints.py --runs=20 --busy=2   # beside 2 busy loops

Each round starts `python main.py` twice (2 processes x 2 CPU devices,
config.distributed on 127.0.0.1, as docs "Several hosts" shows) on a tiny
SimCLR run that checkpoints every 2 steps, kills both processes with SIGKILL
once checkpoint 4 exists, reruns both to resume and train to step 8, and
checks: the first pair wrote checkpoint 4, the second pair exited 0 on both
processes after resuming from the newest checkpoint, and checkpoint 8 restores
in full. `--busy=N` keeps N other processes spinning, as on a shared node.
Prints one line per round and a summary; exits 1 if any round failed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.model.width=0.125", "--config.batch_size=32", "--config.data.image_size=16",
        "--config.simclr.projector_hidden_dims=(32,)", "--config.simclr.projector_dim=16",
        "--config.optimizer.warmup_epochs=0", "--config.log_every_steps=2",
        "--config.checkpoint_every_steps=2", "--config.eval.knn=False",
        "--config.eval.linear=False", "--config.plots.enabled=False"]


def _port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir: str, steps: int, log_prefix: str) -> list[subprocess.Popen]:
  port = _port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2")
  env.pop("XLA_FLAGS", None)
  procs = []
  for i in range(2):
    cmd = [sys.executable, "main.py", "--config=configs/simclr.py", f"--workdir={workdir}",
           *TINY, f"--config.train_steps={steps}", "--config.resume_changes=train_steps",
           "--config.distributed.enabled=True",
           f"--config.distributed.coordinator_address=127.0.0.1:{port}",
           "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}",
           "--config.distributed.heartbeat_timeout_seconds=20"]
    log = open(f"{log_prefix}.p{i}.log", "w")
    procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
  return procs


def _steps(workdir: str) -> list[int]:
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def one_round(out: str, index: int, timeout: float) -> str | None:
  """None if the round passed, else what went wrong."""
  workdir = os.path.join(out, f"run{index}")
  shutil.rmtree(workdir, ignore_errors=True)
  logs = os.path.join(out, f"run{index}")
  procs = _launch(workdir, 1000, logs + ".first")
  start = time.time()
  while 4 not in _steps(workdir):
    if any(p.poll() is not None for p in procs):
      return f"first pair exited before checkpoint 4 (codes {[p.poll() for p in procs]})"
    if time.time() - start > timeout:
      return "no checkpoint 4 in time"
    time.sleep(0.2)
  for p in procs:  # killed while training (and maybe while writing checkpoint 6)
    p.send_signal(signal.SIGKILL)
  for p in procs:
    p.wait()
  procs = _launch(workdir, 8, logs + ".second")
  try:
    codes = [p.wait(timeout=timeout) for p in procs]
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    return "the resumed pair did not finish in time"
  outputs = [open(f"{logs}.second.p{i}.log").read() for i in range(2)]
  if codes != [0, 0]:
    tail = outputs[codes.index(next(c for c in codes if c))][-1500:]
    return f"resumed pair exited {codes}: ...{tail}"
  if not all(re.search(r"Resuming from \S+/checkpoints/\d+", o) for o in outputs):
    return "a resumed process did not resume"
  sys.path.insert(0, REPO)
  from absl import logging  # pylint: disable=import-outside-toplevel
  logging.set_verbosity(logging.ERROR)  # (Orbax's notes on opening a directory read-only)
  from sslx.core import checkpointing  # pylint: disable=import-outside-toplevel
  arrays, step = checkpointing.load_all(workdir)
  if step != 8 or int(arrays["train"]["step"]) != 8:
    return f"newest checkpoint is step {step}"
  return None


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", type=int, default=20)
  parser.add_argument("--out", default="/tmp/sslx_multiprocess_checkpoints")
  parser.add_argument("--busy", type=int, default=0, help="busy processes beside the runs")
  parser.add_argument("--timeout", type=float, default=600)
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
  failures = 0
  t0 = time.time()
  try:
    for i in range(args.runs):
      r0 = time.time()
      problem = one_round(args.out, i, args.timeout)
      failures += problem is not None
      print(f"round {i + 1}/{args.runs}: {'ok' if problem is None else 'FAILED: ' + problem} "
            f"({time.time() - r0:.0f} s)", flush=True)
  finally:
    for p in busy:
      p.kill()
  print(f"{args.runs - failures}/{args.runs} rounds passed in {time.time() - t0:.0f} s "
        f"(2 processes x 2 CPU devices, {args.busy} busy processes beside them)")
  sys.exit(1 if failures else 0)


if __name__ == "__main__":
  main()
