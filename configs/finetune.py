r"""Fine-tuning a pretrained encoder on (a fraction of) the labels, or training from scratch.

  python main.py --config=configs/finetune.py --workdir=/tmp/ft_byol \
      --config.checkpoint=/tmp/byol --config.label_fraction=0.1
  python main.py --config=configs/finetune.py --workdir=/tmp/ft_scratch \
      --config.checkpoint=scratch --config.label_fraction=0.1       # the supervised baseline
  python main.py --config=configs/finetune.py --workdir=/tmp/ft_top \
      --config.checkpoint=/tmp/byol --config.finetune.train_from=stage3   # freeze stem..stage2

The part after ':' is the evaluation dataset's preset (mnist5k, the default;
cifar10; cifar100; imagenet). Defaults follow SimCLR's semi-supervised
fine-tuning (Chen et al., 2020, Appendix B.5): SGD with Nesterov momentum 0.9,
learning rate 0.05 x batch/256, no weight decay, random crop and flip only;
30 epochs of the labelled subset (SimCLR: 30 for 10% of ImageNet, 60 for 1%).
sslx gives the pretrained encoder 0.1 x the head's learning rate
(`finetune.backbone_lr_ratio`); `checkpoint=scratch` trains every layer at the
head's rate. The mnist5k preset was chosen by the runs in experiments/README.md.
Fields are documented in sslx/config/transfer_defaults.py.
"""

from sslx.config import transfer_defaults as transfer_defaults

# The evaluation dataset's preset (the part after ':'); none: the checkpoint's own dataset.
PRESETS = transfer_defaults.PRESETS


def get_config(preset: str = ""):
  c = transfer_defaults.base_transfer_config("finetune", preset, "configs/finetune.py")
  if preset in ("", "mnist5k"):
    c.batch_size = 128
    # 30 epochs at 0.05 left both a pretrained and a from-scratch ResNet-10
    # short of fitting 400 training digits (train accuracy 0.75-0.92);
    # 100 epochs at 1.0 fit them (0.98-0.99). experiments/README.md.
    c.finetune.update(epochs=100.0, base_learning_rate=1.0)
    c.finetune.view.update(crop_area_min=0.5, flip_prob=0.0)  # keep digits whole and unflipped
  elif preset == "imagenet":
    c.batch_size = 1024
  return c
