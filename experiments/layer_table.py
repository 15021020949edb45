r"""Frozen features at every layer: kNN and linear probe per feature map, beside random init.

  python experiments/layer_table.py --root=/tmp/sslx_layers \
      --encoders=relative_patch=/tmp/sslx_relative_patch,cpc=/tmp/sslx_cpc

The classic pretext-task papers probe every layer, not only the last: a
linear classifier on each layer's features, average-pooled over a small
spatial grid so the layout survives (Zhang, Isola & Efros 2016, Table 2;
their "split-brain" paper of 2017, Table 2, with the relative-patch and
jigsaw encoders; Gidaris et al. 2018, Tables 1 and 3, RotNet's per-block
rows). A pretext task's last layers specialise in the task, so the best
layer is often an earlier one. This script makes that
table for any sslx encoders: for each encoder (a pretraining workdir, an
export, or `random`, which is always added) and each `--layers` x `--grids`
cell, the features of `configs/knn_eval.py` / `configs/linear_eval.py` with
`--config.eval.feature_layer=L --config.eval.feature_grid=G` (the same
code: sslx.evaluation.features), scored by the same kNN and L-BFGS probe as
those jobs, on the evaluation preset's data (`--eval_preset`, mnist5k by
default). One process, each encoder's weights loaded once. Prints a
Markdown table (cells: kNN / linear top-1) and writes ROOT/layer_table.json.
"""

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from absl import logging  # pylint: disable=wrong-import-position


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--root", required=True, help="where the table's JSON (and scratch files) go")
  p.add_argument("--encoders", required=True,
                 help="name=checkpoint,... (a pretraining workdir, one of its steps, an export)")
  p.add_argument("--layers", default="stage2,stage3,stage4",
                 help="feature maps to probe, or 'pooled' for the encoder's pooled output")
  p.add_argument("--grids", default="1,2", help="sides of the pooling grids")
  p.add_argument("--eval_preset", default="mnist5k", help="configs/knn_eval.py's preset")
  p.add_argument("--seed", type=int, default=0, help="random init's seed and the probe's")
  return p.parse_args(argv)


def cells(layers, grids):
  """(layer or None, grid) of each column; the pooled output has no grid."""
  out = []
  for layer in layers:
    if layer == "pooled":
      out.append((None, 1))
    else:
      out.extend((layer, g) for g in grids)
  return out


def column(layer, grid):
  return "pooled" if layer is None else f"{layer} {grid}x{grid}"


def evaluate(name, checkpoint, args, columns):
  from configs import knn_eval  # pylint: disable=import-outside-toplevel
  from configs import linear_eval  # pylint: disable=import-outside-toplevel
  from sslx.evaluation import knn  # pylint: disable=import-outside-toplevel
  from sslx.evaluation import linear_probe  # pylint: disable=import-outside-toplevel
  from sslx.evaluation import transfer  # pylint: disable=import-outside-toplevel

  config = knn_eval.get_config(args.eval_preset)
  linear = linear_eval.get_config(args.eval_preset).linear
  config.checkpoint, config.seed = checkpoint, args.seed
  s = transfer.setup(config, os.path.join(args.root, "work", name),
                     batch_sizes=(config.eval.batch_size,))
  row = {}
  for layer, grid in columns:
    t0 = time.perf_counter()
    extract = transfer.feature_extractor(s, layer=layer, grid=grid)
    train_x, train_y = extract("train", batch_size=config.eval.batch_size, indices=s.subset)
    test_x, test_y = extract("test", batch_size=config.eval.batch_size)
    k = knn.knn_accuracy(train_x, train_y, test_x, test_y, k=config.knn.k,
                         temperature=config.knn.temperature, num_classes=s.info.num_classes)
    lin = linear_probe.linear_probe_accuracy(
        train_x, train_y, test_x, test_y, num_classes=s.info.num_classes,
        l2_grid=tuple(linear.l2_grid), holdout_fraction=linear.holdout_fraction, seed=args.seed)
    row[column(layer, grid)] = dict(knn=k["top1"], linear=lin["top1"], dim=int(train_x.shape[1]))
    print(f"{name:>16} {column(layer, grid):>11} d={train_x.shape[1]:<5} kNN {k['top1']:.1%} "
          f"linear {lin['top1']:.1%} ({time.perf_counter() - t0:.0f}s)", flush=True)
  return row


def main(argv):
  args = parse_args(argv)
  os.makedirs(args.root, exist_ok=True)
  logging.set_verbosity(logging.WARNING)
  encoders = dict(item.split("=", 1) for item in args.encoders.split(",") if item)
  encoders["random init"] = "random"
  columns = cells(args.layers.split(","), [int(g) for g in args.grids.split(",")])
  table = {name: evaluate(name.replace(" ", "_"), path, args, columns)
           for name, path in encoders.items()}
  names = [column(*c) for c in columns]
  dims = {n: table["random init"][n]["dim"] for n in names}
  print("\n| encoder | " + " | ".join(f"{n} ({dims[n]}-d)" for n in names) + " |")
  print("|---|" + "---|" * len(names))
  for name, row in table.items():
    print(f"| {name} | " + " | ".join(f"{row[n]['knn']:.1%} / {row[n]['linear']:.1%}"
                                      for n in names) + " |")
  with open(os.path.join(args.root, "layer_table.json"), "w") as f:
    json.dump(dict(args=vars(args), encoders=encoders, table=table), f, indent=1)


if __name__ == "__main__":
  main(sys.argv[1:])
