"""A convolutional discriminator: one real-vs-generated logit per image.

For pretext tasks with an adversarial term (the context encoder's, Pathak et
al. 2016, Sec. 3.2). The layout is DCGAN's discriminator (Radford, Metz &
Chintala, 2016): strided 4x4 convolutions that halve the resolution, each
followed by a LeakyReLU of slope 0.2, then one linear logit. DCGAN puts
BatchNorm on the inner layers; this one has none, so a discriminator
carries no batch statistics and its output for an image does not depend on
the rest of the batch (real and generated images are scored in one call).
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class ConvDiscriminator(nn.Module):
  """[B, H, W, C] -> logits [B] (float32): > 0 means "real"."""

  channels: Sequence[int] = (32, 64, 128)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # no BatchNorm or dropout: the same function in training and evaluation
    x = jnp.asarray(x, jnp.float32)
    for i, width in enumerate(self.channels):
      x = nn.Conv(width, (4, 4), strides=(2, 2), padding="SAME", name=f"conv{i}")(x)
      x = nn.leaky_relu(x, negative_slope=0.2)
    x = jnp.mean(x, axis=(1, 2))  # any input size
    return nn.Dense(1, name="logit")(x)[:, 0]
