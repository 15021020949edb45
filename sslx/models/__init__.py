"""Backbones (encoders) and heads.

`BACKBONES` maps `config.model.name` to its family's `Backbone` spec
(sslx/models/backbone.py: pooled feature + named feature maps, layer groups,
identity fields). A new backbone family is a module here with a `Backbone`
subclass, and one line per model name below.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sslx import errors
from sslx.config import validation
from sslx.core import compile_once
from sslx.models.backbone import Backbone, BackboneOutput
from sslx.models.heads import MLP
from sslx.models.resnet import (LAYER_GROUPS, STEMS, VARIANTS, BasicBlock, Bottleneck, ResNet,
                                ResNetBackbone, resnet10, resnet18, resnet34, resnet50,
                                resnet101, resnet152, scaled_channels, total_stride)
from sslx.registry import Registry

__all__ = [
    'BACKBONES', 'Backbone', 'BackboneOutput', 'LAYER_GROUPS', 'STEMS', 'VARIANTS', 'MLP',
    'ResNet', 'ResNetBackbone', 'BasicBlock', 'Bottleneck', 'create_encoder', 'feature_dim',
    'get_backbone', 'init_variables', 'scaled_channels', 'resnet10', 'resnet18', 'resnet34',
    'resnet50', 'resnet101', 'resnet152', 'total_stride',
]

# config.model.name -> the Backbone class of its family.
BACKBONES = Registry('model', 'config.model.name', {
    'resnet10': 'sslx.models.resnet:ResNetBackbone',
    'resnet18': 'sslx.models.resnet:ResNetBackbone',
    'resnet34': 'sslx.models.resnet:ResNetBackbone',
    'resnet50': 'sslx.models.resnet:ResNetBackbone',
    'resnet101': 'sslx.models.resnet:ResNetBackbone',
    'resnet152': 'sslx.models.resnet:ResNetBackbone',
})


def get_backbone(model_config: Any) -> Backbone:
  """The `Backbone` spec of `model_config` (ConfigError for an unknown name or bad fields)."""
  return BACKBONES.get(model_config.get('name'))(model_config)


def backbone_problems(model_config: Any, image_size: int | None) -> list[str]:
  """Everything wrong with the model config, without raising (config validation)."""
  name = model_config.get('name')
  if name not in BACKBONES:
    return [BACKBONES.unknown_message(name)]
  return BACKBONES.get(name).config_problems(model_config, image_size)


def config_problems(config: Any) -> list[str]:
  """The backbone's own checks of a pretraining config: name, fields, the image size it will
  see, and `eval.feature_layer` against its feature maps."""
  model = config.get('model')
  if model is None:
    return ['config.model is missing.']
  data = config.get('data') or {}
  problems = backbone_problems(model, data.get('image_size'))
  evaluation = config.get('eval') or {}
  if not problems and 'feature_layer' in evaluation and 'feature_grid' in evaluation:
    problems += validation.feature_layer_problems(
        evaluation['feature_layer'], evaluation['feature_grid'],
        get_backbone(model).feature_map_names)
  return problems


def check_variables(model_config: Any, variables: dict, where: str, image_size: int) -> None:
  """An exported encoder's variables must be exactly what the architecture's init builds."""
  encoder = create_encoder(model_config)
  expected = jax.eval_shape(lambda: encoder.init(
      jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)), train=False))
  shape_of = lambda tree: {jax.tree_util.keystr(path): tuple(v.shape)
                           for path, v in jax.tree.leaves_with_path(tree)}
  want, got = shape_of(dict(expected)), shape_of(dict(variables))
  if want != got:
    diff = sorted(set(want.items()) ^ set(got.items()))[:4]
    described = ', '.join(f'{k} {v}' for k, v in model_config.items())
    raise errors.CheckpointError(
        f'The encoder in {where} does not match its recorded architecture ({described}); '
        f'first differences (path, shape): {diff}. The file may be corrupt.')


def create_encoder(model_config: Any, dtype: Any = jnp.float32,
                   frozen_groups: int = 0) -> nn.Module:
  """The encoder module described by `model_config`.

  `module.apply(vars, x, train=...)` returns a BackboneOutput whose `pooled`
  features are [B, feature_dim(model_config)] float32. `frozen_groups`
  freezes the first this many of the backbone's layer groups (fine-tuning).
  Raises errors.ConfigError for an unknown name or invalid fields or dtype.
  """
  return get_backbone(model_config).module(dtype, frozen_groups)


def feature_dim(model_config: Any) -> int:
  """Size of the representation the configured encoder returns."""
  return get_backbone(model_config).feature_dim


def init_variables(module: nn.Module, seed: int, images: jax.Array) -> dict:
  """Freshly initialised (eval-mode) variables of `module`, in one compiled call.

  Op by op, `init` compiles every initializer separately: about 5 s for a
  ResNet-10 on CPU, against one short compilation here (sslx/core/compile_once.py).
  """
  init = compile_once.jit(functools.partial(module.init, train=False))
  return dict(init(jax.random.key(seed), images))
