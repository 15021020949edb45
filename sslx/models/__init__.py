"""Encoders and heads, and building an encoder from the `model` config section."""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from sslx import errors
from sslx.models.heads import MLP
from sslx.models.resnet import (LAYER_GROUPS, STEMS, BasicBlock, Bottleneck, ResNet,
                                resnet10, resnet18, resnet34, resnet50,
                                resnet101, resnet152, scaled_channels, total_stride)

__all__ = [
    'LAYER_GROUPS', 'MODELS', 'STEMS', 'MLP', 'ResNet', 'BasicBlock', 'Bottleneck',
    'create_encoder', 'feature_dim', 'init_variables', 'scaled_channels', 'resnet10', 'resnet18',
    'resnet34', 'resnet50', 'resnet101', 'resnet152', 'total_stride',
]

# Name (as in `config.model.name`) -> constructor taking ResNet's keywords.
MODELS: dict[str, Callable[..., ResNet]] = {
    'resnet10': resnet10,
    'resnet18': resnet18,
    'resnet34': resnet34,
    'resnet50': resnet50,
    'resnet101': resnet101,
    'resnet152': resnet152,
}


def _build(model_config: Any, dtype: Any, frozen_groups: int = 0) -> ResNet:
  """Validates the config and returns the (unbound) encoder module."""
  name = model_config.name
  if name not in MODELS:
    raise errors.ConfigError(
        f'Unknown model.name {name!r}; valid names: {", ".join(MODELS)}.')
  stem = model_config.stem
  if stem not in STEMS:
    raise errors.ConfigError(
        f'Unknown model.stem {stem!r}; valid stems: {", ".join(STEMS)}.')
  width = float(model_config.width)
  if not width > 0:
    raise errors.ConfigError(f'model.width must be > 0, got {width}.')
  # Optional, so that configs written before the field existed still load.
  zero_init_residual = bool(getattr(model_config, 'zero_init_residual', False))
  try:
    # Accepts jnp.bfloat16 as well as the config's string form ('bfloat16').
    dtype = jnp.dtype(dtype)
  except TypeError as e:
    raise errors.ConfigError(f'Unknown dtype {dtype!r}.') from e
  return MODELS[name](width=width, stem=stem, dtype=dtype,
                      zero_init_residual=zero_init_residual, frozen_groups=frozen_groups)


def create_encoder(model_config: Any, dtype: Any = jnp.float32,
                   frozen_groups: int = 0) -> nn.Module:
  """The encoder described by `model_config` (name, width, stem, ...).

  Args:
    model_config: the `model` config section: `name` (a key of MODELS),
      `width`, `stem` ('cifar' or 'imagenet') and optionally
      `zero_init_residual`.
    dtype: compute dtype (jnp.float32, jnp.bfloat16 or its name).
    frozen_groups: freeze the first this many of LAYER_GROUPS (fine-tuning).

  Returns:
    An unbound flax module; `module.apply(vars, x, train=...)` gives [B, D]
    float32 features with D = `feature_dim(model_config)`.

  Raises:
    errors.ConfigError: unknown name, stem or dtype, or a non-positive width.
  """
  return _build(model_config, dtype, frozen_groups)


def feature_dim(model_config: Any) -> int:
  """Size of the representation the configured encoder returns."""
  return _build(model_config, jnp.float32).feature_dim


def init_variables(module: nn.Module, seed: int, images: jax.Array) -> dict:
  """Freshly initialised (eval-mode) variables of `module`, in one compiled call.

  Op by op, `init` compiles every initializer separately: about 5 s for a
  ResNet-10 on CPU, against one short compilation here.
  """
  init = jax.jit(functools.partial(module.init, train=False))
  return dict(init(jax.random.PRNGKey(seed), images))

