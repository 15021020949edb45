r"""kNN evaluation of a frozen encoder from a pretraining checkpoint.

  python main.py --config=configs/knn_eval.py --workdir=/tmp/eval_knn --config.checkpoint=/tmp/byol
  python main.py --config=configs/knn_eval.py --workdir=/tmp/eval_knn_rand --config.checkpoint=random
  python main.py --config=configs/knn_eval.py:cifar10 --workdir=/tmp/eval_knn_c10 \
      --config.checkpoint=/tmp/byol_c10 --config.label_fraction=0.1

The part after ':' is the evaluation dataset's preset (mnist5k, the default;
cifar10; cifar100; imagenet); `--config.data.dataset` takes any sslx dataset.
Weighted kNN with cosine similarity, k=200 and T=0.1 as in InstDisc (Wu et
al., 2018) and solo-learn; k=20 on mnist5k, whose bank is 4,000 images.
Fields are documented in sslx/config/transfer_defaults.py.
"""

from sslx.config import transfer_defaults as transfer_defaults

# The evaluation dataset's preset (the part after ':'); none: the checkpoint's own dataset.
PRESETS = transfer_defaults.PRESETS


def get_config(preset: str = ""):
  return transfer_defaults.base_transfer_config("knn_eval", preset, "configs/knn_eval.py")
