r"""Colorization (Zhang, Isola & Efros, 2016, "Colorful image colorization").

  python main.py --config=configs/colorization.py --workdir=/tmp/sslx_colorization
  python main.py --config=configs/colorization.py:cifar10 --workdir=/tmp/color_c10
  python main.py --config=configs/colorization.py:imagenet --workdir=gs://bucket/color_in

The encoder sees the lightness L of each view; a decoder predicts a
distribution over quantised ab colours at every pixel, cross-entropy with
class rebalancing (sslx/methods/colorization.py). Lab conversion on device
(sslx/data/lab.py).

Presets (the part after ':'):
  mnistm5k  (default) the embedded digits over colour photographs
            (sslx/data/mnistm5k.py; grey digits have no colour to predict,
            so there is no mnist5k preset), ResNet-10 at width 0.25, batch 64.
  cifar10, cifar100
            ResNet-18, bins of 10, SGD; not from the paper (ImageNet only).
  imagenet  bins of 10, ResNet-50 (the paper: a VGG-style network with
            Adam; its Sec. 3), SGD here.

Preset `folder`: your own photos (--config.data.dataset=folder:PATH, images of any
size in PATH/<class>/ or PATH/train/<class>/, PATH/test/<class>/): this config's
CIFAR recipe, crops of 32 px cut from the whole photo, for 100 epochs of the folder.
"""

import ml_collections

from sslx.config import defaults as config_defaults

# The part after ':' (the first is the default); python main.py --help lists them.
PRESETS = ("mnistm5k", "cifar10", "cifar100", "imagenet", "folder")


def get_config(preset: str = "mnistm5k") -> ml_collections.ConfigDict:
  if preset == "mnist5k":
    raise ValueError("configs/colorization.py has no 'mnist5k' preset: grey digits have no "
                     "colour to predict. Use 'mnistm5k' (the default: the same digits over "
                     "colour photographs), 'cifar10', 'cifar100' or 'imagenet'.")
  c = config_defaults.base_config()
  c.method = "colorization"
  c.colorization = ml_collections.ConfigDict(dict(
      bin_size=10.0,  # ab grid step
      rebalance=True,
      rebalance_mix=0.5,  # lambda: mix of the smoothed prior with the uniform
      decoder_channels=(64, 32, 16),
  ))
  c.views = ml_collections.ConfigDict(dict(v1=config_defaults.view(
      crop_area_min=0.3, color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0,
      solarize_prob=0.0)))
  c.optimizer.update(name="sgd", base_learning_rate=0.2, weight_decay=5e-4, momentum=0.9,
                     warmup_epochs=1.0)
  config_defaults.apply_dataset_preset(c, preset, "configs/colorization.py")

  if preset in config_defaults.DIGIT_PRESETS:
    # 600 steps: its step (a 225-way prediction at every pixel) is about 3x
    # RotNet's on 2 cores, and 1,200 would overrun the quick start's budget.
    c.batch_size = 64
    c.train_steps = 600
    config_defaults.keep_digits_whole(c)
  elif preset in config_defaults.SMALL_IMAGE_PRESETS:
    c.batch_size = 256
    c.train_steps = config_defaults.epochs_to_steps(100, preset, c.batch_size)
    c.colorization.decoder_channels = (256, 128, 64)
  elif preset == "imagenet":
    c.batch_size = 256
    c.train_steps = config_defaults.epochs_to_steps(35, preset, c.batch_size)
    c.colorization.decoder_channels = (512, 256, 128, 64, 32)
  return c
