r"""MoCo v2 and v3 pretraining (He et al., 2020; Chen et al., 2020; Chen, Xie & He, 2021).

  python main.py --config=configs/moco.py --workdir=/tmp/moco              # quick start (v2)
  python main.py --config=configs/moco.py:v3 --workdir=/tmp/moco_v3        # quick start (v3)
  python main.py --config=configs/moco.py:cifar10 --workdir=/tmp/moco_c10
  python main.py --config=configs/moco.py:imagenet,v3 --workdir=gs://bucket/mocov3_in

The argument is "PRESET[,VERSION]" in any order: a preset (mnist5k, the
default; cifar10; cifar100; imagenet) and a version (v2, the default; v3).

v2 presets:
  mnist5k   the embedded 5,000 MNIST digits at 20 px, ResNet-10 at width
            0.25, batch 128 for 1,200 steps, sized for a 2-core CPU; chosen by
            the runs in experiments/README.md.
  cifar10, cifar100
            the official MoCo CIFAR-10 demo (facebookresearch/moco,
            colab/moco_cifar10_demo.ipynb): ResNet-18 (CIFAR stem), batch 512,
            SGD lr 0.06 (= 0.03 x batch/256), weight decay 5e-4, queue 4096,
            m 0.99, T 0.1, BN in 8 shuffled groups ("bn_splits"), 200 epochs,
            crops from 0.08 of the image, no blur; with v2's MLP head.
  imagenet  MoCo v2 (Chen et al., 2020, arXiv:2003.04297): ResNet-50, batch 256,
            SGD lr 0.03 x batch/256, weight decay 1e-4, cosine, 200 epochs,
            queue 65,536, m 0.999, T 0.2, MLP head 2048-2048-128, BN in 8
            shuffled groups (8 GPUs x 32 images), crops from 0.2, colour
            jitter (0.4, 0.4, 0.4, 0.1) p=0.8, grayscale 0.2, blur p=0.5.
v3 presets:
  mnist5k   as BYOL's quick start (20 px, SGD), with v3's heads and loss,
            batch 128 for 800 steps.
  cifar10, cifar100
            solo-learn's mocov3.yaml (da Costa et al., 2022): ResNet-18,
            batch 256, LARS lr 0.3 x batch/256, eta 0.02, weight decay 1e-6,
            heads 4096-256, T 0.2, m 0.99 -> 1 (cosine), 1000 epochs, BYOL's
            asymmetric augmentations without blur.
  imagenet  the paper's 100-epoch ResNet-50 recipe (facebookresearch/moco-v3,
            README and main_moco.py): batch 4096, LARS lr 0.6 x batch/256,
            weight decay 1e-6, 10 warmup epochs, T 1.0, m 0.99 -> 1 (cosine),
            projector 4096-256 ending in BN, predictor 4096-256, zero-init
            residuals, BYOL's augmentations with crops from 0.08.

Preset `folder`: your own photos (--config.data.dataset=folder:PATH, images of any
size in PATH/<class>/ or PATH/train/<class>/, PATH/test/<class>/): this config's
CIFAR recipe, crops of 32 px cut from the whole photo, for 100 epochs of the folder.
"""

import ml_collections

from sslx.config import defaults as config_defaults

# The part after ':' (the first is the default); python main.py --help lists them.
PRESETS = config_defaults.PRESETS

VERSIONS = ("v2", "v3")


def _parse(arg: str) -> tuple[str, str]:
  preset, version = "mnist5k", "v2"
  for token in filter(None, (t.strip() for t in arg.split(","))):
    if token in VERSIONS:
      version = token
    else:
      preset = token
  return preset, version


def get_config(arg: str = "mnist5k") -> ml_collections.ConfigDict:
  preset, version = _parse(arg)
  c = config_defaults.base_config()
  c.method = "moco"
  c.moco = ml_collections.ConfigDict(dict(
      version=version,
      dim=128,  # output (key/query) dimension
      # Hidden layers of the projector; () means one layer of the encoder's
      # feature size (v2's fc-ReLU-fc replacing the classifier).
      projector_hidden_dims=(),
      predictor_hidden_dims=(4096,),  # v3 only
      temperature=0.2,
      momentum=0.999,  # key encoder EMA rate m (at step 0 if momentum_cosine)
      momentum_cosine=False,  # increase m to 1 along a half cosine (v3)
      queue_size=65536,  # v2 only; a multiple of the keys enqueued per step
      symmetric=False,  # v2 only: also use view 2 as query (the CIFAR demo's option)
      # BN statistics over this many groups of the batch, keys shuffled
      # across groups (MoCo's shuffling BN); 1: BN over the whole batch.
      bn_groups=8,
  ))
  config_defaults.apply_dataset_preset(c, preset, "configs/moco.py")
  if version == "v2":
    _v2(c, preset)
  else:
    _v3(c, preset)
  return c


def _v2(c, preset):
  c.optimizer.update(name="sgd", base_learning_rate=0.03, weight_decay=1e-4,
                     momentum=0.9, warmup_epochs=0.0)
  # MoCo v2's "aug+": SimCLR-like jitter, blur, no solarize; same on both views.
  for v in (c.views.v1, c.views.v2):
    v.update(crop_area_min=0.2, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
             blur_prob=0.5, solarize_prob=0.0)
  if preset in config_defaults.DIGIT_PRESETS:
    c.batch_size = 128
    # 600 steps at 20 px: kNN 5.7 points ahead of random init; 1,200 (38
    # epochs, 3 minutes): 7.6 (experiments/README.md, "Five minutes: 20 px digits").
    c.train_steps = 1200
    c.moco.update(queue_size=1024, momentum=0.99, temperature=0.2)
    c.optimizer.update(base_learning_rate=0.06, weight_decay=5e-4)
    config_defaults.keep_digits_whole(c)
  elif preset in config_defaults.SMALL_IMAGE_PRESETS:
    c.batch_size = 512
    c.train_steps = config_defaults.epochs_to_steps(200, preset, c.batch_size)
    c.moco.update(queue_size=4096, momentum=0.99, temperature=0.1)
    c.optimizer.update(base_learning_rate=0.03, weight_decay=5e-4)
    for v in (c.views.v1, c.views.v2):
      v.update(crop_area_min=0.08, blur_prob=0.0)
  elif preset == "imagenet":
    c.batch_size = 256
    c.train_steps = config_defaults.epochs_to_steps(200, preset, c.batch_size)


def _v3(c, preset):
  c.moco.update(dim=256, projector_hidden_dims=(4096,), predictor_hidden_dims=(4096,),
                momentum=0.99, momentum_cosine=True, bn_groups=1, temperature=1.0)
  c.optimizer.update(name="lars", base_learning_rate=0.6, weight_decay=1e-6,
                     trust_coefficient=0.001, warmup_epochs=10.0)
  # BYOL's asymmetric augmentations (the base defaults), crops from 0.08.
  if preset in config_defaults.DIGIT_PRESETS:
    c.batch_size = 128
    c.train_steps = 800
    c.moco.update(dim=128, projector_hidden_dims=(1024,), predictor_hidden_dims=(1024,),
                  temperature=0.2)
    # SGD, as BYOL's quick start: with LARS (base lr 2.0) the projections'
    # effective rank stayed near 11 of 128 and kNN led random init by 4.3
    # points at 600 steps and 3.8 at 1,000; SGD at 800 steps led it by 6.5
    # (experiments/README.md, "Five minutes: 20 px digits").
    c.optimizer.update(name="sgd", base_learning_rate=0.5, weight_decay=5e-4, momentum=0.9,
                       warmup_epochs=2.0)
    config_defaults.keep_digits_whole(c)
    c.views.v2.solarize_prob = 0.2
  elif preset in config_defaults.SMALL_IMAGE_PRESETS:
    c.batch_size = 256
    c.train_steps = config_defaults.epochs_to_steps(1000, preset, c.batch_size)
    c.moco.temperature = 0.2
    c.optimizer.update(base_learning_rate=0.3, trust_coefficient=0.02)
    for v in (c.views.v1, c.views.v2):
      v.blur_prob = 0.0
  elif preset == "imagenet":
    c.batch_size = 4096
    c.train_steps = config_defaults.epochs_to_steps(100, preset, c.batch_size)
    c.model.zero_init_residual = True
