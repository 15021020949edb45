"""The backbone contract: what the rest of sslx may know about an encoder.

A backbone family (ResNet today, a ViT later) is a subclass of `Backbone`,
registered by name in `sslx/models/__init__.py` (`BACKBONES`, chosen by
`config.model.name`). Nothing outside its module knows what is inside:

* `module(dtype, frozen_groups)` builds the flax module. `module.apply(
  variables, images [B, H, W, 3], train=...)` returns a `BackboneOutput`: the
  pooled representation [B, feature_dim] (float32; what probes, kNN and the
  methods' heads read) and the named intermediate feature maps (ResNet: the
  stem and each stage, [B, h, w, c]; a ViT: the tokens after each block), for
  probes at any layer and dense heads.
* `layer_groups`: the encoder's layers in input-to-output order, as fine-tuning
  freezes them (`train_from`) and as layer-wise learning rates address them;
  `layer_group(path)` names the group of a parameter.
* `identity_fields`: the `config.model` fields that determine the weights'
  shapes and meaning; a checkpoint is identified by them.
* `config_problems(image_size)`: what is wrong with the model config (and the
  image size it will see), as messages, before anything is built.
"""

import abc
from typing import Any, ClassVar, Sequence

import flax
import flax.linen as nn
import jax
import ml_collections


@flax.struct.dataclass
class BackboneOutput:
  """What every backbone's module returns."""
  pooled: jax.Array  # [B, feature_dim], float32
  # Named intermediate outputs; jax sorts dict keys, so the input-to-output
  # order is the backbone's `feature_map_names`.
  feature_maps: dict[str, jax.Array]


class Backbone(abc.ABC):
  """A configured encoder family: builds modules and describes their layers."""

  identity_fields: ClassVar[tuple[str, ...]] = ("name",)
  layer_groups: ClassVar[tuple[str, ...]] = ()

  def __init__(self, model_config: ml_collections.ConfigDict | dict):
    self.model_config = model_config

  @property
  @abc.abstractmethod
  def feature_dim(self) -> int:
    """Size of the pooled representation, known without init."""

  @property
  @abc.abstractmethod
  def feature_map_names(self) -> tuple[str, ...]:
    """Keys of `BackboneOutput.feature_maps`, input to output."""

  @abc.abstractmethod
  def module(self, dtype: Any = "float32", frozen_groups: int = 0) -> nn.Module:
    """The flax module; the first `frozen_groups` layer groups run frozen (see the family)."""

  @abc.abstractmethod
  def layer_group(self, path: Sequence[str]) -> str:
    """The layer group of the parameter at `path` (keys inside the encoder's params)."""

  @classmethod
  def config_problems(cls, model_config, image_size: int | None) -> list[str]:
    """Problems of `model_config` (and the input size), as one message each."""
    del model_config, image_size
    return []

  def identity(self) -> dict[str, Any]:
    """The identity fields' values (defaults filled in) as saved with a checkpoint."""
    return {k: self.model_config.get(k) for k in self.identity_fields}
