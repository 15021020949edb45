"""What sslx needs to know about a dataset and an encoder's input (no TensorFlow needed).

`DatasetInfo` describes a dataset; `Preprocessing` describes how an encoder's
input is made from an image. An encoder is trained with one preprocessing and
carries it in its checkpoint (`sslx.core.checkpointing`) and its exports:
every evaluator, the fine-tuning job, the few-label table and
`sslx.load_encoder` feed it exactly that, whatever dataset they read, so that
two encoders compared on the same images differ in their weights alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# Normalisation constants for images scaled to [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Per-channel pixel statistics of the 50,000 CIFAR-10 training images
# (Krizhevsky, 2009), as used for CIFAR-10 and CIFAR-100 by solo-learn
# (da Costa et al., 2022, JMLR 23(56)).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
# MNIST training-set statistics (the PyTorch MNIST example), repeated for the
# three channels a grey digit becomes.
MNIST_MEAN = (0.1307,) * 3
MNIST_STD = (0.3081,) * 3
# mnistm5k's 4,000 training images (python -c "from sslx.data import mnistm5k;
# x = mnistm5k.build()['train'][0] / 255; print(x.mean((0, 1, 2)), x.std((0, 1, 2)))").
MNISTM_MEAN = (0.4337, 0.3646, 0.3433)
MNISTM_STD = (0.3182, 0.2840, 0.2858)

# The statistics each named dataset is normalised with; npz files and image
# folders (and any other name) get ImageNet's.
NORMALIZATION = {
    "mnist5k": (MNIST_MEAN, MNIST_STD),
    "mnistm5k": (MNISTM_MEAN, MNISTM_STD),
    "cifar10": (CIFAR_MEAN, CIFAR_STD),
    "cifar100": (CIFAR_MEAN, CIFAR_STD),
    "stl10": (IMAGENET_MEAN, IMAGENET_STD),
    "imagenet2012": (IMAGENET_MEAN, IMAGENET_STD),
    "imagenette": (IMAGENET_MEAN, IMAGENET_STD),
}


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std) the pipeline normalises dataset `name` with, without reading it."""
  return NORMALIZATION.get(name, (IMAGENET_MEAN, IMAGENET_STD))


def reads_by_index(name: str) -> bool:
  """npz arrays and image folders are read by index as one stream for any number of
  processes; TFDS record files one shard per process."""
  return isinstance(name, str) and name.startswith(("npz:", "folder:"))


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the rest of sslx needs to know about a dataset.

  Attributes:
    name: the name as given in the config ('mnist5k', 'cifar10',
      'npz:/p/f.npz', 'folder:/p').
    num_classes: number of classes; None when the dataset has no labels.
    num_train_examples: size of the pretraining split (turns epochs into steps).
    pretrain_split: split used for pretraining ('train+unlabelled' for stl10).
    train_split: labelled training split (kNN memory bank, probes); None if
      the dataset is unlabelled.
    test_split: evaluation split; None when there is none.
    mean: RGB mean of images scaled to [0, 1].
    std: RGB standard deviation of images scaled to [0, 1].
  """
  name: str
  num_classes: int | None
  num_train_examples: int
  pretrain_split: str
  train_split: str | None
  test_split: str | None
  mean: tuple[float, float, float]
  std: tuple[float, float, float]


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How an encoder's input is made from an image of any size.

  The shorter side is resized (bilinear, antialiased) to
  image_size / crop_fraction and the centre image_size x image_size square
  cut; grey images are repeated to RGB (with `grey`, colour images become the
  grey of their CIE lightness, what a colorization encoder sees); pixels are
  scaled to [0, 1], then normalised with `mean` and `std` per channel.
  """
  image_size: int
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  crop_fraction: float = 1.0
  grey: bool = False

  def to_dict(self) -> dict[str, Any]:
    return {"image_size": int(self.image_size), "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std], "crop_fraction": float(self.crop_fraction),
            "grey": bool(self.grey)}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
    return cls(image_size=int(d["image_size"]), mean=tuple(float(v) for v in d["mean"]),
               std=tuple(float(v) for v in d["std"]),
               crop_fraction=float(d.get("crop_fraction", 1.0)), grey=bool(d.get("grey", False)))

  @classmethod
  def of_pretraining(cls, config: dict[str, Any], grey_input: bool = False) -> Preprocessing:
    """The preprocessing a pretraining config (as a dict) evaluates its encoder with."""
    data = config["data"]
    mean, std = normalization(data["dataset"])
    return cls(image_size=int(data["image_size"]), mean=tuple(mean), std=tuple(std),
               crop_fraction=float(data.get("eval_crop_fraction", 1.0)),
               grey=bool(data.get("grey", False)) or grey_input)

  def data_config(self, data_config) -> Any:
    """A copy of `config.data` whose evaluation pipeline makes this input (size, crop, grey)."""
    out = type(data_config)(data_config.to_dict()) if hasattr(data_config, "to_dict") else dict(
        data_config)
    out["image_size"], out["eval_crop_fraction"], out["grey"] = (
        int(self.image_size), float(self.crop_fraction), bool(self.grey))
    return out

  def describe(self) -> str:
    grey = ", as grey lightness" if self.grey else ""
    crop = f", centre {self.crop_fraction:g}" if self.crop_fraction != 1.0 else ""
    return (f"{self.image_size} px{crop}{grey}, mean {tuple(round(v, 4) for v in self.mean)}, "
            f"std {tuple(round(v, 4) for v in self.std)}")
