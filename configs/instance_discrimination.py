r"""Instance discrimination with a memory bank (Wu et al., 2018, "Unsupervised
feature learning via non-parametric instance discrimination", NPID).

  python main.py --config=configs/instance_discrimination.py --workdir=/tmp/sslx_instance_discrimination
  python main.py --config=configs/instance_discrimination.py:cifar10 --workdir=/tmp/npid_c10
  python main.py --config=configs/instance_discrimination.py:imagenet --workdir=gs://bucket/npid_in

One augmented view per image; its 128-d L2-normalised embedding is classified
among all training images through a memory bank of their embeddings, in the
method state (sslx/methods/instance_discrimination.py, memory_bank.py).

Presets (the part after ':'):
  mnist5k   (default) the full softmax over the 4,000-entry bank, ResNet-10
            at width 0.25, batch 128; an MLP (512 hidden) instead of the
            paper's linear layer to the embedding.
  cifar10, cifar100
            the paper's CIFAR setting (Sec. 4.1): NCE with 4,096 negatives,
            temperature 0.07, bank momentum 0.5, SGD lr 0.03 at batch 256
            (Sec. 4), weight decay 5e-4, 200 epochs, ResNet-18.
  imagenet  the paper's ImageNet setting: the same with ResNet-50, 200 epochs.

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
  c.method = "instance_discrimination"
  c.instance_discrimination = ml_collections.ConfigDict(dict(
      dim=128,
      temperature=0.07,
      bank_momentum=0.5,
      loss="softmax",  # 'softmax' (the whole bank) or 'nce'
      num_negatives=4096,  # NCE's m
      head_hidden_dims=(),  # () = NPID's linear layer to `dim`
  ))
  # NPID's augmentation (its code): random resized crop (0.2-1), colour
  # jitter 0.4, grayscale 0.2, flips; no blur.
  c.views = ml_collections.ConfigDict(dict(v1=config_defaults.view(
      crop_area_min=0.2, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.4 * 0.25,
      blur_prob=0.0, solarize_prob=0.0)))
  c.optimizer.update(name="sgd", base_learning_rate=0.03, weight_decay=5e-4, momentum=0.9,
                     warmup_epochs=0.0)
  config_defaults.apply_dataset_preset(c, preset, "configs/instance_discrimination.py")

  if preset in config_defaults.DIGIT_PRESETS:
    c.batch_size = 128
    c.train_steps = 1200
    c.optimizer.base_learning_rate = 0.4
    # A 512-d hidden layer before the 128-d embedding, as the contrastive
    # methods after NPID have (SimCLR, MoCo v2): with NPID's linear layer the
    # backbone's kNN accuracy ended 4 points below random init (83.1%), with
    # it 5.7 points above (93.1%; experiments/README.md, issue 17).
    c.instance_discrimination.head_hidden_dims = (512,)
    config_defaults.keep_digits_whole(c)
  elif preset in config_defaults.SMALL_IMAGE_PRESETS:
    c.batch_size = 256
    c.train_steps = config_defaults.epochs_to_steps(200, preset, c.batch_size)
    c.instance_discrimination.loss = "nce"
  elif preset == "imagenet":
    c.batch_size = 256
    c.train_steps = config_defaults.epochs_to_steps(200, preset, c.batch_size)
    c.instance_discrimination.loss = "nce"
  return c
