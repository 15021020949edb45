"""The comparison job: its table and chart carry exactly the numbers the runs logged."""

import json
import os

import numpy as np
import PIL.Image
import pytest

from configs import compare as compare_config
from sslx import errors
from sslx.evaluation import compare
from sslx.jobs import compare as compare_job

MODEL = {"name": "resnet10", "width": 0.25, "stem": "cifar"}


def _few(values):
  return {str(n): {"top1": v, "draws": 5} for n, v in zip((1, 5, 10), values)}


def _pretrain_run(root, name, config_arg, knn, linear, few, step=600, wall=250.0):
  workdir = os.path.join(root, name)
  os.makedirs(workdir)
  results = {
      "step": step, "wall_seconds": wall, "method": name, "dataset": "mnist5k", "model": MODEL,
      "checkpoint": f"{workdir}/checkpoints/{step}",
      "command": f"python main.py --config=configs/{config_arg} --workdir={workdir}",
      "eval": {"pretrained": {"knn": {"top1": knn}, "linear": {"top1": linear},
                              "few_label_linear": _few(few)},
               "random_init": {"knn": {"top1": 0.837}, "linear": {"top1": 0.848},
                               "few_label_linear": _few((0.257, 0.527, 0.613))},
               "scratch": {"few_label_scratch": _few((0.241, 0.750, 0.883))}}}
  with open(os.path.join(workdir, compare.PRETRAIN_FILE), "w") as f:
    json.dump(results, f)
  return workdir


def _finetune_run(root, name, checkpoint, top1):
  workdir = os.path.join(root, name)
  os.makedirs(workdir)
  with open(os.path.join(workdir, compare.EVAL_FILE), "w") as f:
    json.dump({"protocol": "finetune", "checkpoint": checkpoint, "top1": top1,
               "label_fraction": 0.1, "labels_per_class": None, "dataset": "mnist5k"}, f)
  return workdir


def test_table_and_chart_hold_the_logged_numbers(tmp_path):
  root = str(tmp_path)
  byol = _pretrain_run(root, "byol", "byol.py", 0.912, 0.951, (0.52, 0.80, 0.86))
  moco = _pretrain_run(root, "moco", "moco.py:v3", 0.904, 0.962, (0.55, 0.82, 0.88), wall=199.6)
  ft_byol = _finetune_run(root, "ft_byol", f"{byol}/checkpoints/600", 0.931)
  ft_scratch = _finetune_run(root, "ft_scratch", "scratch", 0.921)
  config = compare_config.get_config()
  config.runs = ",".join([byol, moco, ft_byol, ft_scratch])
  config.title = "mnist5k"
  out = compare_job.run(config, os.path.join(root, "cmp"))

  names = [r.name for r in out["rows"]]
  # Both runs share data and architecture: one random-init row, one scratch row.
  assert names == ["byol.py", "moco.py:v3", compare.RANDOM_ROW, compare.SCRATCH_ROW,
                   "supervised from scratch"]
  table = open(out["files"]["table"]).read().splitlines()
  assert table[0] == ("| encoder | steps | wall | kNN | linear | 1 labels/class | 5 labels/class"
                      " | 10 labels/class | fine-tune, 10% labels (mnist5k) |")
  assert table[2] == "| `byol.py` | 600 | 250 s | 91.2% | 95.1% | 52.0% | 80.0% | 86.0% | 93.1% |"
  assert table[3] == "| `moco.py:v3` | 600 | 200 s | 90.4% | 96.2% | 55.0% | 82.0% | 88.0% |  |"
  assert table[4] == "| random init |  |  | 83.7% | 84.8% | 25.7% | 52.7% | 61.3% |  |"
  assert table[5] == "| from scratch (labels only) |  |  |  |  | 24.1% | 75.0% | 88.3% |  |"
  assert table[6].endswith("|  |  |  |  |  |  | 92.1% |")
  # The chart draws the same values and is a real PNG.
  assert out["drawn"]["byol.py"] == [0.912, 0.951, 0.52, 0.80, 0.86, 0.931]
  assert out["drawn"][compare.SCRATCH_ROW][:2] == [None, None]
  image = PIL.Image.open(out["files"]["chart"])
  assert image.format == "PNG" and image.size[0] >= 600
  assert np.asarray(image.convert("L")).std() > 10  # bars, not a blank canvas
  rows = json.load(open(out["files"]["rows"]))
  assert rows[0]["scores"]["kNN"] == 0.912 and rows[0]["workdir"] == byol


def test_runs_of_other_data_get_their_own_baselines(tmp_path):
  a = _pretrain_run(str(tmp_path), "a", "byol.py", 0.9, 0.95, (0.5, 0.8, 0.9))
  b = _pretrain_run(str(tmp_path), "b", "byol.py:cifar10", 0.7, 0.8, (0.2, 0.3, 0.4))
  results = json.load(open(os.path.join(b, compare.PRETRAIN_FILE)))
  results["dataset"] = "cifar10"
  json.dump(results, open(os.path.join(b, compare.PRETRAIN_FILE), "w"))
  names = [r.name for r in compare.collect([a, b])]
  assert names.count(compare.RANDOM_ROW) == 2 and names.count(compare.SCRATCH_ROW) == 2


def test_probes_of_another_layer_get_their_own_columns(tmp_path):
  pooled = _pretrain_run(str(tmp_path), "pooled", "jigsaw.py", 0.825, 0.862, (0.4, 0.6, 0.7))
  layer = _pretrain_run(str(tmp_path), "layer", "jigsaw.py", 0.910, 0.964, (0.5, 0.7, 0.8))
  results = json.load(open(os.path.join(layer, compare.PRETRAIN_FILE)))
  results.update(feature_layer="stage2", feature_grid=2)
  results["eval"]["random_init"]["knn"]["top1"] = 0.826
  json.dump(results, open(os.path.join(layer, compare.PRETRAIN_FILE), "w"))
  knn = os.path.join(str(tmp_path), "knn_stage3")
  os.makedirs(knn)
  json.dump({"protocol": "knn", "checkpoint": f"{pooled}/checkpoints/600", "top1": 0.765,
             "label_fraction": 1.0, "labels_per_class": None, "dataset": "mnist5k",
             "feature_layer": "stage3", "feature_grid": 1},
            open(os.path.join(knn, compare.EVAL_FILE), "w"))
  rows = {r.name + ("" if r.workdir != layer else " (layer)"): r.scores
          for r in compare.collect([pooled, layer, knn])}
  assert rows["jigsaw.py"]["kNN"] == 0.825
  assert rows["jigsaw.py"]["kNN on stage3 1x1, 100% labels (mnist5k)"] == 0.765
  assert rows["jigsaw.py (layer)"]["kNN on stage2 2x2"] == 0.910
  assert rows["jigsaw.py (layer)"]["1 labels/class on stage2 2x2"] == 0.5
  assert not {"kNN", "1 labels/class"} & set(rows["jigsaw.py (layer)"])
  # One random-init row holds both runs' baselines, each in its own column.
  assert rows[compare.RANDOM_ROW]["kNN"] == 0.837
  assert rows[compare.RANDOM_ROW]["kNN on stage2 2x2"] == 0.826
  # Training from scratch reads no frozen features: one column per label count.
  assert rows[compare.SCRATCH_ROW] == {"1 labels/class": 0.241, "5 labels/class": 0.750,
                                       "10 labels/class": 0.883}


def test_config_name_comes_from_the_command_line():
  assert compare.config_name({"command": "python main.py --config=configs/moco.py:v3 "
                                         "--workdir=/tmp/x"}) == "moco.py:v3"
  assert compare.config_name({"command": None}) is None


@pytest.mark.parametrize("runs, expected", [
    ("", "config.runs is empty"),
    ("/nonexistent/run", "holds neither pretrain_results.json"),
])
def test_bad_runs_are_named(tmp_path, runs, expected):
  config = compare_config.get_config()
  config.runs = runs
  with pytest.raises(errors.ConfigError, match=expected):
    compare_job.run(config, str(tmp_path / "cmp"))
