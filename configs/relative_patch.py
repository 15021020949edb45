r"""Relative patch location (Doersch, Gupta & Efros, 2015, "Unsupervised visual
representation learning by context prediction").

  python main.py --config=configs/relative_patch.py --workdir=/tmp/sslx_relative_patch
  python main.py --config=configs/relative_patch.py:cifar10 --workdir=/tmp/rp_c10
  python main.py --config=configs/relative_patch.py:imagenet --workdir=gs://bucket/rp_in

One view per image, cut on device into a 3x3 grid of patches with gaps and
jitter (sslx/methods/relative_patch.py); an 8-way classifier on the centre
patch's and a neighbour's features predicts where the neighbour is.

Presets (the part after ':'):
  mnist5k   (default) 30 px crops of the digits: 7 px patches at least 2 px
            apart with 1 px of jitter, ResNet-10 at width 0.25, batch 64,
            SGD at 0.8 x B/256 (4x the other pretext presets: swept).
  cifar10, cifar100
            48 px crops of the 32 px images (upsampled): 12 px patches, gap 3,
            jitter 1. Not from the paper (it trains on ImageNet only).
  imagenet  the paper's geometry (Sec. 3): 96 px patches, gaps of 48 px
            (half a patch), jitter up to 7 px, so 3 x (96 + 48 + 7) = 453 px
            crops; colour dropping on a third of the patches. ResNet-50
            instead of the paper's AlexNet-style network; SGD, 35 epochs,
            not from the paper.

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
  c.method = "relative_patch"
  c.relative_patch = ml_collections.ConfigDict(dict(
      patch_size=7,
      gap=2,  # least distance between neighbouring patches, px
      jitter=True,  # patch placed at a random offset inside its cell
      color_drop_prob=0.0,  # colour dropping against chromatic aberration
      head_hidden_dims=(256,),
  ))
  # One view: crop and flip (the patches are its parts), no photometric change.
  c.views = ml_collections.ConfigDict(dict(v1=config_defaults.view(
      crop_area_min=0.3, color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0,
      solarize_prob=0.0)))
  c.optimizer.update(name="sgd", base_learning_rate=0.2, weight_decay=5e-4, momentum=0.9,
                     warmup_epochs=1.0)
  config_defaults.apply_dataset_preset(c, preset, "configs/relative_patch.py")

  if preset in config_defaults.DIGIT_PRESETS:
    c.batch_size = 64
    c.train_steps = 1200
    # 4x the other pretext presets' base rate (0.8 x 64/256 = 0.2 per step): of
    # 0.05 / 0.2 / 0.8 / 2.0, 0.8 gave the best kNN and linear probe, at seeds 0
    # and 1 (experiments/README.md, "The classic pretext tasks on the digits").
    c.optimizer.base_learning_rate = 0.8
    config_defaults.keep_digits_whole(c)
    c.views.v1.crop_size = 30
  elif preset in config_defaults.SMALL_IMAGE_PRESETS:
    c.batch_size = 256
    c.train_steps = config_defaults.epochs_to_steps(100, preset, c.batch_size)
    c.views.v1.crop_size = 48
    c.relative_patch.update(patch_size=12, gap=3)
  elif preset == "imagenet":
    c.batch_size = 256
    c.train_steps = config_defaults.epochs_to_steps(35, preset, c.batch_size)
    c.views.v1.crop_size = 453
    c.relative_patch.update(patch_size=96, gap=48, color_drop_prob=1 / 3,
                            head_hidden_dims=(4096,))
  return c
