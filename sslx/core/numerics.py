"""Small numerical helpers shared by methods, health monitors and evaluation."""

import jax.numpy as jnp


def l2_normalize(x, axis=-1):
  """x / ||x|| in float32: losses and similarities run at full precision whatever the compute dtype."""
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), 1e-12)
