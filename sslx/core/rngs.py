"""Random streams: every key derived from its parent by a purpose tag, never by position.

With JAX's partitionable threefry (the default from jax 0.5), `split(k, n)[i]`
equals `fold_in(k, i)`, so two streams taken from one key, one by splitting
and one by folding in a small number, can be the same stream. sslx derives
each stream by folding in a 32-bit hash of its name instead:

    run_key = derive(seed_key(seed), "train")      # the run's base key (saved)
    step_key = fold_in(run_key, step)              # nothing else folds into run_key
    derive(step_key, "augment"), derive(step_key, "method"), ...

A key is either folded with purpose tags or split, never both, so two streams
coincide only if two names hash alike, which `derive` refuses for the names a
process has used (a collision among a few dozen names is a 1-in-10^8 event).
`tests/test_random_streams.py` records every key a train step consumes, for
every method, and checks they are all distinct.
"""

from __future__ import annotations

import zlib

import flax
import jax

_TAGS: dict[int, str] = {}


def tag(purpose: str) -> int:
  """The 32-bit number `purpose` folds into a key; distinct names give distinct numbers."""
  value = zlib.crc32(purpose.encode())
  known = _TAGS.setdefault(value, purpose)
  if known != purpose:
    raise ValueError(f"Random-stream names {known!r} and {purpose!r} hash alike; rename one.")
  return value


def derive(key: jax.Array, purpose: str) -> jax.Array:
  """The stream of `key` for `purpose` (a name unique among `key`'s streams)."""
  return jax.random.fold_in(key, tag(purpose))


def seed_key(seed: int) -> jax.Array:
  """A typed threefry key for `seed` (`jax.random.key`; `key_data` gives its raw words)."""
  return jax.random.key(seed)


def as_typed(key: jax.Array) -> jax.Array:
  """`key` as a typed key array: raw uint32 words (an older checkpoint's) are wrapped."""
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    return key
  return jax.random.wrap_key_data(key)


@flax.struct.dataclass
class StepRngs:
  """The keys of one train step, one per purpose; adding dropout never changes a method's sampling.

  `method(name)` gives a method's own sampling streams (MoCo's BatchNorm
  shuffle, masks, permutations), each by name. `modules(name)` gives the
  `rngs` a flax module's forward pass takes ({'dropout', 'drop_path'}), one
  pair per pass, so that two views or two networks never share a mask.
  """
  key: jax.Array  # the step's key: fold_in(run key, step)

  @classmethod
  def for_step(cls, run_key: jax.Array, step) -> StepRngs:
    return cls(key=jax.random.fold_in(run_key, step))

  @property
  def augment(self) -> jax.Array:
    """The photometric augmentation of the step's views (the trainer's)."""
    return derive(self.key, "augment")

  def method(self, name: str) -> jax.Array:
    """A method's own sampling stream `name` (e.g. 'moco/shuffle_view1')."""
    return derive(derive(self.key, "method"), name)

  def modules(self, name: str) -> dict[str, jax.Array]:
    """{'dropout', 'drop_path'} keys for forward pass `name` (e.g. 'online/view1')."""
    call = derive(derive(self.key, "modules"), name)
    return {"dropout": derive(call, "dropout"), "drop_path": derive(call, "drop_path")}
