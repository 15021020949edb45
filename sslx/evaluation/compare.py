"""One table and one chart of several runs' evaluations, from what their workdirs hold.

A pretraining workdir contributes its `pretrain_results.json`: the pretrained
encoder's kNN, linear probe and few-label probes, and once per dataset and
architecture the random-init encoder and the from-scratch baseline measured
beside it. A transfer job's workdir (knn_eval, linear_eval, finetune)
contributes its `eval_results.json` to the row of the encoder it evaluated:
a pretraining run given in the same call, or a row of its own (random init,
scratch, a checkpoint not given). Nothing is recomputed: every cell is a
number a run logged.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
from typing import Sequence

from sslx import errors

# The files the pretraining job and the transfer jobs write (they name them from here).
PRETRAIN_FILE = "pretrain_results.json"
EVAL_FILE = "eval_results.json"
RANDOM_ROW, SCRATCH_ROW = "random init", "from scratch (labels only)"
# The `config.checkpoint` values of a transfer job that name no checkpoint (sslx.evaluation.transfer).
RANDOM, SCRATCH = "random", "scratch"


@dataclasses.dataclass
class Row:
  name: str  # what the table calls the encoder: its config, or a baseline
  workdir: str = ""
  steps: int | None = None
  wall_seconds: float | None = None
  scores: dict[str, float] = dataclasses.field(default_factory=dict)  # column -> top-1


def config_name(results: dict) -> str | None:
  """The --config argument of the command that ran (e.g. 'moco.py:v3'), without 'configs/'."""
  for arg in shlex.split(results.get("command") or ""):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1].removeprefix("configs/")
  return None


def _few_label_columns(by_n: dict, where: str = "") -> dict[str, float]:
  # Linear probes for an encoder's row, supervised training for the scratch row:
  # the same labelled images, so the same column (unless the probes read another layer).
  return {f"{n} labels/class{where}": r["top1"]
          for n, r in sorted(by_n.items(), key=lambda x: int(x[0]))}


def _features(results: dict) -> str:
  """'' for the pooled output, else ' on stage3 2x2': probes of another layer get their own column."""
  layer, grid = results.get("feature_layer"), results.get("feature_grid", 1)
  return f" on {layer} {grid}x{grid}" if layer else ""


def _encoder_scores(by_protocol: dict, where: str = "") -> dict[str, float]:
  scores = {}
  for protocol, column in (("knn", "kNN"), ("linear", "linear")):
    if protocol in by_protocol:
      scores[column + where] = by_protocol[protocol]["top1"]
  if "few_label_linear" in by_protocol:
    scores.update(_few_label_columns(by_protocol["few_label_linear"], where))
  if "few_label_scratch" in by_protocol:
    scores.update(_few_label_columns(by_protocol["few_label_scratch"]))
  return scores


def _transfer_column(results: dict) -> str:
  labels = (f"{results['labels_per_class']} per class" if results.get("labels_per_class")
            else f"{results['label_fraction']:.0%} labels")
  protocol = {"knn": "kNN", "linear": "linear", "finetune": "fine-tune"}.get(
      results.get("protocol"), results.get("protocol"))
  return f"{protocol}{_features(results)}, {labels} ({results['dataset']})"


def _read(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise errors.ConfigError(f"cannot read {path}: {e}") from e


def collect(workdirs: Sequence[str]) -> list[Row]:
  """Rows in the order given: each pretraining run, then baselines and unmatched transfer runs."""
  rows, baselines, by_checkpoint_dir, transfers = [], {}, {}, []
  for workdir in workdirs:
    workdir = os.path.abspath(os.path.expanduser(workdir))
    pretrain_path, eval_path = (os.path.join(workdir, f) for f in (PRETRAIN_FILE, EVAL_FILE))
    if os.path.isfile(pretrain_path):
      results = _read(pretrain_path)
      evaluation = results.get("eval") or {}
      row = Row(name=config_name(results) or os.path.basename(workdir), workdir=workdir,
                steps=results.get("step"), wall_seconds=results.get("wall_seconds"),
                scores=_encoder_scores(evaluation.get("pretrained", {}), _features(results)))
      rows.append(row)
      by_checkpoint_dir[os.path.join(workdir, "checkpoints")] = row
      # The baselines depend on the data and the architecture, not on the method.
      key = json.dumps([results.get("dataset"), results.get("model")], sort_keys=True)
      for name, title in (("random_init", RANDOM_ROW), ("scratch", SCRATCH_ROW)):
        if name in evaluation:
          baseline = baselines.setdefault((title, key), Row(name=title))
          for column, score in _encoder_scores(evaluation[name], _features(results)).items():
            baseline.scores.setdefault(column, score)
    elif os.path.isfile(eval_path):
      transfers.append((workdir, _read(eval_path)))
    else:
      raise errors.ConfigError(
          f"{workdir} holds neither {PRETRAIN_FILE} (a finished pretraining run) nor "
          f"{EVAL_FILE} (a finished knn_eval, linear_eval or finetune run).")
  extra = {}
  for workdir, results in transfers:
    checkpoint = str(results.get("checkpoint"))
    row = by_checkpoint_dir.get(os.path.dirname(checkpoint))
    if row is None:
      title = {RANDOM: RANDOM_ROW, SCRATCH: "supervised from scratch"}.get(
          checkpoint, checkpoint)
      row = extra.setdefault(title, Row(name=title, workdir=workdir))
    row.scores[_transfer_column(results)] = results["top1"]
  return rows + list(baselines.values()) + list(extra.values())


def columns(rows: Sequence[Row]) -> list[str]:
  seen = []
  for row in rows:
    seen += [c for c in row.scores if c not in seen]
  return seen


def markdown(rows: Sequence[Row]) -> str:
  """A Markdown table: one row per encoder, top-1 test accuracy per evaluation."""
  cols = columns(rows)
  head = ["encoder", "steps", "wall"] + cols
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for row in rows:
    wall = f"{row.wall_seconds:.0f} s" if row.wall_seconds is not None else ""
    cells = [f"`{row.name}`" if row.workdir else row.name,
             "" if row.steps is None else str(row.steps), wall]
    cells += [f"{row.scores[c]:.1%}" if c in row.scores else "" for c in cols]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def chart(rows: Sequence[Row], path: str, title: str = "") -> dict[str, list[float | None]]:
  """Grouped bars: one group per evaluation, one bar per encoder; returns what it drew."""
  # matplotlib only here: the jobs that import this module for its file names need not load it.
  from sslx.evaluation import plots  # pylint: disable=import-outside-toplevel  (selects Agg)
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  cols = columns(rows)
  drawn = {row.name: [row.scores.get(c) for c in cols] for row in rows}
  width = 0.8 / max(len(rows), 1)
  fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(cols) + 4), 4.2))
  for i, row in enumerate(rows):
    xs = [j + (i - (len(rows) - 1) / 2) * width for j, c in enumerate(cols) if c in row.scores]
    ys = [100 * row.scores[c] for c in cols if c in row.scores]
    ax.bar(xs, ys, width=width, label=row.name,
           hatch="//" if row.name in (RANDOM_ROW, SCRATCH_ROW) else None)
  ax.set_xticks(range(len(cols)), [c.replace(" (", "\n(") for c in cols], fontsize=8)
  ax.set_ylabel("top-1 test accuracy (%)")
  ax.set_ylim(0, 100)
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside the bars
  if title:
    ax.set_title(title)
  fig.tight_layout()
  plots.save_figure(fig, path)
  return drawn
