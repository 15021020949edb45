r"""The supervised reference: the encoder trained with labels (cross-entropy).

  python main.py --config=configs/supervised.py --workdir=/tmp/sslx_supervised
  python main.py --config=configs/supervised.py:cifar10 --workdir=/tmp/sup_c10
  python main.py --config=configs/supervised.py:imagenet --workdir=gs://bucket/sup_in

The "ImageNet labels" row of the transfer tables: the same encoder, trained
on the pretraining split's labels with crops and flips, saved like every
method so every evaluator reads it (sslx/methods/supervised.py).

Presets (the part after ':'):
  mnist5k   (default) the 4,000 labelled training digits, ResNet-10 at width
            0.25, batch 128, SGD.
  cifar10, cifar100
            ResNet-18, SGD momentum 0.9, lr 0.1 at batch 128, weight decay
            5e-4, 200 epochs, cosine: the common CIFAR recipe.
  imagenet  ResNet-50, the Goyal et al. (2017) recipe: SGD lr 0.1 x batch/256,
            weight decay 1e-4, 90 epochs, 5 warmup epochs (cosine decay here).

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
  c.method = "supervised"
  c.supervised = ml_collections.ConfigDict(dict(
      label_smoothing=0.0,
      head_hidden_dims=(),  # () = a linear classifier
  ))
  c.views = ml_collections.ConfigDict(dict(v1=config_defaults.view(
      crop_area_min=0.08, color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0,
      solarize_prob=0.0)))
  c.optimizer.update(name="sgd", base_learning_rate=0.2, weight_decay=5e-4, momentum=0.9,
                     warmup_epochs=0.0)
  config_defaults.apply_dataset_preset(c, preset, "configs/supervised.py")

  if preset in config_defaults.DIGIT_PRESETS:
    c.batch_size = 128
    c.train_steps = 600
    config_defaults.keep_digits_whole(c)
  elif preset in config_defaults.SMALL_IMAGE_PRESETS:
    c.batch_size = 128
    c.train_steps = config_defaults.epochs_to_steps(200, preset, c.batch_size)
    c.views.v1.crop_area_min = 0.5
  elif preset == "imagenet":
    c.batch_size = 1024
    c.train_steps = config_defaults.epochs_to_steps(90, preset, c.batch_size)
    c.optimizer.update(base_learning_rate=0.1, weight_decay=1e-4, warmup_epochs=5.0)
  return c
