"""A trained encoder for use outside sslx: load it, call it on images, export it.

    import sslx
    encoder = sslx.load_encoder("/tmp/sslx_byol")     # a workdir, a step, an export, a .pt
    features = encoder(images)                        # [N, H, W, 3] uint8 (or [0, 1] float) -> [N, D]

`encoder.feature_maps(images)` returns the backbone's named maps ('stem',
'stage1'..'stage4' for a ResNet), `encoder.preprocess(images)` the network's
input, and `encoder.module` / `encoder.variables` the flax module and its
weights for one's own JAX code (`encoder.module.apply(encoder.variables, x,
train=False)`). Images are preprocessed as sslx evaluates them: a centre
square crop, resized to the pretraining size, scaled to [0, 1], normalised
with the pretraining dataset's mean and std. Grey images are repeated to RGB.

Exports: `encoder.save_portable(dir)` (msgpack + JSON, readable without
sslx; sslx/export/portable.py) and `encoder.save_torchvision(path)` (a
torchvision-layout ResNet state_dict; sslx/export/torch_resnet.py).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sslx import errors
from sslx import models
from sslx.export import portable
from sslx.export import torch_resnet


@dataclasses.dataclass
class Encoder:
  """A frozen encoder with the preprocessing it was trained with."""
  model: dict[str, Any]  # the backbone's identity fields (name, width, stem, ...)
  variables: Any  # {'params', 'batch_stats'}
  image_size: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  source: dict[str, Any]  # checkpoint, step, method, pretraining dataset

  def __post_init__(self):
    self.backbone = models.get_backbone(ml_collections.ConfigDict(self.model))
    self.module = self.backbone.module("float32")
    self.variables = jax.tree.map(jnp.asarray, self.variables)

  @property
  def feature_dim(self) -> int:
    return self.backbone.feature_dim

  def preprocess(self, images) -> jax.Array:
    """[N, H, W, C] or [H, W, C] images (uint8, or floats in [0, 1]) -> the network's input."""
    x = jnp.asarray(images)
    if x.ndim == 3:
      x = x[None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
      raise errors.ConfigError(f"Images must be [N, H, W, 3] or [N, H, W, 1]; got shape "
                               f"{tuple(x.shape)}.")
    x = x.astype(jnp.float32) / 255.0 if jnp.issubdtype(x.dtype, jnp.integer) else x
    x = x.astype(jnp.float32)
    if x.shape[-1] == 1:
      x = jnp.repeat(x, 3, axis=-1)
    n, h, w, _ = x.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[:, top:top + side, left:left + side]
    if side != self.image_size:
      x = jax.image.resize(x, (n, self.image_size, self.image_size, 3), "bilinear",
                           antialias=True)
    return (x - jnp.asarray(self.mean)) / jnp.asarray(self.std)

  @functools.cached_property
  def _apply(self):
    return jax.jit(lambda variables, x: self.module.apply(variables, x, train=False))

  def _batched(self, images, batch_size: int, pick):
    images = np.asarray(images)
    single = images.ndim == 3
    images = images[None] if single else images
    outputs = [jax.device_get(pick(self._apply(self.variables, self.preprocess(
        images[i:i + batch_size])))) for i in range(0, len(images), batch_size)]
    out = jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)
    return jax.tree.map(lambda a: a[0], out) if single else out

  def __call__(self, images, batch_size: int = 256) -> np.ndarray:
    """Pooled features [N, feature_dim] (float32) of `images`."""
    return self._batched(images, batch_size, lambda out: out.pooled)

  def feature_maps(self, images, batch_size: int = 256) -> dict[str, np.ndarray]:
    """The backbone's named feature maps of `images`, each [N, h, w, c]."""
    return self._batched(images, batch_size, lambda out: dict(out.feature_maps))

  def description(self) -> dict[str, Any]:
    return {"model": dict(self.model), "feature_dim": self.feature_dim,
            "feature_maps": list(self.backbone.feature_map_names),
            "input": {"image_size": self.image_size, "mean": list(self.mean),
                      "std": list(self.std), "layout": "NHWC", "range": "[0, 1] before mean/std",
                      "crop": "centre square, resized (bilinear) to image_size"},
            "source": self.source}

  def save_portable(self, directory: str) -> dict[str, str]:
    """DIR/encoder.msgpack + DIR/encoder.json, readable with flax alone."""
    return portable.save(directory, self.variables, self.description())

  def save_torchvision(self, path: str) -> str:
    """A torch state_dict with torchvision's ResNet names (load with strict=True, fc removed)."""
    if not self.model["name"].startswith("resnet"):
      raise errors.ConfigError(f"Only ResNets export to torchvision, not {self.model['name']}.")
    torch_resnet.save(path, jax.device_get(self.variables))
    return path


def load_encoder(path: str, step: int | None = None, *, image_size: int | None = None,
                 mean=None, std=None) -> Encoder:
  """The encoder at `path`, ready to call on images.

  `path` is a pretraining workdir (its newest step, or `step`),
  WORKDIR/checkpoints/STEP, a directory `save_portable` wrote, or a torch
  ResNet state_dict (.pt/.pth: torchvision or timm). A state_dict carries no
  preprocessing: it gets ImageNet's mean/std at 224 px unless `image_size`,
  `mean` and `std` say otherwise (they override every source's).
  """
  from sslx.data import datasets  # pylint: disable=import-outside-toplevel
  from sslx.evaluation import transfer  # pylint: disable=import-outside-toplevel
  if path in (transfer.RANDOM, transfer.SCRATCH):
    raise errors.ConfigError(f"load_encoder({path!r}): give a pretraining workdir, a step, an "
                             "export or a .pt; a random encoder is models.create_encoder's.")
  config = ml_collections.ConfigDict({
      "checkpoint": os.path.expanduser(path), "checkpoint_step": step, "model": {}})
  loaded = transfer.load_backbone(config)
  source = dict(loaded.source)
  inputs = source.pop("input", None)
  if inputs:  # a portable export says how it was fed
    default_mean, default_std, default_size = inputs["mean"], inputs["std"], inputs["image_size"]
  elif source["pretrain_dataset"]:
    (default_mean, default_std), default_size = (datasets.normalization(
        source["pretrain_dataset"]), source["pretrain_image_size"])
  else:  # a torch state_dict: torchvision's ImageNet preprocessing
    default_mean, default_std, default_size = datasets.IMAGENET_MEAN, datasets.IMAGENET_STD, 224
  return Encoder(model=loaded.model_config.to_dict(), variables=loaded.variables,
                 image_size=image_size or default_size,
                 mean=tuple(mean if mean is not None else default_mean),
                 std=tuple(std if std is not None else default_std), source=source)
