r"""Patch-task encoders probed on the patches they were trained on, not on whole images.

  python experiments/patch_grid_probe.py --checkpoint=/tmp/sslx_relative_patch
  python experiments/patch_grid_probe.py --checkpoint=/tmp/sslx_cpc

Relative patch, jigsaw and CPC train their encoder on small patches (6-8 px
on the digits) and every sslx evaluator reads it on the whole 20 px image.
CPC v2 (Henaff et al. 2019) instead gives its linear classifier the patch
encodings of the grid, mean-pooled. This script measures that protocol for
one checkpoint beside a random encoder: each test and train image is resized
to the method's crop size and cut into the method's grid (relative patch and
jigsaw: the 3x3 cells, patches centred, jigsaw's tiles normalised each;
CPC: the overlapping grid), the encoder embeds every patch (inference-mode
BatchNorm), and the patch features are mean-pooled ("grid mean", the
encoder's width) or concatenated in grid order ("grid concat"), then scored
with the kNN and L-BFGS probe of configs/knn_eval.py and configs/linear_eval.py.
"Whole" is what the evaluators do; "whole at crop size" resizes first.
The geometry is read from the checkpoint's own config.

Two more whole-image rows test whether the gap is a mismatch of input
statistics rather than of what was learned. The encoder's BatchNorm running
statistics were averaged over patches in training, and the evaluators apply
them to whole images: "whole, BN re-estimated" replaces them with the
population statistics of the whole train images (each BatchNorm's batch
statistics in training mode, averaged over batches of 500, as PreciseBN
does; Wu & Johnson 2021, "Rethinking 'batch' in BatchNorm", Sec. 3). Jigsaw
normalises every tile on its own, and the evaluators normalise with the
dataset's statistics: "whole, each image normalised" gives each whole image
zero mean and unit variance instead, as the tiles had.
"""

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

MODES = ("whole", "whole, BN re-estimated", "whole, each image normalised",
         "whole at crop size", "grid mean", "grid concat")
BATCH = 500


def geometry(pretrain_config):
  """(crop size, patch size, gap, stride, normalise each) of the method's patches.

  stride None: a 3x3 grid of cells with the patches `gap` apart (relative
  patch, jigsaw); otherwise CPC's overlapping grid, a patch every `stride` px.
  """
  method = pretrain_config["method"]
  crop = pretrain_config["views"]["v1"]["crop_size"] or pretrain_config["data"]["image_size"]
  if method == "relative_patch":
    c = pretrain_config["relative_patch"]
    return crop, c["patch_size"], c["gap"], None, False
  if method == "jigsaw":
    return crop, pretrain_config["jigsaw"]["tile_size"], 0, None, True
  if method == "cpc":
    c = pretrain_config["cpc"]
    return crop, c["patch_size"], 0, c["patch_stride"], False
  raise SystemExit(f"{method} is not a patch task (relative_patch, jigsaw or cpc).")


def main(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint", required=True, help="a relative_patch, jigsaw or cpc workdir")
  p.add_argument("--seed", type=int, default=0, help="random init's seed and the probe's")
  args = p.parse_args(argv)

  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from configs import knn_eval, linear_eval  # pylint: disable=import-outside-toplevel
  from sslx import data, models  # pylint: disable=import-outside-toplevel
  from sslx.core import checkpointing  # pylint: disable=import-outside-toplevel
  from sslx.data import augment, patches  # pylint: disable=import-outside-toplevel
  from sslx.evaluation import knn, linear_probe, transfer  # pylint: disable=import-outside-toplevel
  from sslx.methods import cpc  # pylint: disable=import-outside-toplevel
  from sslx.models.resnet import BN_MOMENTUM  # pylint: disable=import-outside-toplevel

  _, pretrain_config, _ = checkpointing.load_encoder(args.checkpoint)
  crop, patch, gap, stride, normalise_each = geometry(pretrain_config)
  linear = linear_eval.get_config().linear

  def reestimate_batch_stats(encoder, variables, mean, std, train_images):
    """`variables` with every BatchNorm's statistics those of whole train images (see above)."""
    @jax.jit
    def batch_stats_of(images):
      x = augment.normalize(augment.to_float01(images), mean, std, "float32")
      _, updated = encoder.apply(variables, x, train=True, mutable=["batch_stats"])
      # Flax keeps momentum * old + (1 - momentum) * batch; undo it to get the batch's own.
      return jax.tree.map(lambda new, old: (new - BN_MOMENTUM * old) / (1 - BN_MOMENTUM),
                          updated["batch_stats"], variables["batch_stats"])
    per_batch = [batch_stats_of(train_images[i:i + BATCH])
                 for i in range(0, len(train_images), BATCH)]
    return {**variables, "batch_stats": jax.tree.map(lambda *s: sum(s) / len(s), *per_batch)}

  def embed_fn(encoder, variables, mean, std, mode):
    @jax.jit
    def embed(images):
      x = augment.normalize(augment.to_float01(images), mean, std, "float32")
      if mode in ("whole", "whole, BN re-estimated"):
        return encoder.apply(variables, x, train=False).pooled
      if mode == "whole, each image normalised":
        return encoder.apply(variables, patches.normalize_each(x), train=False).pooled
      x = jax.image.resize(x, (x.shape[0], crop, crop, x.shape[-1]), "bilinear")
      if mode == "whole at crop size":
        return encoder.apply(variables, x, train=False).pooled
      if stride:  # CPC's overlapping grid
        grid = cpc.patch_grid(x, patch, stride)
        cut = grid.reshape(grid.shape[0], -1, *grid.shape[3:])
      else:
        corners = patches.grid_offsets(jax.random.PRNGKey(0), x.shape[0], crop, 3, patch, gap,
                                       jitter=False)
        cut = patches.crop_patches(x, corners, patch)
      if normalise_each:
        cut = patches.normalize_each(cut)
      b, k = cut.shape[:2]
      z = encoder.apply(variables, cut.reshape(b * k, *cut.shape[2:]), train=False).pooled
      z = z.reshape(b, k, -1)
      return z.mean(axis=1) if mode == "grid mean" else z.reshape(b, -1)
    return embed

  rows = {}
  for name, spec in (("pretrained", args.checkpoint), ("random init", "random")):
    config = knn_eval.get_config()
    config.checkpoint, config.seed = spec, args.seed
    loaded = transfer.load_backbone(config)
    prep = transfer.resolve_preprocessing(config, loaded)
    data_config = prep.data_config(config.data)
    info = data.get_dataset_info(data_config)
    encoder = models.create_encoder(loaded.model_config)
    split = {}
    for which in ("train", "test"):
      xs, ys = [], []
      for batch in data.make_eval_iterator(data_config, which, batch_size=BATCH):
        mask = np.asarray(batch["mask"], bool)
        xs.append(np.asarray(batch["image"])[mask])
        ys.append(np.asarray(batch["label"])[mask])
      split[which] = np.concatenate(xs), np.concatenate(ys)
    for mode in MODES:
      t0 = time.perf_counter()
      variables = (reestimate_batch_stats(encoder, loaded.variables, prep.mean, prep.std,
                                          split["train"][0])
                   if mode == "whole, BN re-estimated" else loaded.variables)
      f = embed_fn(encoder, variables, prep.mean, prep.std, mode)
      feats = {w: np.concatenate([np.asarray(f(x[i:i + BATCH]))
                                  for i in range(0, len(x), BATCH)])
               for w, (x, _) in split.items()}
      (train_y, test_y) = split["train"][1], split["test"][1]
      k = knn.knn_accuracy(feats["train"], train_y, feats["test"], test_y, k=config.knn.k,
                           temperature=config.knn.temperature, num_classes=info.num_classes)
      lin = linear_probe.linear_probe_accuracy(
          feats["train"], train_y, feats["test"], test_y, num_classes=info.num_classes,
          l2_grid=tuple(linear.l2_grid), holdout_fraction=linear.holdout_fraction,
          seed=args.seed)
      rows[(name, mode)] = (k["top1"], lin["top1"], feats["train"].shape[1])
      print(f"{name:>11} {mode:>18} d={feats['train'].shape[1]:<5} kNN {k['top1']:.1%} "
            f"linear {lin['top1']:.1%} ({time.perf_counter() - t0:.0f}s)", flush=True)

  print(f"\n{pretrain_config['method']}: crops of {crop} px, {patch} px patches")
  print("| features | pretrained kNN / linear | random init kNN / linear |\n|---|---|---|")
  for mode in MODES:
    (pk, pl, d), (rk, rl, _) = rows[("pretrained", mode)], rows[("random init", mode)]
    print(f"| {mode} ({d}-d) | {pk:.1%} / {pl:.1%} | {rk:.1%} / {rl:.1%} |")


if __name__ == "__main__":
  main(sys.argv[1:])
