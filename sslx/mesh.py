"""Device mesh and data placement: data parallelism with jit + NamedSharding.

The mesh has one axis, 'data'. Parameters and optimizer state are replicated;
batches are split along their first axis. Reductions over the batch inside the
jitted step (losses, BatchNorm statistics, contrastive similarity matrices)
therefore span the global batch, and XLA inserts the cross-device collectives.
The same code runs on 1 CPU device, 8 fake CPU devices, a GPU or a TPU pod.
"""

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sslx import errors

DATA_AXIS = "data"


def split_cpu_into_devices(config) -> None:
  """Data parallelism over CPU cores: one XLA host device per core.

  XLA's CPU backend keeps about one core busy per device for small convnets
  (measured: a lone BYOL run used 1 of 2 cores; two devices ran the quick
  start ~30% faster, experiments/README.md). This only affects the host
  platform: on GPU/TPU machines jax.devices() is unchanged. It must run before
  JAX initialises its backends (before the first jax.devices() or array).
  """
  flags_now = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" in flags_now:
    return
  count = config.get("cpu_devices", 0)
  if not count:
    batches = (config.batch_size, config.get("eval", {}).get("batch_size", config.batch_size))
    count = max(d for d in range(1, (os.cpu_count() or 1) + 1)
                if all(b % d == 0 for b in batches))
  os.environ["XLA_FLAGS"] = f"{flags_now} --xla_force_host_platform_device_count={count}".strip()


def initialize_distributed(enabled: bool) -> None:
  """Multi-host: connect the processes before any device is touched."""
  if enabled:
    jax.distributed.initialize()


def create_mesh(num_devices: int | None = None) -> Mesh:
  devices = jax.devices()
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise errors.ConfigError(
          f"config.num_devices={num_devices} but {len(devices)} devices are available "
          f"({devices[0].platform}); use a value from 1 to {len(devices)} or None for all.")
    if jax.process_count() > 1 and num_devices != len(devices):
      raise errors.ConfigError("config.num_devices must be None (all devices) on several hosts.")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(global_batch_size: int, num_devices: int) -> None:
  if global_batch_size % num_devices:
    nearest = max(num_devices, global_batch_size // num_devices * num_devices)
    raise errors.ConfigError(
        f"config.batch_size={global_batch_size} is not divisible by the number of devices "
        f"({num_devices}); use a multiple of {num_devices}, e.g. {nearest}.")


def to_global(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's share of the batch into one global, sharded array."""
  sharding = data_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, replicated(mesh))
