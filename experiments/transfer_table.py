r"""The transfer table of the README: every method's quick-start encoder, evaluated three ways.

  python experiments/transfer_table.py --root=/tmp/sslx_transfer

For each method it runs the quick start (`python main.py --config=configs/<m>.py`,
skipped when ROOT/pretrain/<m> already holds a finished run), then, for each
pretrained encoder and for a randomly initialised one, the three evaluators
through main.py on the embedded mnist5k:
  kNN (configs/knn_eval.py), linear probe (configs/linear_eval.py), and
  fine-tuning on 10% of the labels (configs/finetune.py --config.label_fraction=0.1),
plus supervised training from scratch on the same 10% (--config.checkpoint=scratch).
Every evaluation uses seed 0, so every row fine-tunes on the same 400 images.
Prints a Markdown table and writes ROOT/transfer_table.json.
"""

import argparse
import json
import os
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
}
PROTOCOLS = {  # column -> (eval config, extra flags)
    "kNN": ("configs/knn_eval.py", []),
    "linear": ("configs/linear_eval.py", []),
    "fine-tune 10%": ("configs/finetune.py", ["--config.label_fraction=0.1"]),
}


def _slug(name: str) -> str:
  return name.lower().replace(" ", "_")


def _main(config: str, workdir: str, *flags: str) -> float:
  cmd = [sys.executable, "main.py", f"--config={config}", f"--workdir={workdir}", *flags]
  print("+", " ".join(cmd[1:]), flush=True)
  start = time.perf_counter()
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  if result.returncode:
    sys.exit(f"failed ({result.returncode}): {' '.join(cmd)}\n{result.stderr[-3000:]}")
  return time.perf_counter() - start


def _finished(workdir: str) -> bool:
  path = os.path.join(workdir, "pretrain_results.json")
  return os.path.exists(path)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--root", required=True, help="directory for every workdir")
  parser.add_argument("--methods", default=",".join(METHODS),
                      help=f"comma-separated rows among: {', '.join(METHODS)}")
  args = parser.parse_args()
  rows = [m.strip() for m in args.methods.split(",") if m.strip()]
  unknown = [m for m in rows if m not in METHODS]
  if unknown:
    sys.exit(f"unknown methods {unknown}; valid: {', '.join(METHODS)}")

  seconds = {}
  encoders = {"random init": "random"}
  for row in rows:
    workdir = os.path.join(args.root, "pretrain", _slug(row))
    if not _finished(workdir):
      seconds[f"pretrain {row}"] = _main(METHODS[row], workdir)
    encoders[row] = workdir

  table = {}
  for row, checkpoint in encoders.items():
    table[row] = {}
    for column, (config, flags) in PROTOCOLS.items():
      workdir = os.path.join(args.root, "eval", _slug(row), _slug(column))
      seconds[f"{column} {row}"] = _main(config, workdir, f"--config.checkpoint={checkpoint}",
                                         *flags)
      table[row][column] = json.load(open(os.path.join(workdir, "eval_results.json")))
  workdir = os.path.join(args.root, "eval", "scratch", "fine-tune_10%")
  seconds["scratch"] = _main("configs/finetune.py", workdir, "--config.checkpoint=scratch",
                             "--config.label_fraction=0.1")
  table["supervised from scratch"] = {
      "fine-tune 10%": json.load(open(os.path.join(workdir, "eval_results.json")))}

  header = "| encoder | " + " | ".join(f"{c} top-1" for c in PROTOCOLS) + " |"
  lines = [header, "|" + "---|" * (len(PROTOCOLS) + 1)]
  for row, by_column in table.items():
    cells = [f"{by_column[c]['top1']:.1%}" if c in by_column else "-" for c in PROTOCOLS]
    lines.append(f"| {row} | " + " | ".join(cells) + " |")
  print("\n".join(lines))
  with open(os.path.join(args.root, "transfer_table.json"), "w") as f:
    json.dump({"table": table, "seconds": seconds}, f, indent=2)


if __name__ == "__main__":
  main()
