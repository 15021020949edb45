"""Test setup: 8 fake CPU devices, so sharding tests run on any machine.

XLA reads the flag when the backend starts, so it is set before anything
imports jax. Tests that do not build a mesh run on device 0 as usual.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update("jax_threefry_partitionable", True)
