r"""Contrastive predictive coding on patches (van den Oord et al., 2018; Henaff
et al., 2019, "Data-efficient image recognition with contrastive predictive
coding", CPC v2).

  python main.py --config=configs/cpc.py --workdir=/tmp/sslx_cpc
  python main.py --config=configs/cpc.py:cifar10 --workdir=/tmp/cpc_c10
  python main.py --config=configs/cpc.py:imagenet --workdir=gs://bucket/cpc_in

One view per image, cut on device into a grid of overlapping patches; a
row-causal context network predicts the patches below from those above,
and a second one the patches above from those below (CPC v2), InfoNCE over
every patch of the global batch (sslx/methods/cpc.py). A run started
before the bottom-up network was added (2026-12-06) resumes with
--config.cpc.directions="('top_down',)"; evaluators read its encoder as it is.

Presets (the part after ':'):
  mnist5k   (default) 24 px crops, 8 px patches every 4 px (a 5x5 grid),
            predicting 1-4 rows ahead (every row below; 1-2 gave 1.2 kNN
            points less on the mean of 3 seeds, experiments/README.md),
            ResNet-10 at width 0.25, batch 32, base rate 0.4 (twice the
            0.2 of most pretext presets: +1.4 kNN, +1.1 linear on that mean).
  cifar10, cifar100
            32 px images, 8 px patches every 4 px (7x7), 3 rows ahead.
  imagenet  the papers' geometry: 64 px patches every 32 px of 256 px crops
            (7x7), 5 rows ahead (CPC v2 predicts up to 5); ResNet-50 (CPC v2
            uses a ResNet-161 with layer norm); SGD, not from the paper.

Preset `folder`: your own photos (--config.data.dataset=folder:PATH, images of any
size in PATH/<class>/ or PATH/train/<class>/, PATH/test/<class>/): this config's
CIFAR recipe, crops of 32 px cut from the whole photo, for 100 epochs of the folder.
"""

import ml_collections

from sslx.config import defaults as config_defaults

# The part after ':' (the first is the default); python main.py --help lists them.
PRESETS = config_defaults.PRESETS


def get_config(preset: str = "mnist5k") -> ml_collections.ConfigDict:
  c = config_defaults.base_config()
  c.method = "cpc"
  c.cpc = ml_collections.ConfigDict(dict(
      patch_size=8,
      patch_stride=4,
      prediction_steps=2,  # K: rows ahead
      context_dim=128,
      context_layers=2,
      temperature=0.1,  # scores: cosine similarity / temperature
      # Which ways the grid is read, each with its own context network and
      # predictors (sslx/methods/cpc.py): CPC v2's top-down and bottom-up
      # (CPC v1 reads top-down only; 'left_right' and 'right_left' also exist).
      # On mnist5k bottom-up added 0.9 linear points on the mean of 3 seeds;
      # all four directions did worse (experiments/README.md, "CPC: directions").
      directions=("top_down", "bottom_up"),
  ))
  c.views = ml_collections.ConfigDict(dict(v1=config_defaults.view(
      crop_area_min=0.3, color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0,
      solarize_prob=0.0)))
  c.optimizer.update(name="sgd", base_learning_rate=0.2, weight_decay=5e-4, momentum=0.9,
                     warmup_epochs=1.0)
  config_defaults.apply_dataset_preset(c, preset, "configs/cpc.py")

  if preset in config_defaults.DIGIT_PRESETS:
    c.batch_size = 32
    c.train_steps = 1200
    config_defaults.keep_digits_whole(c)
    c.views.v1.crop_size = 24
    c.cpc.prediction_steps = 4  # the 5x5 grid's most
    # 0.4 x 32/256 per step: with K = 4 it beat 0.2 on both probes at seeds 0, 1
    # and 2 (experiments/README.md, "CPC: rows predicted, batch and rate").
    c.optimizer.base_learning_rate = 0.4
  elif preset in config_defaults.SMALL_IMAGE_PRESETS:
    c.batch_size = 256
    c.train_steps = config_defaults.epochs_to_steps(100, preset, c.batch_size)
    c.cpc.prediction_steps = 3
  elif preset == "imagenet":
    c.batch_size = 256
    c.train_steps = config_defaults.epochs_to_steps(35, preset, c.batch_size)
    c.views.v1.crop_size = 256
    c.cpc.update(patch_size=64, patch_stride=32, prediction_steps=5, context_dim=1024)
  return c
