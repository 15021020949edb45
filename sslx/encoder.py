"""A trained encoder for use outside sslx: load it, call it on images, export it.

    import sslx
    encoder = sslx.load_encoder("/tmp/sslx_byol")     # a workdir, a step, an export, a .pt
    features = encoder(images)                        # [N, H, W, 3] uint8 (or [0, 1] float) -> [N, D]

`encoder.feature_maps(images)` returns the backbone's named maps ('stem',
'stage1'..'stage4' for a ResNet), `encoder.preprocess(images)` the network's
input, and `encoder.module` / `encoder.variables` the flax module and its
weights for one's own JAX code (`encoder.module.apply(encoder.variables, x,
train=False)`). Images are preprocessed exactly as every sslx evaluator feeds
this encoder (`encoder.preprocessing`, saved in its checkpoint): the shorter
side resized and the centre square cut at the encoder's input size, grey
repeated to RGB (or colour turned into grey lightness for an encoder trained
on it), scaled to [0, 1] and normalised with the mean and std of the data it
was trained on. Float images in [0, 1] are first quantised to 8 bits, as the
pipeline reads every image.

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
from sslx.data import augment
from sslx.data.info import Preprocessing
from sslx.evaluation import features as features_lib
from sslx.evaluation import transfer
from sslx.export import portable
from sslx.export import torch_resnet


@dataclasses.dataclass
class Encoder:
  """A frozen encoder with the preprocessing it was trained with."""
  model: dict[str, Any]  # the backbone's identity fields (name, width, stem, ...)
  variables: Any  # {'params', 'batch_stats'}
  preprocessing: Preprocessing
  source: dict[str, Any]  # checkpoint, step, method, pretraining dataset

  def __post_init__(self):
    self.backbone = models.get_backbone(ml_collections.ConfigDict(self.model))
    self.module = self.backbone.module("float32")
    self.variables = jax.tree.map(jnp.asarray, self.variables)

  @property
  def feature_dim(self) -> int:
    return self.backbone.feature_dim

  @property
  def image_size(self) -> int:
    return self.preprocessing.image_size

  @property
  def mean(self) -> tuple[float, ...]:
    return self.preprocessing.mean

  @property
  def std(self) -> tuple[float, ...]:
    return self.preprocessing.std

  def crops(self, images) -> np.ndarray:
    """[N, H, W, C] or [H, W, C] images (uint8, or floats in [0, 1]) -> uint8 [N, S, S, 3]."""
    from sslx.data import input_pipeline  # pylint: disable=import-outside-toplevel  (TensorFlow)
    x = np.asarray(images)
    if x.ndim == 3:
      x = x[None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
      raise errors.ConfigError(f"Images must be [N, H, W, 3] or [N, H, W, 1]; got shape "
                               f"{tuple(x.shape)}.")
    if not np.issubdtype(x.dtype, np.integer):
      x = np.round(np.clip(x.astype(np.float32), 0.0, 1.0) * 255.0)
    return input_pipeline.eval_crops(x.astype(np.uint8), self.preprocessing)

  def preprocess(self, images) -> jax.Array:
    """[N, H, W, C] or [H, W, C] images (uint8, or floats in [0, 1]) -> the network's input."""
    p = self.preprocessing
    return augment.normalize(augment.to_float01(jnp.asarray(self.crops(images))), p.mean, p.std,
                             jnp.float32)

  @functools.cached_property
  def _embed(self):
    # The evaluators' own feature function: the same pixels give the same features.
    return features_lib.make_embed_fn(self.module, self.preprocessing, jnp.float32)

  @functools.cached_property
  def _maps(self):
    p = self.preprocessing
    return jax.jit(lambda variables, images: dict(self.module.apply(
        variables, augment.normalize(augment.to_float01(images), p.mean, p.std, jnp.float32),
        train=False).feature_maps))

  def _batched(self, images, batch_size: int, fn):
    images = np.asarray(images)
    single = images.ndim == 3
    crops = self.crops(images)
    outputs = [jax.device_get(fn(self.variables, crops[i:i + batch_size]))
               for i in range(0, len(crops), batch_size)]
    out = jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)
    return jax.tree.map(lambda a: a[0], out) if single else out

  def __call__(self, images, batch_size: int = 256) -> np.ndarray:
    """Pooled features [N, feature_dim] (float32) of `images`."""
    return self._batched(images, batch_size, self._embed)

  def feature_maps(self, images, batch_size: int = 256) -> dict[str, np.ndarray]:
    """The backbone's named feature maps of `images`, each [N, h, w, c]."""
    return self._batched(images, batch_size, self._maps)

  def description(self) -> dict[str, Any]:
    return {"model": dict(self.model), "feature_dim": self.feature_dim,
            "feature_maps": list(self.backbone.feature_map_names),
            "input": {**self.preprocessing.to_dict(), "layout": "NHWC",
                      "range": "[0, 1] before mean/std",
                      "crop": "shorter side resized (bilinear, antialiased) to "
                              "image_size / crop_fraction, centre square of image_size"},
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

  `path` is a training workdir (its newest step, or `step`),
  WORKDIR/checkpoints/STEP, a directory `save_portable` wrote, or a torch
  ResNet state_dict (.pt/.pth: torchvision or timm). A state_dict carries no
  preprocessing: it gets ImageNet's mean/std at 224 px unless `image_size`,
  `mean` and `std` say otherwise (they override every source's).
  """
  if path in (transfer.RANDOM, transfer.SCRATCH):
    raise errors.ConfigError(f"load_encoder({path!r}): give a pretraining workdir, a step, an "
                             "export or a .pt; a random encoder is models.create_encoder's.")
  config = ml_collections.ConfigDict({
      "checkpoint": os.path.expanduser(path), "checkpoint_step": step, "model": {}})
  loaded = transfer.load_backbone(config)
  prep = loaded.preprocessing or Preprocessing(image_size=224, mean=transfer.IMAGENET_MEAN,
                                               std=transfer.IMAGENET_STD)
  overrides = {k: tuple(v) if k != "image_size" else v
               for k, v in dict(image_size=image_size, mean=mean, std=std).items() if v is not None}
  return Encoder(model=loaded.model_config.to_dict(), variables=loaded.variables,
                 preprocessing=dataclasses.replace(prep, **overrides), source=dict(loaded.source))
