r"""The comparison table: every method pretrained, then evaluated four ways, beside random init.

  python experiments/transfer_table.py --root=/tmp/sslx_transfer
  python experiments/transfer_table.py --root=/tmp/tt_rotnet --methods=RotNet,Jigsaw --seeds=0,1,2

For each method (row) and seed it runs the method's quick start
(`python main.py --config=configs/<m>.py --config.seed=S`; skipped when
ROOT/pretrain/<m>/seed<S> already holds a finished run), so every method
trains with its own preset's budget (each sized to a few minutes on a 2-core
CPU). The supervised reference (`configs/supervised.py`, labels of the same
4,000 images) is one more row. Then, for every pretrained encoder and a
randomly initialised one, on the evaluation dataset (mnist5k's 1,000 test
digits by default; `--eval_preset`):
  kNN (configs/knn_eval.py), linear probe (configs/linear_eval.py),
  few-label linear probes on 1 and 10 labelled images per class (the mean
    of 5 draws), as the pretraining run measured them on its own dataset
    (pretrain_results.json; left empty where that is not the evaluation's),
  fine-tuning on 10% of the labels (configs/finetune.py --config.label_fraction=0.1),
plus a network trained from scratch on the same 10%. Colorization pretrains
on mnistm5k (grey digits have no colour) and is evaluated like the others.
With several seeds every cell is the mean and the spread (sample standard
deviation) over them, pretraining and evaluation seeded alike. The
"pretraining wall" column is each job's own time after its imports
(pretrain_results.json's wall_seconds), so runs reused from an earlier call
keep theirs.
`--pretrain_flags` / `--eval_flags` pass overrides to every run (e.g. the
shared CIFAR-10 subset: --eval_preset=cifar10
--pretrain_flags="--config.data.dataset=npz:../shared/data/cifar10_5k.npz").
Prints a Markdown table and writes ROOT/transfer_table.json.
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = {  # row name -> pretraining config
    "BYOL": "configs/byol.py",
    "SimCLR": "configs/simclr.py",
    "MoCo v2": "configs/moco.py",
    "MoCo v3": "configs/moco.py:v3",
    "RotNet": "configs/rotnet.py",
    "Relative patch": "configs/relative_patch.py",
    "Jigsaw": "configs/jigsaw.py",
    "Colorization": "configs/colorization.py",
    "Context encoder": "configs/context_encoder.py",
    "Exemplar": "configs/exemplar.py",
    "Instance discrimination": "configs/instance_discrimination.py",
    "CPC": "configs/cpc.py",
    "Supervised (labels)": "configs/supervised.py",
}
PROTOCOLS = {  # column -> (eval config, extra flags)
    "kNN": ("configs/knn_eval.py", []),
    "linear": ("configs/linear_eval.py", []),
    "fine-tune 10%": ("configs/finetune.py", ["--config.label_fraction=0.1"]),
}
# Read from the pretraining run's own evaluation (pretrain_results.json): linear
# probes on N labelled images per class, mean of its draws, for the pretrained
# and the random encoder on the pretraining dataset.
FEW_LABELS = ("1", "10")
COLUMNS = ("kNN", "linear") + tuple(f"{n} label{'s' if n != '1' else ''}/class"
                                    for n in FEW_LABELS) + ("fine-tune 10%",)


def _slug(name: str) -> str:
  return name.lower().replace(" ", "_").replace("(", "").replace(")", "").replace("/", "_")


def _main(config: str, workdir: str, *flags: str) -> float:
  cmd = [sys.executable, "main.py", f"--config={config}", f"--workdir={workdir}", *flags]
  print("+", " ".join(cmd[1:]), flush=True)
  start = time.perf_counter()
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  os.makedirs(os.path.dirname(workdir), exist_ok=True)
  with open(workdir + ".log", "w") as f:  # what the run printed, beside its workdir
    f.write(result.stdout + result.stderr)
  if result.returncode:
    sys.exit(f"failed ({result.returncode}): {' '.join(cmd)}\n{result.stderr[-3000:]}")
  return time.perf_counter() - start


# The files main.py's jobs write (sslx.evaluation.compare names them; not imported
# here, so this driver stays free of jax).
PRETRAIN_FILE, EVAL_FILE = "pretrain_results.json", "eval_results.json"


def _results(workdir: str, name: str) -> dict:
  with open(os.path.join(workdir, name)) as f:
    return json.load(f)


def _top1(workdir: str) -> float:
  return _results(workdir, EVAL_FILE)["top1"]


def _eval_dataset(workdir: str) -> str:
  return _results(workdir, EVAL_FILE)["dataset"]


def _few_label(encoders, row, seed, n, eval_dataset):
  """Top-1 of the few-label probe with n labels per class, from a pretraining run's results."""
  source, key = (row, "pretrained") if row != "random init" else (None, "random_init")
  runs = [encoders[source][seed]] if source else [
      by_seed[seed] for r, by_seed in encoders.items() if r != "random init"]
  for workdir in runs:
    results = _results(workdir, PRETRAIN_FILE)
    if results["dataset"] != eval_dataset:
      continue
    few = results.get("eval", {}).get(key, {}).get("few_label_linear", {})
    if n in few:
      return few[n]["top1"]
  return None


def _cell(values: list[float]) -> str:
  if not values:
    return "-"
  mean = statistics.mean(values)
  if len(values) == 1:
    return f"{mean:.1%}"
  return f"{mean:.1%} ± {statistics.stdev(values) * 100:.1f}"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--root", required=True, help="directory for every workdir")
  parser.add_argument("--methods", default=",".join(METHODS),
                      help=f"comma-separated rows among: {', '.join(METHODS)}")
  parser.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
  parser.add_argument("--eval_preset", default="mnist5k", help="the evaluators' preset")
  parser.add_argument("--pretrain_preset", default="",
                      help="the pretraining configs' preset (default: each config's own)")
  parser.add_argument("--pretrain_flags", default="", help="overrides for every pretraining")
  parser.add_argument("--eval_flags", default="", help="overrides for every evaluation")
  args = parser.parse_args()
  rows = [m.strip() for m in args.methods.split(",") if m.strip()]
  unknown = [m for m in rows if m not in METHODS]
  if unknown:
    sys.exit(f"unknown methods {unknown}; valid: {', '.join(METHODS)}")
  seeds = [int(s) for s in args.seeds.split(",")]
  pretrain_flags = shlex.split(args.pretrain_flags)
  eval_flags = shlex.split(args.eval_flags)

  seconds, pretrain_wall = {}, {}
  encoders = {"random init": {s: "random" for s in seeds}}
  for row in rows:
    config = METHODS[row]
    if args.pretrain_preset and not (row == "Colorization" and args.pretrain_preset == "mnist5k"):
      config = config.split(":")[0] + ":" + args.pretrain_preset
    encoders[row] = {}
    for seed in seeds:
      workdir = os.path.join(args.root, "pretrain", _slug(row), f"seed{seed}")
      if not os.path.exists(os.path.join(workdir, PRETRAIN_FILE)):
        seconds[f"pretrain {row} {seed}"] = _main(config, workdir, f"--config.seed={seed}",
                                                  *pretrain_flags)
      # The job's own wall (after its imports), also for runs reused from an earlier call.
      wall = _results(workdir, PRETRAIN_FILE).get("wall_seconds")
      if wall is not None:
        pretrain_wall.setdefault(row, []).append(wall)
      encoders[row][seed] = workdir

  preset = f":{args.eval_preset}"
  table = {}
  for row, by_seed in encoders.items():
    table[row] = {column: [] for column in COLUMNS}
    for seed, checkpoint in by_seed.items():
      for column, (config, flags) in PROTOCOLS.items():
        workdir = os.path.join(args.root, "eval", _slug(row), _slug(column), f"seed{seed}")
        if not os.path.exists(os.path.join(workdir, EVAL_FILE)):
          seconds[f"{column} {row} {seed}"] = _main(
              config + preset, workdir, f"--config.checkpoint={checkpoint}",
              f"--config.seed={seed}", *flags, *eval_flags)
        table[row][column].append(_top1(workdir))
      # The dataset the evaluators used (the preset's, or --eval_flags' override).
      eval_dataset = _eval_dataset(os.path.join(args.root, "eval", _slug(row), "knn",
                                                f"seed{seed}"))
      for n, column in zip(FEW_LABELS, COLUMNS[2:4]):
        top1 = _few_label(encoders, row, seed, n, eval_dataset)
        if top1 is not None:
          table[row][column].append(top1)
  table["from scratch (10% labels)"] = {"fine-tune 10%": []}
  for seed in seeds:
    workdir = os.path.join(args.root, "eval", "scratch", f"seed{seed}")
    if not os.path.exists(os.path.join(workdir, EVAL_FILE)):
      seconds[f"scratch {seed}"] = _main("configs/finetune.py" + preset, workdir,
                                         "--config.checkpoint=scratch",
                                         "--config.label_fraction=0.1", f"--config.seed={seed}",
                                         *eval_flags)
    table["from scratch (10% labels)"]["fine-tune 10%"].append(_top1(workdir))

  header = "| encoder | pretraining wall | " + " | ".join(COLUMNS) + " |"
  lines = [header, "|" + "---|" * (len(COLUMNS) + 2)]
  for row, by_column in table.items():
    wall = f"{statistics.mean(pretrain_wall[row]):.0f} s" if row in pretrain_wall else ""
    cells = [_cell(by_column.get(c, [])) for c in COLUMNS]
    lines.append(f"| {row} | {wall} | " + " | ".join(cells) + " |")
  print("\n".join(lines))
  with open(os.path.join(args.root, "transfer_table.json"), "w") as f:
    json.dump({"table": table, "seconds": seconds, "seeds": seeds,
               "pretrain_wall_s": pretrain_wall}, f, indent=2)


if __name__ == "__main__":
  main()
