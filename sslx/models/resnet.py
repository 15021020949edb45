"""ResNet encoders (He et al., 2016) in flax.linen, without a classifier, and their backbone spec.

The encoder maps images [B, H, W, C] to a `BackboneOutput`: the
global-average-pooled representation [B, D] and the feature maps of the stem
and of each stage; self-supervised methods put their own projector on top and
probes read the representation directly, so there is no fc layer.
`ResNetBackbone` is the backbone contract (sslx/models/backbone.py) for the
whole family: the only place that knows these are ResNets.

Layout follows torchvision's ResNet "v1.5" (the variant BYOL, SimCLR and MoCo
report with): bias-free convolutions each followed by BatchNorm, the stride of a
bottleneck on its 3x3 convolution, and a 1x1 convolution + BN projection
shortcut wherever a block changes shape. Paddings are symmetric as in PyTorch,
so that weights can be ported one-to-one and parameter counts match torchvision.

Module names (`stem_conv`, `stem_bn`, `stage1_block0`, ..., and inside a block
`conv1`, `bn1`, ..., `shortcut_conv`, `shortcut_bn`) are part of the checkpoint
format: do not rename them.
"""

import functools
from typing import Any, Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sslx import errors
from sslx.models.backbone import Backbone, BackboneOutput

Dtype = Any
Array = jnp.ndarray

STEMS = ('cifar', 'imagenet')

# Base (width 1) output channels of the four stages' 3x3 convolutions; a
# bottleneck expands its output by `expansion` on top of these.
_STAGE_FILTERS = (64, 128, 256, 512)
_STEM_FILTERS = 64
# The encoder's layer groups in order, as fine-tuning names them: its
# `train_from` option trains the named group and everything after it.
LAYER_GROUPS = ('stem', 'stage1', 'stage2', 'stage3', 'stage4')

# torchvision initialises convolutions with kaiming_normal_(mode='fan_out',
# nonlinearity='relu'); matching it keeps activation scales (and thus the
# early-training behaviour the papers' hyperparameters were tuned for) the same.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# Running statistics keep BN_MOMENTUM of the old value per step (torchvision's 0.1 update).
BN_MOMENTUM = 0.9


def scaled_channels(channels: int, width: float) -> int:
  """A width-1 channel count times `width`, rounded, and at least 1."""
  return max(1, int(round(channels * width)))


def _batch_norm(dtype: Dtype, train: bool, name: str,
                zero_scale: bool = False) -> nn.BatchNorm:
  """BatchNorm as in torchvision/BYOL: momentum 0.9, epsilon 1e-5.

  No `axis_name`: training uses jit over a sharded global batch, so the mean
  over the batch axis already spans every device. Statistics, running averages
  and the normalisation itself are float32 (force_float32_reductions); only the
  output is cast to the compute dtype.
  """
  return nn.BatchNorm(
      use_running_average=not train,
      momentum=BN_MOMENTUM,
      epsilon=1e-5,
      dtype=dtype,
      param_dtype=jnp.float32,
      force_float32_reductions=True,
      scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones,
      name=name,
  )


def _conv(features: int, kernel: int, strides: int, dtype: Dtype,
          name: str) -> nn.Conv:
  """Bias-free conv (a BN follows) with PyTorch's symmetric padding k // 2."""
  pad = kernel // 2
  return nn.Conv(
      features,
      (kernel, kernel),
      strides=(strides, strides),
      padding=((pad, pad), (pad, pad)),
      use_bias=False,
      kernel_init=conv_kernel_init,
      dtype=dtype,
      param_dtype=jnp.float32,
      name=name,
  )


def _shortcut(x: Array, y: Array, strides: int, dtype: Dtype,
              train: bool) -> Array:
  """The residual path: identity, or a 1x1 conv + BN where the shape changes.

  Called inside a block's compact `__call__`, so its layers belong to the block.
  """
  if x.shape == y.shape:
    return x
  x = _conv(y.shape[-1], 1, strides, dtype, 'shortcut_conv')(x)
  return _batch_norm(dtype, train, 'shortcut_bn')(x)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with a residual connection (ResNet-18/34).

  `filters` is the width-1 channel count of the stage (64, 128, ...); the block
  scales it by `width` itself so that every block of a ResNet agrees on it.
  """

  expansion: ClassVar[int] = 1

  filters: int
  strides: int = 1
  width: float = 1.0
  dtype: Dtype = jnp.float32
  zero_init_residual: bool = False

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    out_ch = scaled_channels(self.filters * self.expansion, self.width)
    y = _conv(out_ch, 3, self.strides, self.dtype, 'conv1')(x)
    y = _batch_norm(self.dtype, train, 'bn1')(y)
    y = nn.relu(y)
    y = _conv(out_ch, 3, 1, self.dtype, 'conv2')(y)
    y = _batch_norm(self.dtype, train, 'bn2',
                    zero_scale=self.zero_init_residual)(y)
    return nn.relu(_shortcut(x, y, self.strides, self.dtype, train) + y)


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (strided, v1.5), 1x1 expand x4 (ResNet-50/101/152)."""

  expansion: ClassVar[int] = 4

  filters: int
  strides: int = 1
  width: float = 1.0
  dtype: Dtype = jnp.float32
  zero_init_residual: bool = False

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    mid_ch = scaled_channels(self.filters, self.width)
    out_ch = scaled_channels(self.filters * self.expansion, self.width)
    y = _conv(mid_ch, 1, 1, self.dtype, 'conv1')(x)
    y = _batch_norm(self.dtype, train, 'bn1')(y)
    y = nn.relu(y)
    # v1.5: striding the 3x3 rather than the first 1x1 conv loses less
    # information when downsampling (~0.5% top-1 on ImageNet).
    y = _conv(mid_ch, 3, self.strides, self.dtype, 'conv2')(y)
    y = _batch_norm(self.dtype, train, 'bn2')(y)
    y = nn.relu(y)
    y = _conv(out_ch, 1, 1, self.dtype, 'conv3')(y)
    y = _batch_norm(self.dtype, train, 'bn3',
                    zero_scale=self.zero_init_residual)(y)
    return nn.relu(_shortcut(x, y, self.strides, self.dtype, train) + y)


BlockType = type[BasicBlock] | type[Bottleneck]


class ResNet(nn.Module):
  """ResNet encoder returning a BackboneOutput: pooled [B, feature_dim] and the maps.

  `feature_maps` holds 'stem' (after the stem's ReLU, and max-pool for the
  ImageNet stem) and 'stage1'..'stage4' (each stage's last block), [B, h, w, c]
  in the compute dtype. Unused maps cost nothing: XLA drops them.

  Attributes:
    stage_sizes: number of blocks in each of the four stages.
    block: `BasicBlock` or `Bottleneck`.
    width: multiplier applied to every channel count (rounded, at least 1).
    stem: 'cifar' (3x3 stride-1 conv, no max-pool, SimCLR's small-image
      variant) or 'imagenet' (7x7 stride-2 conv + 3x3 stride-2 max-pool).
    dtype: compute dtype (e.g. jnp.bfloat16). Parameters and BN statistics are
      float32 regardless; the returned features are float32.
    zero_init_residual: initialise the last BN scale of every residual branch
      to zero, so that each block starts as its shortcut (Goyal et al., 2017).
    frozen_groups: fine-tuning: the first this many of LAYER_GROUPS ('stem',
      'stage1', ..., 'stage4') run in inference mode even when train=True
      (their BatchNorm uses and keeps its running statistics) and no gradient
      flows back into them. 0 (default) trains everything.
  """

  stage_sizes: Sequence[int]
  block: BlockType
  width: float = 1.0
  stem: str = 'cifar'
  dtype: Dtype = jnp.float32
  zero_init_residual: bool = False
  frozen_groups: int = 0

  @property
  def feature_dim(self) -> int:
    """Size of the representation; available without init."""
    return scaled_channels(_STAGE_FILTERS[-1] * self.block.expansion,
                           self.width)

  @nn.compact
  def __call__(self, x: Array, train: bool) -> BackboneOutput:
    if self.stem not in STEMS:
      raise errors.ConfigError(
          f'Unknown ResNet stem {self.stem!r}; valid stems: '
          f'{", ".join(map(repr, STEMS))}.')
    if self.width <= 0:
      raise errors.ConfigError(f'ResNet width must be > 0, got {self.width}.')
    if x.ndim != 4:
      raise ValueError(f'ResNet expects images [B, H, W, C], got {x.shape}.')

    if not 0 <= self.frozen_groups <= len(LAYER_GROUPS):
      raise errors.ConfigError(
          f'frozen_groups must be in [0, {len(LAYER_GROUPS)}], got {self.frozen_groups}.')

    def group_done(x, group):
      # Nothing before the first trainable group gets a gradient.
      return jax.lax.stop_gradient(x) if group + 1 == self.frozen_groups else x

    x = jnp.asarray(x, self.dtype)
    stem_ch = scaled_channels(_STEM_FILTERS, self.width)
    stem_train = train and self.frozen_groups == 0
    if self.stem == 'imagenet':
      x = _conv(stem_ch, 7, 2, self.dtype, 'stem_conv')(x)
    else:
      x = _conv(stem_ch, 3, 1, self.dtype, 'stem_conv')(x)
    x = _batch_norm(self.dtype, stem_train, 'stem_bn')(x)
    x = nn.relu(x)
    if self.stem == 'imagenet':
      # Padding 1 as in PyTorch; inputs are post-ReLU (>= 0) so padding with
      # -inf or 0 gives the same maxima.
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    x = group_done(x, 0)
    maps = {'stem': x}

    for i, num_blocks in enumerate(self.stage_sizes):
      stage_train = train and self.frozen_groups <= i + 1
      for j in range(num_blocks):
        # The first stage keeps the resolution (the stem already reduced it).
        strides = 2 if i > 0 and j == 0 else 1
        x = self.block(
            filters=_STAGE_FILTERS[i],
            strides=strides,
            width=self.width,
            dtype=self.dtype,
            zero_init_residual=self.zero_init_residual,
            name=f'stage{i + 1}_block{j}',
        )(x, stage_train)
      x = group_done(x, i + 1)
      maps[f'stage{i + 1}'] = x

    # Pool in float32: a bfloat16 mean over H*W terms would lose precision,
    # and downstream losses, probes and kNN all want float32 features.
    return BackboneOutput(pooled=jnp.mean(x.astype(jnp.float32), axis=(1, 2)),
                          feature_maps=maps)


def total_stride(stem: str) -> int:
  """Input pixels per output position of the last stage: 3 strided stages, x4 for the ImageNet stem."""
  return 8 * (4 if stem == 'imagenet' else 1)


def _variant(stage_sizes: Sequence[int], block: BlockType,
             doc: str) -> Callable[..., ResNet]:
  """A named constructor taking ResNet's remaining fields as keywords."""
  fn = functools.partial(ResNet, stage_sizes=tuple(stage_sizes), block=block)
  fn.__doc__ = doc
  return fn


resnet10 = _variant((1, 1, 1, 1), BasicBlock,
                    'ResNet-10 (basic blocks): small, for tests and quick runs.')
resnet18 = _variant((2, 2, 2, 2), BasicBlock, 'ResNet-18 (basic blocks).')
resnet34 = _variant((3, 4, 6, 3), BasicBlock, 'ResNet-34 (basic blocks).')
resnet50 = _variant((3, 4, 6, 3), Bottleneck, 'ResNet-50 (bottlenecks).')
resnet101 = _variant((3, 4, 23, 3), Bottleneck, 'ResNet-101 (bottlenecks).')
resnet152 = _variant((3, 8, 36, 3), Bottleneck, 'ResNet-152 (bottlenecks).')


VARIANTS: dict[str, Callable[..., ResNet]] = {
    'resnet10': resnet10,
    'resnet18': resnet18,
    'resnet34': resnet34,
    'resnet50': resnet50,
    'resnet101': resnet101,
    'resnet152': resnet152,
}


class ResNetBackbone(Backbone):
  """The backbone contract for every ResNet variant (`config.model.name` in VARIANTS).

  Model fields: `name`, `width` (channel multiplier), `stem` ('cifar' or
  'imagenet') and `zero_init_residual` (optional; False when absent, so that
  configs written before the field existed still load).
  """

  identity_fields = ('name', 'width', 'stem', 'zero_init_residual')
  layer_groups = LAYER_GROUPS

  def __init__(self, model_config):
    problems = self.config_problems(model_config, None)
    if problems:
      raise errors.ConfigError(' '.join(problems))
    super().__init__(model_config)
    get = model_config.get
    self.name = get('name')
    self.width = float(get('width'))
    self.stem = get('stem')
    self.zero_init_residual = bool(get('zero_init_residual') or False)

  @classmethod
  def config_problems(cls, model_config, image_size):
    get = model_config.get
    problems = []
    if get('name') not in VARIANTS:
      problems.append(f'Unknown model.name {get("name")!r}; valid ResNets: '
                      f'{", ".join(VARIANTS)}.')
    if get('stem') not in STEMS:
      problems.append(f'Unknown model.stem {get("stem")!r}; valid stems: '
                      f'{", ".join(STEMS)}.')
    width = get('width')
    if not (isinstance(width, (int, float)) and not isinstance(width, bool)
            and width > 0):
      problems.append(f'config.model.width={width!r}; it must be a number > 0.')
    zero_init = get('zero_init_residual')
    if zero_init is not None and not isinstance(zero_init, bool):
      problems.append(f'config.model.zero_init_residual={zero_init!r}; it must be '
                      'True or False.')
    stem = get('stem')
    if (isinstance(image_size, int) and not isinstance(image_size, bool)
        and stem in STEMS and image_size < total_stride(stem)):
      stride = total_stride(stem)
      other = [s for s in STEMS if total_stride(s) <= image_size]
      fix = (f'use model.stem={other[0]!r} (total stride {total_stride(other[0])}) or '
             if other else '')
      problems.append(
          f'config.data.image_size={image_size} is smaller than the total stride {stride} '
          f'of a ResNet with model.stem={stem!r}, so its last stage would see padding '
          f'only; {fix}use image_size >= {stride}.')
    return problems

  @property
  def feature_dim(self) -> int:
    return scaled_channels(_STAGE_FILTERS[-1] * VARIANTS[self.name].keywords['block'].expansion,
                           self.width)

  @property
  def feature_map_names(self) -> tuple[str, ...]:
    return LAYER_GROUPS

  def identity(self) -> dict[str, Any]:
    return {'name': self.name, 'width': self.width, 'stem': self.stem,
            'zero_init_residual': self.zero_init_residual}

  def module(self, dtype: Any = 'float32', frozen_groups: int = 0) -> ResNet:
    try:
      # Accepts jnp.bfloat16 as well as the config's string form ('bfloat16').
      dtype = jnp.dtype(dtype)
    except TypeError as e:
      raise errors.ConfigError(f'Unknown dtype {dtype!r}.') from e
    return VARIANTS[self.name](width=self.width, stem=self.stem, dtype=dtype,
                               zero_init_residual=self.zero_init_residual,
                               frozen_groups=frozen_groups)

  def layer_group(self, path) -> str:
    """'stem_conv' -> 'stem', 'stage3_block1' -> 'stage3' (module names are the format)."""
    top = str(path[0])
    group = 'stem' if top.startswith('stem') else top.split('_')[0]
    if group not in LAYER_GROUPS:
      raise ValueError(f'{"/".join(map(str, path))} is not a ResNet parameter.')
    return group
