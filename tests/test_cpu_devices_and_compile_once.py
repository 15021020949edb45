"""How main.py sets up a CPU host before JAX starts, and the initialisers' fast compilation.

config.cpu_devices becomes an XLA flag (read once, when the backend starts),
so these tests check the flag, not the devices of this process.
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sslx.config import defaults
from sslx.core import compile_once
from sslx.core import mesh


def _flags_after_split(monkeypatch, config, cores=2):
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setattr(os, "cpu_count", lambda: cores)
  mesh.split_cpu_into_devices(config)
  return os.environ["XLA_FLAGS"]


def test_the_default_keeps_one_device():
  # One device used both cores 5-60% faster than one device per core
  # (experiments/README.md, "CPU cores as XLA devices").
  assert defaults.base_config().cpu_devices == 1


@pytest.mark.parametrize("count", [1, 3])
def test_an_explicit_count_is_the_flag(monkeypatch, count):
  flags = _flags_after_split(monkeypatch, {"cpu_devices": count, "batch_size": 64})
  assert flags == f"--xla_force_host_platform_device_count={count}"


def test_zero_takes_the_most_cores_that_divide_both_batch_sizes(monkeypatch):
  config = ml_collections.ConfigDict(
      {"cpu_devices": 0, "batch_size": 96, "eval": {"batch_size": 64}})
  assert _flags_after_split(monkeypatch, config, cores=8).endswith("device_count=8")
  config.eval.batch_size = 20  # of 1..8, 4 is the largest that divides 96 and 20
  assert _flags_after_split(monkeypatch, config, cores=8).endswith("device_count=4")


def test_a_device_count_in_the_users_xla_flags_wins(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=5")
  mesh.split_cpu_into_devices({"cpu_devices": 1, "batch_size": 64})
  assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=5"


def _init(key):
  k1, k2 = jax.random.split(key)
  return {"w": jax.random.truncated_normal(k1, -2.0, 2.0, (64, 32)),
          "b": jax.random.normal(k2, (32,)) * 0.1}


def test_unoptimised_initialisers_give_the_same_values_to_float32_rounding():
  key = jax.random.PRNGKey(7)
  fast = compile_once.jit(_init)(key)
  # The test process compiles everything unoptimised (conftest's XLA_FLAGS):
  # ask for XLA's default level 2 explicitly for the reference.
  optimised = jax.jit(_init).lower(key).compile(
      compiler_options={"xla_backend_optimization_level": 2})(key)
  for name in ("w", "b"):
    np.testing.assert_allclose(np.asarray(fast[name]), np.asarray(optimised[name]),
                               rtol=1e-6, atol=1e-7)
  # Not a copy of one stream: another seed gives other values.
  assert not np.allclose(np.asarray(compile_once.jit(_init)(jax.random.PRNGKey(8))["w"]),
                         np.asarray(fast["w"]))


def test_one_compilation_per_argument_shape(monkeypatch):
  lowered = []
  real_jit = jax.jit

  class Counting:
    def __init__(self, fn, **kwargs):
      self.jitted = real_jit(fn, **kwargs)

    def lower(self, *args):
      lowered.append(args)
      return self.jitted.lower(*args)

  monkeypatch.setattr(compile_once.jax, "jit", Counting)
  double = compile_once.jit(lambda x: x * 2)
  for value in (1.0, 2.0, 3.0):
    assert float(double(jnp.full((3,), value))[0]) == 2 * value
  double(jnp.zeros((4,)))
  assert len(lowered) == 2  # shapes (3,) and (4,)
