"""A memory bank: one L2-normalised feature per training image, kept in the method state.

Instance discrimination (Wu et al., 2018) compares each image's feature with
the features of every other training image. Computing them all at every step
is out of reach, so a bank keeps the most recent feature of each image,
refreshed with momentum whenever the image is seen again:
    m_i <- normalise(lambda * m_i + (1 - lambda) * v_i)    (NPID Sec. 3.2, lambda = 0.5).

The bank is an array in the train state: replicated on every device (the
whole state is), updated inside the jitted step from the global batch, so
every device and process holds the same bank, and checkpoints save it like
any weight. Not a helper method: not in `METHODS`.

Several copies of one image in a batch (possible where a batch straddles two
epochs) are updated in an order XLA does not fix; for them only, the result
can depend on the device count.
"""

import jax
import jax.numpy as jnp

from sslx.core.numerics import l2_normalize


def init_bank(rng: jax.Array, size: int, dim: int) -> jax.Array:
  """[size, dim] random unit vectors (uniform in a cube, then normalised, as NPID's code)."""
  return l2_normalize(jax.random.uniform(rng, (size, dim), jnp.float32, -1.0, 1.0))


def momentum_update(bank: jax.Array, index: jax.Array, features: jax.Array,
                    momentum: float) -> jax.Array:
  """Rows `index` [B] of `bank` become normalise(momentum * row + (1 - momentum) * features)."""
  features = l2_normalize(jax.lax.stop_gradient(features).astype(bank.dtype))
  rows = l2_normalize(momentum * bank[index] + (1.0 - momentum) * features)
  return bank.at[index].set(rows)
