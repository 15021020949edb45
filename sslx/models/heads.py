"""MLP heads: projectors and predictors on top of the encoder's representation.

One module covers the heads of the methods sslx implements:
  * BYOL projector and predictor: MLP((4096,), 256) (Grill et al., 2020).
  * SimCLR v2 / MoCo v3 projectors: MLP((h, h), d, last_bn=True).
  * SimCLR v1 projector: MLP((h,), d, use_bn=False).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any
Array = jnp.ndarray


class MLP(nn.Module):
  """Dense -> BN -> ReLU per hidden layer, then Dense(out_dim) [-> BN].

  Attributes:
    hidden_dims: sizes of the hidden layers (may be empty: a linear head).
    out_dim: size of the output.
    use_bn: BatchNorm after each hidden Dense.
    last_bn: a BatchNorm without scale or bias after the output Dense, as in
      the SimCLR v2 and MoCo v3 projectors.
    dtype: compute dtype of the hidden layers; parameters and BN statistics
      are float32, and the output layer computes in float32 so that losses
      see full-precision embeddings (experiments/RESULTS.md, mixed precision).
  """

  hidden_dims: Sequence[int]
  out_dim: int
  use_bn: bool = True
  last_bn: bool = False
  dtype: Dtype = jnp.float32

  def _bn(self, train: bool, name: str, affine: bool = True) -> nn.BatchNorm:
    # Same settings as the encoder's BN (BYOL: decay 0.9, eps 1e-5). No
    # axis_name: jit over a sharded global batch already reduces globally.
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        use_scale=affine,
        use_bias=affine,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        force_float32_reductions=True,
        name=name,
    )

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    x = jnp.asarray(x, self.dtype)
    for i, dim in enumerate(self.hidden_dims):
      # A bias right before BN is cancelled by its mean subtraction, so it
      # would only be a dead parameter (and a LARS/weight-decay corner case).
      x = nn.Dense(dim, use_bias=not self.use_bn, dtype=self.dtype,
                   param_dtype=jnp.float32, name=f'dense{i}')(x)
      if self.use_bn:
        x = self._bn(train, f'bn{i}')(x)
      x = nn.relu(x)
    # The output layer runs in float32: its result feeds the loss directly,
    # and rounding it to bf16 (8 mantissa bits) perturbs cosine similarities.
    x = nn.Dense(self.out_dim, use_bias=not self.last_bn, dtype=jnp.float32,
                 param_dtype=jnp.float32, name=f'dense{len(self.hidden_dims)}')(x)
    if self.last_bn:
      x = self._bn(train, f'bn{len(self.hidden_dims)}', affine=False)(x)
    return jnp.asarray(x, jnp.float32)
