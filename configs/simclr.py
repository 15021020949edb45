r"""SimCLR pretraining (Chen et al., 2020, "A Simple Framework for Contrastive Learning").

  python main.py --config=configs/simclr.py --workdir=/tmp/simclr          # quick start
  python main.py --config=configs/simclr.py:cifar10 --workdir=/tmp/simclr_c10
  python main.py --config=configs/simclr.py:imagenet --workdir=gs://bucket/simclr_in

Presets (the part after ':'):
  mnist5k   (default) the embedded 5,000 MNIST digits at 20 px, ResNet-10
            at width 0.25, batch 128 for 900 steps (29 epochs), sized for a
            2-core CPU; chosen by the runs in experiments/README.md.
  cifar10, cifar100
            the CIFAR-10 command of the reference implementation's README
            (google-research/simclr; paper Appendix B.9): ResNet-18 with CIFAR
            stem, batch 512, LARS lr 1.0 x batch/256, weight decay 1e-4,
            temperature 0.5, 1000 epochs, colour-jitter strength 0.5, no blur.
  imagenet  the paper's ImageNet setting (Sec. 2.3 and the reference README):
            ResNet-50, batch 4096, LARS lr 0.3 x batch/256, weight decay 1e-6,
            10 warmup epochs + cosine, temperature 0.1, jitter strength 1.0,
            blur with p=0.5 on both views, 224 px; 100 epochs.

Both views use the same augmentation distribution (SimCLR is symmetric). The
colour-jitter strength s sets brightness, contrast and saturation to 0.8 s and
hue to 0.2 s (paper Appendix A), on both views:
  --config.simclr.color_jitter_strength=0.5
Projection head: Dense-BN-ReLU hidden layers, then Dense to projector_dim
(paper Sec. 2.1, with the BN of the reference code); set
projector_hidden_dims=(2048, 2048) and projector_last_bn=True for SimCLR v2's
3-layer head.

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
  c.method = "simclr"
  strength = ml_collections.FieldReference(1.0)
  c.simclr = ml_collections.ConfigDict(dict(
      temperature=0.1,
      projector_hidden_dims=(2048,),
      projector_dim=128,
      projector_last_bn=False,
      # Colour-jitter strength s (Appendix A). The views' jitter fields
      # follow it lazily, so an override of this field reaches both views.
      color_jitter_strength=strength,
  ))
  # Symmetric views: SimCLR's ImageNet augmentation on both.
  c.views = ml_collections.ConfigDict(dict(v1=config_defaults.view(),
                                           v2=config_defaults.view()))
  for v in (c.views.v1, c.views.v2):
    v.brightness = strength * 0.8
    v.contrast = strength * 0.8
    v.saturation = strength * 0.8
    v.hue = strength * 0.2
    v.blur_prob = 0.5
  c.optimizer.update(name="lars", base_learning_rate=0.3, weight_decay=1e-6,
                     trust_coefficient=0.001, warmup_epochs=10.0)
  config_defaults.apply_dataset_preset(c, preset, "configs/simclr.py")

  if preset in config_defaults.DIGIT_PRESETS:
    c.batch_size = 128
    # 600 steps at 20 px: kNN 6.5 points ahead of random init in 2.7 minutes;
    # 900: 7.4 points (experiments/README.md, "Five minutes: 20 px digits").
    c.train_steps = 900
    c.simclr.temperature = 0.2
    c.simclr.projector_hidden_dims = (512,)
    c.simclr.color_jitter_strength = 0.5
    c.optimizer.update(base_learning_rate=1.0, weight_decay=1e-5,
                       trust_coefficient=0.02, warmup_epochs=2.0)
    config_defaults.keep_digits_whole(c)
  elif preset in config_defaults.SMALL_IMAGE_PRESETS:
    c.batch_size = 512
    c.train_steps = config_defaults.epochs_to_steps(1000, preset, c.batch_size)
    c.simclr.temperature = 0.5
    c.simclr.color_jitter_strength = 0.5
    c.optimizer.update(base_learning_rate=1.0, weight_decay=1e-4)
    for v in (c.views.v1, c.views.v2):
      v.blur_prob = 0.0  # the paper's CIFAR recipe has no blur at 32 px
  elif preset == "imagenet":
    c.batch_size = 4096
    c.train_steps = config_defaults.epochs_to_steps(100, preset, c.batch_size)
  return c
