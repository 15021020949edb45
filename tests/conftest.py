"""Test setup: 8 fake CPU devices, and fast compilation.

XLA reads these flags when the backend starts, so they are set before anything
imports jax. Tests that do not build a mesh run on device 0 as usual.

Test models are tiny, so XLA's compile time dominates a test's run time;
backend optimisation level 0 compiles about 5x faster (measured on
tests/test_byol.py: 80 s -> 15 s) at the cost of slower execution, which tiny
models do not notice. Real runs (main.py, experiments/) keep the defaults.
"""

import os

TEST_XLA_FLAGS = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"

os.environ.setdefault("JAX_PLATFORMS", "cpu")
for _flag in TEST_XLA_FLAGS.split():
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Many tests (and the main.py processes they start, which inherit this
# environment) compile the same tiny train steps: XLA's persistent cache turns
# the repeats into a file read (measured: a 6-step in-process run 31 s -> 20 s).
# The cache is keyed by the program, the flags and the jax version.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

from sslx import mesh  # pylint: disable=g-import-not-at-top,wrong-import-position

# The convolution library main.py chooses (importing jax does not start a backend).
mesh.choose_cpu_conv_backend({})

jax.config.update("jax_threefry_partitionable", True)
