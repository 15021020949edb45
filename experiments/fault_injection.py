r"""Kills a pretraining run at random moments, resumes it, and compares it with an uninterrupted one.

    python experiments/fault_injection.py --config=configs/byol.py --root=/tmp/fi \
        --kills=5 -- --config.train_steps=60 --config.checkpoint_every_steps=5

Everything after `--` goes to main.py unchanged (both runs get the same
flags). The script:
  1. runs main.py uninterrupted in ROOT/reference and times it (T seconds);
  2. starts the same command in ROOT/interrupted `--kills` times, each time
     sending SIGKILL (or `--signal=TERM`, or `mixed`) at a moment drawn
     uniformly from [0, 0.6 T] after the start: during start-up, compilation,
     a step, an asynchronous checkpoint write or its commit (it stops early
     if a run finishes before its kill);
  3. after every kill, reads the newest checkpoint back in full (it must
     restore: a kill never leaves it unreadable);
  4. reruns the command until it finishes, and compares every saved array
     (parameters, BatchNorm statistics, optimizer state, EMA target or queue,
     step, rng) of the final checkpoint with the reference's.

Prints one JSON line per event and a summary; exits 1 if a checkpoint was
unreadable or the final state differs beyond --rtol/--atol.
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

from absl import logging
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

_USER_PLATFORMS = os.environ.get("JAX_PLATFORMS")
os.environ["JAX_PLATFORMS"] = "cpu"  # this process only reads checkpoints back

import jax  # pylint: disable=wrong-import-position

from sslx.core import checkpointing  # pylint: disable=wrong-import-position
from sslx import errors  # pylint: disable=wrong-import-position

logging.set_verbosity(logging.ERROR)  # Orbax warns on every read-only open


def launch(config: str, workdir: str, overrides: list[str], env: dict) -> subprocess.Popen:
  cmd = [sys.executable, os.path.join(REPO, "main.py"), f"--config={config}",
         f"--workdir={workdir}", *overrides]
  log = open(os.path.join(os.path.dirname(workdir), f"{os.path.basename(workdir)}.log"), "a")
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def newest_state(workdir: str):
  """(step, arrays) of the newest checkpoint, (None, None) if there is none; raises if unreadable."""
  directory = checkpointing.checkpoint_dir(workdir)
  if not os.path.isdir(directory) or not any(d.isdigit() for d in os.listdir(directory)):
    return None, None
  arrays, step = checkpointing.load_all(workdir)
  return step, arrays


def compare(reference, other, rtol: float, atol: float) -> dict:
  """Max abs difference and exact-equality count over every array of two saved states."""
  ref_leaves = jax.tree.leaves_with_path(reference)
  other_leaves = dict(jax.tree.leaves_with_path(other))
  worst, worst_path, equal, close = 0.0, None, 0, True
  for path, a in ref_leaves:
    b = other_leaves.get(path)
    if b is None or np.shape(a) != np.shape(b):
      return {"structure_matches": False, "first_difference": jax.tree_util.keystr(path)}
    a, b = np.asarray(a), np.asarray(b)
    if np.issubdtype(a.dtype, np.floating):
      diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))
      close &= bool(np.allclose(a, b, rtol=rtol, atol=atol))
    else:  # step counters, rng keys
      diff = float(np.max(np.abs(a.astype(np.int64) - b.astype(np.int64)), initial=0))
      close &= diff == 0
    equal += int(diff == 0.0)
    if diff > worst:
      worst, worst_path = diff, jax.tree_util.keystr(path)
  return {"structure_matches": True, "arrays": len(ref_leaves), "bitwise_equal_arrays": equal,
          "max_abs_diff": worst, "worst_array": worst_path, "all_close": close}


def run(args, overrides: list[str]) -> dict:
  rng = random.Random(args.seed)
  env = dict(os.environ)  # main.py sees the user's platform choice, not this process's
  env.pop("JAX_PLATFORMS")
  if args.cpu or _USER_PLATFORMS:
    env["JAX_PLATFORMS"] = "cpu" if args.cpu else _USER_PLATFORMS
  if args.fresh and os.path.isdir(args.root):
    shutil.rmtree(args.root)
  os.makedirs(args.root, exist_ok=True)
  reference, interrupted = os.path.join(args.root, "reference"), os.path.join(args.root, "interrupted")

  def emit(**event):
    print(json.dumps(event), flush=True)
    return event

  t0 = time.perf_counter()
  proc = launch(args.config, reference, overrides, env)
  if proc.wait() != 0:
    raise SystemExit(f"The reference run failed (rc {proc.returncode}); see {reference}.log")
  duration = time.perf_counter() - t0
  emit(event="reference", seconds=round(duration, 1))

  events, unreadable = [], 0
  for i in range(args.kills):
    sig = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM}.get(
        args.signal, rng.choice([signal.SIGKILL, signal.SIGTERM]))
    # A resumed run is shorter than the reference (fewer steps left, and
    # XLA's compilation cache may be warm): draw within the first 60%.
    delay = rng.uniform(0.0, 0.6 * duration)
    proc = launch(args.config, interrupted, overrides, env)
    try:
      proc.wait(timeout=delay)
      finished = True
    except subprocess.TimeoutExpired:
      finished = False
      proc.send_signal(sig)
      proc.wait()
    try:
      step, _ = newest_state(interrupted)
      readable = True
    except errors.CheckpointError as e:
      step, readable = str(e), False
      unreadable += 1
    events.append(emit(event="kill", attempt=i + 1, signal=sig.name, after_s=round(delay, 2),
                       finished_before_kill=finished, returncode=proc.returncode,
                       newest_checkpoint=step, newest_readable=readable))
    if not readable or finished:
      break  # nothing left to interrupt

  if not unreadable:
    proc = launch(args.config, interrupted, overrides, env)
    if proc.wait() != 0:
      raise SystemExit(f"The final resumed run failed (rc {proc.returncode}); see "
                       f"{interrupted}.log")
  ref_step, ref_state = newest_state(reference)
  step, state = newest_state(interrupted) if not unreadable else (None, None)
  result = {"final_step": step, "reference_step": ref_step,
            "checkpoints_unreadable_after_a_kill": unreadable,
            "kills": sum(not e["finished_before_kill"] for e in events)}
  if state is not None:
    result.update(compare(ref_state, state, args.rtol, args.atol))
  result["ok"] = (not unreadable and step == ref_step and result.get("all_close", False))
  emit(event="summary", **result)
  return result


def parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/byol.py", help="As for main.py.")
  parser.add_argument("--root", required=True, help="Holds reference/ and interrupted/.")
  parser.add_argument("--kills", type=int, default=5)
  parser.add_argument("--signal", choices=["KILL", "TERM", "mixed"], default="KILL")
  parser.add_argument("--seed", type=int, default=0, help="Draws the kill moments.")
  parser.add_argument("--rtol", type=float, default=1e-5)
  parser.add_argument("--atol", type=float, default=1e-6)
  parser.add_argument("--cpu", action="store_true", help="Run main.py on the CPU.")
  parser.add_argument("--fresh", action="store_true", help="Delete ROOT first.")
  if "--" in argv:
    split = argv.index("--")
    return parser.parse_args(argv[:split]), argv[split + 1:]
  return parser.parse_args(argv), []


if __name__ == "__main__":
  _args, _overrides = parse(sys.argv[1:])
  sys.exit(0 if run(_args, _overrides)["ok"] else 1)
