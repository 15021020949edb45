r"""Smoke runs: every pretraining config for 20 steps, first run and cache warm, timed.

  python experiments/smoke_runs.py --root=/tmp/sslx_smoke
  python experiments/smoke_runs.py --root=/tmp/sslx_smoke --configs=byol,simclr --steps=20

For each config it runs the job twice as a user would,
`python main.py --config=configs/<name>.py --workdir=W --config.train_steps=20`,
and times the whole process (imports, data, compilation, the steps, the
end-of-run evaluation and pictures, exit) from outside:
  first: a new, empty XLA compilation cache (`--config.compilation_cache_dir`),
    so everything is compiled, as on a machine that never ran sslx;
  warm:  a second run into a new workdir with that cache, as a user's second
    smoke run.
Then the kNN and linear-probe evaluators of the BYOL run (if it was run) the
same two ways. The datasets are read from the usual data_dir, so build them
once beforehand (the first mnist5k / mnistm5k run builds it) to time only
sslx. Prints a Markdown table, writes ROOT/smoke_runs.json. Run it alone: it
times wall clock.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("byol", "simclr", "moco", "moco:v3", "rotnet", "relative_patch", "jigsaw",
           "colorization", "context_encoder", "exemplar", "instance_discrimination", "cpc",
           "supervised")
EVALUATORS = ("knn_eval", "linear_eval")
FIRST_RUN_TARGET_S, WARM_RUN_TARGET_S = 45.0, 30.0  # issue 46


def _timed_run(config: str, workdir: str, cache: str, *flags: str) -> float:
  name, _, preset = config.partition(":")
  command = [sys.executable, "main.py", f"--config=configs/{name}.py" + (f":{preset}" if preset else ""),
             f"--workdir={workdir}", f"--config.compilation_cache_dir={cache}", *flags]
  shutil.rmtree(workdir, ignore_errors=True)
  start = time.perf_counter()
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
  seconds = time.perf_counter() - start
  with open(workdir + ".log", "w") as f:
    f.write(done.stdout + done.stderr)
  if done.returncode:
    sys.exit(f"{' '.join(command)} failed ({done.returncode}); its output is in {workdir}.log")
  return seconds


def _pair(root: str, config: str, *flags: str) -> dict:
  slug = config.replace(":", "_")
  cache = os.path.join(root, "cache", slug)
  shutil.rmtree(cache, ignore_errors=True)
  first = _timed_run(config, os.path.join(root, slug, "first"), cache, *flags)
  warm = _timed_run(config, os.path.join(root, slug, "warm"), cache, *flags)
  row = {"config": config, "first_s": round(first, 1), "warm_s": round(warm, 1),
         "first_ok": first <= FIRST_RUN_TARGET_S, "warm_ok": warm <= WARM_RUN_TARGET_S}
  print(json.dumps(row), flush=True)
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--root", required=True, help="workdirs, caches, logs and the JSON go here")
  parser.add_argument("--configs", default=",".join(CONFIGS),
                      help=f"comma-separated, among: {', '.join(CONFIGS)}")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--no_evaluators", action="store_true",
                      help="skip the kNN / linear evaluators of the BYOL run")
  args = parser.parse_args()
  configs = args.configs.split(",")
  unknown = [c for c in configs if c not in CONFIGS]
  if unknown:
    sys.exit(f"unknown configs {unknown}; valid: {', '.join(CONFIGS)}")
  rows = [_pair(args.root, c, f"--config.train_steps={args.steps}") for c in configs]
  if "byol" in configs and not args.no_evaluators:
    checkpoint = os.path.join(args.root, "byol", "warm")
    rows += [_pair(args.root, e, f"--config.checkpoint={checkpoint}") for e in EVALUATORS]
  print(f"\n| config | first run | cache warm |  (targets: {FIRST_RUN_TARGET_S:.0f} s / "
        f"{WARM_RUN_TARGET_S:.0f} s)\n|---|---|---|")
  for r in rows:
    print(f"| `{r['config']}` | {r['first_s']:.0f} s | {r['warm_s']:.0f} s |")
  with open(os.path.join(args.root, "smoke_runs.json"), "w") as f:
    json.dump({"steps": args.steps, "rows": rows, "command": " ".join(sys.argv)}, f, indent=1)


if __name__ == "__main__":
  main()
