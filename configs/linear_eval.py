r"""Linear probe on a frozen encoder from a pretraining checkpoint.

  python main.py --config=configs/linear_eval.py --workdir=/tmp/eval_lin --config.checkpoint=/tmp/byol
  python main.py --config=configs/linear_eval.py --workdir=/tmp/eval_lin_rand --config.checkpoint=random
  python main.py --config=configs/linear_eval.py --workdir=/tmp/eval_lin_aug \
      --config.checkpoint=/tmp/byol --config.linear.augment=True

The part after ':' is the evaluation dataset's preset (mnist5k, the default;
cifar10; cifar100; imagenet). Hyperparameters are chosen on a held-out 10% of
the labelled train subset, never on the test split. Fast path
(linear.augment=False): L-BFGS logistic regression on precomputed centre-crop
features, L2 from a grid. Augmented path: SGD + Nesterov on random crops and
flips, a grid of learning rates and weight decays trained as parallel heads;
on ImageNet the papers train 90-100 epochs at batch 256-1024 (BYOL Appendix
C.1, SimCLR Appendix B.6), set here for the imagenet preset.
Fields are documented in sslx/config/transfer_defaults.py.
"""

from sslx.config import transfer_defaults as transfer_defaults

# The evaluation dataset's preset (the part after ':'); none: the checkpoint's own dataset.
PRESETS = transfer_defaults.PRESETS


def get_config(preset: str = ""):
  c = transfer_defaults.base_transfer_config("linear_eval", preset, "configs/linear_eval.py")
  if preset in ("", "mnist5k"):
    c.batch_size = 128
    c.linear.view.update(crop_area_min=0.5, flip_prob=0.0)  # keep digits whole and unflipped
  elif preset == "imagenet":
    c.batch_size = 1024
    c.linear.epochs = 90.0
  else:
    c.linear.epochs = 100.0
  return c
