"""Schedules that are not learning rates: EMA / momentum-encoder rates.

The EMA update itself is optax's: `optax.incremental_update(online, target, 1 - rate)`.
"""

import jax.numpy as jnp


def cosine_ema_rate(step, total_steps: int, base_rate: float, final_rate: float = 1.0):
  """EMA decay rate increased from `base_rate` to `final_rate` along a cosine.

  BYOL (Grill et al., 2020, Sec. 3.2): tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2,
  which is the special case final_rate = 1. `step` may be traced.
  """
  progress = jnp.clip(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 0.0, 1.0)
  return final_rate - (final_rate - base_rate) * (jnp.cos(jnp.pi * progress) + 1.0) / 2.0
