"""How main.py sets up a CPU host before JAX starts, and the initialisers' fast compilation.

config.cpu_devices becomes JAX's `jax_num_cpu_devices` (read once, when the backend
starts), so these tests check the count main.py sets, not the devices of this process.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sslx.config import defaults
from sslx.core import compile_once
from sslx.core import mesh
from conftest import REPO


def _count(monkeypatch, config, cores=2, env=None):
  monkeypatch.delenv("JAX_NUM_CPU_DEVICES", raising=False)
  monkeypatch.setenv("XLA_FLAGS", "")
  for name, value in (env or {}).items():
    monkeypatch.setenv(name, value)
  monkeypatch.setattr(os, "cpu_count", lambda: cores)
  return mesh.cpu_device_count(config)


def test_the_default_keeps_one_device():
  # One device used both cores 5-60% faster than one device per core
  # (experiments/README.md, "CPU cores as XLA devices").
  assert defaults.base_config().cpu_devices == 1


@pytest.mark.parametrize("count", [1, 3])
def test_an_explicit_count_is_the_count(monkeypatch, count):
  assert _count(monkeypatch, {"cpu_devices": count, "batch_size": 64}) == count


def test_zero_takes_the_most_cores_that_divide_both_batch_sizes(monkeypatch):
  config = ml_collections.ConfigDict(
      {"cpu_devices": 0, "batch_size": 96, "eval": {"batch_size": 64}})
  assert _count(monkeypatch, config, cores=8) == 8
  config.eval.batch_size = 20  # of 1..8, 4 is the largest that divides 96 and 20
  assert _count(monkeypatch, config, cores=8) == 4


@pytest.mark.parametrize("env", [{"JAX_NUM_CPU_DEVICES": "5"},
                                 {"XLA_FLAGS": "--xla_force_host_platform_device_count=5"}])
def test_a_device_count_the_user_set_wins(monkeypatch, env):
  assert _count(monkeypatch, {"cpu_devices": 1, "batch_size": 64}, env=env) is None


def test_main_py_gives_jax_the_count_before_its_backend_starts():
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_NUM_CPU_DEVICES", "XLA_FLAGS")}
  code = ("from sslx.core import mesh; import jax; "
          "mesh.split_cpu_into_devices({'cpu_devices': 3, 'batch_size': 6}); "
          "print(len(jax.devices()))")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(env, JAX_PLATFORMS="cpu"),
                       capture_output=True, text=True, timeout=300)
  assert out.stdout.strip() == "3", out.stderr[-2000:]


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


def test_one_compilation_per_argument_shape():
  traces = []

  def double(x):
    traces.append(x.shape)  # runs when jax traces, once per new argument shape
    return x * 2

  jitted = compile_once.jit(double)
  for value in (1.0, 2.0, 3.0):
    assert float(jitted(jnp.full((3,), value))[0]) == 2 * value
  jitted(jnp.zeros((4,)))
  assert traces == [(3,), (4,)]


_CACHE_PROBE = """
import json, sys
import jax, jax.numpy as jnp, ml_collections
from sslx.core import compile_once
used = compile_once.enable_persistent_cache(
    ml_collections.ConfigDict({"compilation_cache_dir": sys.argv[1]}))
jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).block_until_ready()
print(json.dumps({"used": used, "jax": jax.config.jax_compilation_cache_dir}))
"""


def _probe_cache(tmp_path, directory, **env_extra):
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env.update(HOME=str(tmp_path / "home"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", **env_extra)
  out = subprocess.run([sys.executable, "-c", _CACHE_PROBE, directory], env=env,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_persistent_cache_goes_where_the_config_says(tmp_path):
  # '~' is the user's home; the compiled program is written there.
  got = _probe_cache(tmp_path, "~/cache")
  assert got["used"] == got["jax"] == str(tmp_path / "home" / "cache")
  assert os.listdir(tmp_path / "home" / "cache")
  assert defaults.base_config().compilation_cache_dir == "~/.cache/sslx/xla"


def test_an_empty_cache_dir_turns_it_off_and_the_environment_wins(tmp_path):
  assert _probe_cache(tmp_path, "")["used"] is None
  assert not (tmp_path / "home").exists()
  env_dir = str(tmp_path / "from_env")
  got = _probe_cache(tmp_path, str(tmp_path / "from_config"), JAX_COMPILATION_CACHE_DIR=env_dir)
  assert got["used"] == env_dir and os.listdir(env_dir)
  assert not (tmp_path / "from_config").exists()
