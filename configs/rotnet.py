r"""RotNet pretraining (Gidaris, Singh & Komodakis, 2018, "Unsupervised
representation learning by predicting image rotations").

  python main.py --config=configs/rotnet.py --workdir=/tmp/rotnet          # quick start
  python main.py --config=configs/rotnet.py:cifar10 --workdir=/tmp/rotnet_c10
  python main.py --config=configs/rotnet.py:imagenet --workdir=gs://bucket/rotnet_in

One view per image (random crop and flip only: the rotation is the task);
the method rotates it by 0/90/180/270 degrees on device, so a batch of N
images trains on 4N.

Presets (the part after ':'):
  mnist5k   (default) the embedded 5,000 MNIST digits at 20 px, ResNet-10
            at width 0.25, batch 64 for 1,200 steps, sized for a 2-core CPU;
            chosen by the runs in experiments/README.md.
  cifar10, cifar100
            the paper's CIFAR-10 schedule (Sec. 3.1): batch 128 images (512
            rotated), SGD momentum 0.9, lr 0.1 (base 0.2 x 128/256), weight
            decay 5e-4, 100 epochs. The paper divides the rate by 5 at epochs
            30, 60 and 80; sslx uses its cosine schedule. ResNet-18 with CIFAR
            stem instead of the paper's NIN.
  imagenet  not from a paper: ResNet-50, batch 512, SGD lr 0.1 x batch/256,
            weight decay 1e-4, 35 epochs, a starting point to tune.

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
  c.method = "rotnet"
  c.rotnet = ml_collections.ConfigDict(dict(
      head_hidden_dims=(),  # () = a linear 4-way classifier on the representation
  ))
  # One view: crop and flip only, no photometric change.
  c.views = ml_collections.ConfigDict(dict(v1=config_defaults.view(
      crop_area_min=0.08, color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0,
      solarize_prob=0.0)))
  c.optimizer.update(name="sgd", base_learning_rate=0.2, weight_decay=5e-4, momentum=0.9,
                     warmup_epochs=0.0)
  config_defaults.apply_dataset_preset(c, preset, "configs/rotnet.py")

  if preset in config_defaults.DIGIT_PRESETS:
    # 64 images (256 rotated) for 1,200 steps, 19 epochs (it was 128 x 600 at
    # 28 px, 8.5 minutes on 2 cores). At 20 px, 64 x 800 ended 4.5 kNN points
    # ahead of random init and 64 x 1,200 6.4 (experiments/README.md,
    # "Five minutes: 20 px digits").
    c.batch_size = 64
    c.train_steps = 1200
    config_defaults.keep_digits_whole(c)
  elif preset in config_defaults.SMALL_IMAGE_PRESETS:
    c.batch_size = 128
    c.train_steps = config_defaults.epochs_to_steps(100, preset, c.batch_size)
    # The paper's CIFAR augmentation: random crops (padding-style, here a
    # resized crop of at least half the image) and horizontal flips.
    c.views.v1.crop_area_min = 0.5
  elif preset == "imagenet":
    c.batch_size = 512
    c.optimizer.update(base_learning_rate=0.1, weight_decay=1e-4)
    c.train_steps = config_defaults.epochs_to_steps(35, preset, c.batch_size)
  return c
