"""A convolutional decoder: from an encoder's feature map back to image resolution.

The dense pretext tasks predict something at every pixel from the encoder's
last feature map: the missing pixels (context encoder) or a distribution over
colours (colorization). Both use this module: per entry of `channels`,
upsample by 2 (nearest neighbour), 3x3 convolution, BatchNorm, ReLU; then a
3x3 convolution to `out_channels` and a bilinear resize to `output_size` (so
odd sizes such as 20 px, a 3x3 map after a stride-8 encoder, come out exact).
Resize-then-convolve avoids the checkerboard artefacts of transposed
convolutions (Odena, Dumoulin & Olah, 2016, "Deconvolution and checkerboard
artifacts"). The decoder is a head: it is dropped at transfer time.

`CodeDecoder` starts from a vector instead of a map: a dense layer and ReLU
expand it to a grid x grid x width map for a `ConvDecoder`. Decoding from the
encoder's pooled representation makes that one vector carry the whole image,
as the context encoder's fully connected bottleneck does (Pathak et al. 2016,
Sec. 3.1; their released code decodes from a 4,000-d code).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class ConvDecoder(nn.Module):
  """[B, h, w, C] -> [B, output_size, output_size, out_channels] (float32)."""

  channels: Sequence[int]
  out_channels: int
  output_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = jnp.asarray(x, self.dtype)
    for i, width in enumerate(self.channels):
      b, h, w, c = x.shape
      x = jax.image.resize(x, (b, 2 * h, 2 * w, c), "nearest")
      x = nn.Conv(width, (3, 3), use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                  name=f"conv{i}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                       dtype=self.dtype, param_dtype=jnp.float32,
                       force_float32_reductions=True, name=f"bn{i}")(x)
      x = nn.relu(x)
    # The prediction layer in float32, like the MLP heads' output layer.
    x = nn.Conv(self.out_channels, (3, 3), dtype=jnp.float32, param_dtype=jnp.float32,
                name="predict")(x)
    b, _, _, c = x.shape
    return jax.image.resize(x, (b, self.output_size, self.output_size, c), "bilinear")


class CodeDecoder(nn.Module):
  """[B, D] -> [B, output_size, output_size, out_channels] (float32), through a
  [B, grid, grid, width] map: dense, ReLU, then a ConvDecoder."""

  channels: Sequence[int]
  out_channels: int
  output_size: int
  grid: int
  width: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, code: jax.Array, train: bool) -> jax.Array:
    x = nn.Dense(self.grid * self.grid * self.width, dtype=self.dtype, param_dtype=jnp.float32,
                 name="expand")(jnp.asarray(code, self.dtype))
    x = nn.relu(x).reshape(code.shape[0], self.grid, self.grid, self.width)
    return ConvDecoder(self.channels, self.out_channels, self.output_size, self.dtype,
                       name="decoder")(x, train)
