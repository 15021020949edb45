"""Random streams: every key a train step uses is distinct, for every method.

With partitionable threefry, `split(k)[i] == fold_in(k, i)`; sslx derives each
stream by a hash of its name instead (sslx/core/rngs.py). Here each method's
jitted train step runs once while every jax.random sampler reports the key it
is given (inside vmap too: one key per example), and each forward pass the
dropout / drop-path keys it is handed, through `jax.debug.callback`: no two
may be equal.
"""

import inspect

import jax
import numpy as np
import pytest

from sslx.core import mesh as mesh_lib
from sslx.core import rngs as rngs_lib
from sslx.jobs import pretrain
from conftest import INFO, synthetic_batch, tiny_config
from test_pretext_methods import small

METHODS = [("byol", None), ("simclr", None), ("moco", "mnist5k,v2"), ("moco", "mnist5k,v3"),
           ("rotnet", None), ("relative_patch", None), ("jigsaw", None), ("colorization", None),
           ("context_encoder", None), ("exemplar", None), ("instance_discrimination", None),
           ("cpc", None), ("supervised", None)]
# jax.random functions that draw from a key (rather than derive one).
SAMPLERS = [name for name, fn in vars(jax.random).items()
            if callable(fn) and not name.startswith("_")
            and name not in ("split", "fold_in", "key", "PRNGKey", "key_data", "wrap_key_data",
                             "key_impl", "clone", "default_prng_impl")
            and next(iter(inspect.signature(fn).parameters), None) == "key"]


def _config(name, arg):
  if name in ("byol", "simclr", "moco", "rotnet"):
    config = tiny_config(name, arg)
  else:
    config = small(name)
  if name == "moco":  # the shuffled BatchNorm draws a permutation per key view
    config.moco.update(bn_groups=2, symmetric=True) if arg.endswith("v2") else \
        config.moco.update(bn_groups=2)
  if name == "instance_discrimination":
    config.instance_discrimination.num_negatives = 8  # (NCE draws negatives)
  config.batch_size = 4
  return config


def test_the_samplers_cover_what_the_methods_use():
  assert {"uniform", "normal", "bernoulli", "randint", "permutation", "choice"} <= set(SAMPLERS)


def test_two_stream_names_that_hash_alike_are_refused(monkeypatch):
  monkeypatch.setattr(rngs_lib.zlib, "crc32", lambda data: 7)
  monkeypatch.setattr(rngs_lib, "_TAGS", {})
  assert rngs_lib.tag("moco/shuffle_v1") == 7
  with pytest.raises(ValueError, match="'moco/shuffle_v1' and 'jigsaw/placement' hash alike"):
    rngs_lib.tag("jigsaw/placement")


@pytest.mark.parametrize("name, arg", METHODS, ids=[f"{n}-{a}" if a else n for n, a in METHODS])
def test_every_key_a_step_uses_is_distinct(name, arg, monkeypatch):
  config = _config(name, arg)
  mesh = mesh_lib.create_mesh(1)
  trainer = pretrain.Trainer(config, INFO, mesh)
  state = trainer.init_state(0)
  batch = mesh_lib.to_global(synthetic_batch(config), mesh)
  seen = []

  def store(data):
    seen.extend(row.tobytes() for row in np.asarray(data).reshape(-1, 2))

  def record(key):  # at run time: the key's words, one row per key of a batch of keys
    jax.debug.callback(store, jax.random.key_data(rngs_lib.as_typed(key)))

  for sampler in SAMPLERS:
    original = getattr(jax.random, sampler)

    def wrapped(key, *args, _original=original, **kwargs):
      record(key)
      return _original(key, *args, **kwargs)
    monkeypatch.setattr(jax.random, sampler, wrapped)
  modules = rngs_lib.StepRngs.modules

  def recorded_modules(self, purpose):
    keys = modules(self, purpose)
    for key in keys.values():
      record(key)
    return keys
  monkeypatch.setattr(rngs_lib.StepRngs, "modules", recorded_modules)

  state, _ = trainer.train_step(state, batch)
  jax.block_until_ready(state)
  assert len(seen) >= 2, len(seen)
  assert len(set(seen)) == len(seen), f"{len(seen) - len(set(seen))} keys used twice"
