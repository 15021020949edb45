"""The state every training loop carries, and the guard every train step ends with.

One `TrainState` serves pretraining (params {'model', 'probe'}, a method's
state), fine-tuning (params {'encoder', 'head'}), the augmented linear probe
and the few-label baseline: the loop (`sslx.core.loop`) and the checkpointer
(`sslx.core.checkpointing`) need nothing else to know about a job.

`guarded_update` is the non-finite guard: a step's new state is finite only
if its loss, its gradients and everything it would keep (parameters,
BatchNorm statistics, optimizer moments, method state: EMA targets, queues,
memory banks, NCE constants) are. With `nonfinite.action='skip'` a non-finite
update is dropped whole except for the step and the optimizer's counters,
which advance, so the optimizer's learning rate, the logged learning rate and
the EMA schedules (all functions of the step) still agree after k skips.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

from sslx.core import health
from sslx.core import rngs as rngs_lib

PyTree = Any
# Fields a step updates and the 'skip' policy restores.
UPDATED_FIELDS = ("params", "batch_stats", "opt_state", "method_state")


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # number of updates applied (or skipped) so far
  params: PyTree
  batch_stats: PyTree  # BatchNorm running statistics ({} for networks without BatchNorm)
  opt_state: PyTree
  method_state: PyTree  # non-gradient state (pretraining's EMA target, queue, memory bank)
  rng: jax.Array  # the run's typed key; step k draws from fold_in(rng, k) (sslx.core.rngs)
  skipped_updates: jax.Array  # non-finite updates dropped so far (nonfinite.action='skip')

  @classmethod
  def create(cls, *, params, opt_state, batch_stats=None, method_state=None,
             rng=None) -> TrainState:
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               batch_stats={} if batch_stats is None else batch_stats, opt_state=opt_state,
               method_state={} if method_state is None else method_state,
               rng=rngs_lib.seed_key(0) if rng is None else rng,
               skipped_updates=jnp.zeros((), jnp.int32))

  def step_rngs(self) -> rngs_lib.StepRngs:
    return rngs_lib.StepRngs.for_step(self.rng, self.step)


def _is_counter(path) -> bool:
  """An optimizer-state leaf that counts steps (optax's `count` fields, sslx's zero_before)."""
  last = path[-1] if path else None
  return getattr(last, "name", getattr(last, "key", None)) == "count"


def guarded_update(state: TrainState, new: TrainState, loss, grads,
                   action: str) -> tuple[TrainState, dict[str, jax.Array]]:
  """(the state to keep, {'finite', 'finite_update', 'skipped_updates'}) after one step.

  `new` is the step's result with `step` already advanced. `finite` covers the
  loss, the gradients and every updated field of `new`; `finite_update` only
  the loss and gradients (the message then says which went wrong first).
  """
  finite_update = health.all_finite(loss, grads)
  finite = finite_update & health.all_finite(*(getattr(new, f) for f in UPDATED_FIELDS))
  if action != "skip":
    return new, {"finite": finite, "finite_update": finite_update,
                 "skipped_updates": new.skipped_updates}
  keep = lambda n, o: jnp.where(finite, n, o)
  kept = {f: jax.tree.map(keep, getattr(new, f), getattr(state, f))
          for f in UPDATED_FIELDS if f != "opt_state"}
  # The optimizer's moments are restored, its step counters advance with the step.
  kept["opt_state"] = jax.tree.map_with_path(
      lambda path, n, o: n if _is_counter(path) else keep(n, o), new.opt_state, state.opt_state)
  skipped = new.skipped_updates + jnp.where(finite, 0, 1).astype(new.skipped_updates.dtype)
  return new.replace(skipped_updates=skipped, **kept), {
      "finite": finite, "finite_update": finite_update, "skipped_updates": skipped}
