"""Compares finished runs: one Markdown table and one chart of their evaluations.

    python main.py --config=configs/compare.py --workdir=/tmp/sslx_compare \\
        --config.runs=/tmp/sslx_byol,/tmp/sslx_simclr,/tmp/sslx_ft_byol

`config.runs` lists pretraining workdirs (their kNN, linear and few-label
results, with the random-init and from-scratch baselines measured beside
them) and transfer-job workdirs (knn_eval, linear_eval, finetune: each joins
the row of the encoder it evaluated). Writes into the workdir:
  comparison.md    the table (also printed)
  comparison.png   the same numbers as grouped bars
  comparison.json  the rows, for scripts
Nothing is re-evaluated (sslx/evaluation/compare.py).
"""

import dataclasses
import json
import os

import ml_collections

from sslx import errors
from sslx.core import checkpointing
from sslx.evaluation import compare

FILES = {"table": "comparison.md", "chart": "comparison.png", "rows": "comparison.json"}


def run_paths(runs: str) -> list[str]:
  paths = [p.strip() for p in runs.split(",") if p.strip()]
  if not paths:
    raise errors.ConfigError("config.runs is empty; give the workdirs to compare, comma-separated: "
                             "--config.runs=/tmp/sslx_byol,/tmp/sslx_simclr.")
  return paths


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  rows = compare.collect(run_paths(config.runs))
  checkpointing.check_writable(workdir)
  table = compare.markdown(rows)
  paths = {k: os.path.join(workdir, f) for k, f in FILES.items()}
  with open(paths["table"], "w") as f:
    f.write(table + "\n")
  drawn = compare.chart(rows, paths["chart"], title=config.title)
  with open(paths["rows"], "w") as f:
    json.dump([dataclasses.asdict(r) for r in rows], f, indent=2)
  print(table, flush=True)
  print(f"wrote {paths['table']}, {paths['chart']}, {paths['rows']}", flush=True)
  return {"rows": rows, "drawn": drawn, "files": paths}
