"""One preprocessing per encoder: every consumer feeds an encoder exactly what it was trained on.

An encoder's input (size, centre crop, grey, mean and std) is saved in its
checkpoint. The evaluators read the same digits as mnist5k, as an npz file
and as a folder of PNGs: their features must equal `sslx.load_encoder`'s, bit
for bit, in each form (before this, npz and folders were normalised with
ImageNet's statistics whatever the encoder had seen). A random-init encoder
gets the preset's input, or a checkpoint's with `random_init_defaults.like`.
"""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import sslx
from configs import knn_eval as knn_eval_config
from sslx.core import checkpointing
from sslx.data import info as info_lib
from sslx.evaluation import transfer
from sslx.jobs import knn_eval

N_TRAIN, N_TEST = 60, 40


@pytest.fixture(scope="module")
def digits(tmp_path_factory, tfds_dir):
  """The first digits of mnist5k's splits as arrays, an npz file and a folder of PNGs."""
  root = tmp_path_factory.mktemp("digit_forms")
  builder = tfds.builder("mnist5k", data_dir=tfds_dir)
  splits = {}
  for split, n in (("train", N_TRAIN), ("test", N_TEST)):
    ds = builder.as_dataset(split=f"{split}[:{n}]")
    examples = list(tfds.as_numpy(ds))
    splits[split] = (np.stack([e["image"] for e in examples]),
                     np.array([e["label"] for e in examples], np.int32))
  npz = str(root / "digits.npz")
  np.savez(npz, x_train=splits["train"][0], y_train=splits["train"][1],
           x_test=splits["test"][0], y_test=splits["test"][1])
  for split, (x, y) in splits.items():
    for i, (image, label) in enumerate(zip(x, y)):
      path = root / "folder" / split / f"class{label}" / f"{i:05d}.png"
      path.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(image[..., 0]).save(path)
  return splits, npz, str(root / "folder")


def _setup(tfds_dir, workdir, dataset, checkpoint, **random_init):
  config = knn_eval_config.get_config()
  config.update(checkpoint=checkpoint, num_devices=1)
  config.data.update(dataset=dataset, data_dir=tfds_dir)
  config.random_init_defaults.update(random_init)
  return config, transfer.setup(config, str(workdir), batch_sizes=(64,))


@pytest.mark.parametrize("form", ["mnist5k", "npz", "folder"])
def test_evaluator_features_equal_load_encoders_bit_for_bit(form, digits, pretrained, tfds_dir,
                                                            tmp_path):
  (splits, npz, folder) = digits
  dataset = {"mnist5k": "mnist5k", "npz": f"npz:{npz}", "folder": f"folder:{folder}"}[form]
  _, s = _setup(tfds_dir, tmp_path / "eval", dataset, pretrained)
  saved = checkpointing.read_encoder(pretrained)
  assert s.preprocessing.to_dict() == saved.record["preprocessing"]
  assert s.preprocessing.mean == info_lib.MNIST_MEAN  # the encoder's, not ImageNet's
  images, labels = splits["test"]
  indices = np.arange(N_TEST) if form == "mnist5k" else None
  features, got_labels = transfer.feature_extractor(s)("test", batch_size=64, indices=indices)
  if form == "folder":  # stored class by class, each class in file order
    order = np.lexsort((np.arange(N_TEST), labels))
    images, labels = images[order], labels[order]
  np.testing.assert_array_equal(got_labels, labels)
  encoder = sslx.load_encoder(pretrained)
  assert encoder.preprocessing == s.preprocessing
  np.testing.assert_array_equal(features, encoder(images, batch_size=64))


def test_an_export_keeps_the_encoders_preprocessing(pretrained, tmp_path, digits):
  encoder = sslx.load_encoder(pretrained)
  encoder.save_portable(str(tmp_path / "export"))
  again = sslx.load_encoder(str(tmp_path / "export"))
  assert again.preprocessing == encoder.preprocessing
  images = digits[0]["test"][0][:16]
  np.testing.assert_array_equal(again(images), encoder(images))


def test_random_init_is_fed_as_the_preset_or_a_named_checkpoint(digits, pretrained, tfds_dir,
                                                                tmp_path):
  _, npz, _ = digits
  # The preset's input (mnist5k's statistics), not the evaluation data's ImageNet default.
  _, preset = _setup(tfds_dir, tmp_path / "a", f"npz:{npz}", "random")
  assert (preset.preprocessing.mean, preset.preprocessing.image_size) == (info_lib.MNIST_MEAN, 20)
  # `like`: the architecture and input of a pretrained encoder, weights random.
  _, like = _setup(tfds_dir, tmp_path / "b", f"npz:{npz}", "random", like=pretrained)
  saved = checkpointing.read_encoder(pretrained)
  assert like.preprocessing.to_dict() == saved.record["preprocessing"]
  assert like.backbone.model_config.to_dict() == transfer.load_backbone(
      _setup(tfds_dir, tmp_path / "c", f"npz:{npz}", pretrained)[0]).model_config.to_dict()


def test_an_evaluators_results_say_what_it_fed_the_encoder(digits, pretrained, tfds_dir, tmp_path,
                                                          capsys):
  _, npz, _ = digits
  config, _ = _setup(tfds_dir, tmp_path / "setup", f"npz:{npz}", pretrained)
  config.knn.k = 5
  results = knn_eval.run(config, str(tmp_path / "knn"))
  saved = json.load(open(os.path.join(tmp_path / "knn", "eval_results.json")))
  assert saved["preprocessing"] == results["preprocessing"] == checkpointing.read_encoder(
      pretrained).record["preprocessing"]
  assert f"kNN (k=5, T=0.1) on npz:{npz} test" in capsys.readouterr().out
