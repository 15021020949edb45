"""Device mesh and data placement: data parallelism with jit + NamedSharding.

The mesh has one axis, 'data'. Parameters and optimizer state are replicated;
batches are split along their first axis. Reductions over the batch inside the
jitted step (losses, BatchNorm statistics, contrastive similarity matrices)
therefore span the global batch, and XLA inserts the cross-device collectives.
The same code runs on 1 CPU device, 8 fake CPU devices, a GPU or a TPU pod.
"""

import importlib.util
import os
import pkgutil
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sslx import errors

DATA_AXIS = "data"


def cpu_device_count(config) -> int | None:
  """How many XLA host devices `config.cpu_devices` asks for; None where the user chose already.

  1 (the default) keeps one device: with convolutions on Eigen its step uses
  every core, and it ran the quick starts' steps 5-60% faster than one device
  per core, whose cross-device BatchNorm and gradient all-reduces took 30% of
  BYOL's step (experiments/README.md, "CPU cores as XLA devices"). 0 splits
  the host into the most cores that divide the batch sizes. A count the user
  set (JAX_NUM_CPU_DEVICES, or XLA's device-count flag in XLA_FLAGS) wins.
  """
  if (os.environ.get("JAX_NUM_CPU_DEVICES")
      or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")):
    return None
  count = config.get("cpu_devices", 1)
  if not count:
    batches = (config.batch_size, config.get("eval", {}).get("batch_size", config.batch_size))
    count = max(d for d in range(1, (os.cpu_count() or 1) + 1)
                if all(b % d == 0 for b in batches))
  return count


def split_cpu_into_devices(config) -> None:
  """Data parallelism over CPU cores: `cpu_device_count(config)` XLA host devices.

  Sets JAX's `jax_num_cpu_devices`, which only affects the host platform (on
  GPU/TPU machines jax.devices() is unchanged). It must run before JAX
  initialises its backends (before the first jax.devices()).
  """
  count = cpu_device_count(config)
  if count is not None:
    jax.config.update("jax_num_cpu_devices", count)


# XLA:CPU libraries that can run the convolutions (forward and both backward
# passes). jaxlib 0.10 hands them to YNNPACK by default; XLA's older Eigen
# kernels ran the ResNet-18 BYOL step 1.33x faster, their weight gradients
# 1.7x to 3.3x faster, on this project's 2-core AVX-512 CPU
# (experiments/RESULTS.md, "Which library runs XLA:CPU's convolutions").
# YNNPACK keeps the reductions and elementwise fusions: XLA's own loops ran
# the BatchNorm reductions 5x slower.
CPU_CONV_BACKENDS = ("eigen", "ynnpack")
_YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# The first jaxlib release checked to know the flag (0.7.2 and 0.8.0 do not).
_FIRST_JAXLIB_WITH_YNN_FUSIONS = (0, 8, 3)


def choose_cpu_conv_backend(config) -> None:
  """Sets which library runs convolutions on the host platform (config.cpu_conv_backend).

  Like the device split, it must run before JAX initialises its backends. A
  ynn fusion setting the user put in XLA_FLAGS wins, and hosts with a GPU or
  TPU plugin installed are left as they are.
  """
  backend = config.get("cpu_conv_backend", "eigen")
  if backend not in CPU_CONV_BACKENDS:
    raise errors.ConfigError(
        f"config.cpu_conv_backend={backend!r}; it must be one of {', '.join(map(repr, CPU_CONV_BACKENDS))}.")
  flags_now = os.environ.get("XLA_FLAGS", "")
  if (backend == "ynnpack" or _YNN_FUSION_FLAG in flags_now or not _jaxlib_has_ynn_fusions()
      or _accelerator_plugin_installed()):
    return
  # Only convolutions leave YNNPACK; its dots, reductions and elementwise fusions stay.
  os.environ["XLA_FLAGS"] = f"{flags_now} {_YNN_FUSION_FLAG}=-individual_convolution".strip()


def _jaxlib_has_ynn_fusions() -> bool:
  # XLA aborts the process on a flag it does not know, and older jaxlibs do
  # not know this one.
  import jaxlib.version  # pylint: disable=g-import-not-at-top
  return tuple(jaxlib.version.__version_info__[:3]) >= _FIRST_JAXLIB_WITH_YNN_FUSIONS


def _accelerator_plugin_installed() -> bool:
  # A GPU/TPU host computes on the accelerator, and its plugin's own XLA build
  # also reads XLA_FLAGS: leave the CPU-only flag out there.
  if importlib.util.find_spec("libtpu") is not None:
    return True
  if importlib.util.find_spec("jax_plugins") is None:  # jax's namespace for GPU plugins
    return False
  import jax_plugins  # pylint: disable=g-import-not-at-top
  return any(True for _ in pkgutil.iter_modules(jax_plugins.__path__))


_DISTRIBUTED_ARGS = ("coordinator_address", "num_processes", "process_id",
                     "initialization_timeout", "heartbeat_timeout_seconds")


def distributed_problems(section) -> list[str]:
  """What is wrong with `config.distributed`, each naming the field and what is valid."""
  if not section or not section.get("enabled"):
    return []
  problems = []
  address = section.get("coordinator_address")
  if address is not None:
    host, _, port = str(address).rpartition(":")
    if not host or not port.isdigit():
      problems.append(f"config.distributed.coordinator_address={address!r}; it must be "
                      "'host:port' (process 0's address and a free port), or None to let "
                      "JAX detect the cluster.")
  count, index = section.get("num_processes"), section.get("process_id")
  if count is not None and (not isinstance(count, int) or count < 1):
    problems.append(f"config.distributed.num_processes={count!r}; it must be an integer >= 1.")
  elif index is not None and (not isinstance(index, int) or index < 0
                              or (count is not None and index >= count)):
    problems.append(f"config.distributed.process_id={index!r}; it must be an integer from 0 "
                    f"to num_processes - 1{f' ({count - 1})' if count else ''}.")
  if address is not None and (count is None or index is None):
    problems.append("config.distributed.coordinator_address is set, so num_processes and "
                    "process_id must be too (the same num_processes on every process, "
                    "its own process_id on each).")
  for name in ("initialization_timeout", "heartbeat_timeout_seconds"):
    value = section.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      problems.append(f"config.distributed.{name}={value!r}; it must be an integer > 0 (seconds).")
  ids = section.get("local_device_ids")
  if ids is not None and not all(p.strip().isdigit() for p in str(ids).split(",")):
    problems.append(f"config.distributed.local_device_ids={ids!r}; it must be comma-separated "
                    "device numbers, e.g. '0' or '0,1', or None for all local devices.")
  return problems


def initialize_distributed(section) -> None:
  """Several processes: connect them (`config.distributed`) before any device is used.

  With `enabled` and no `coordinator_address`, JAX detects the cluster
  (Cloud TPU, SLURM, Open MPI, Kubernetes). Elsewhere (a plain multi-node GPU
  cluster, several processes on one machine) every process names process
  0's 'host:port' and the process count, and its own id. A process that stops
  answering for `heartbeat_timeout_seconds` ends the others' runs.
  """
  if not section or not section.get("enabled"):
    return
  problems = distributed_problems(section)
  if problems:
    raise errors.ConfigError(" ".join(problems))
  if jax.distributed.is_initialized():  # a notebook or test that connected already
    return
  kwargs = {name: section.get(name) for name in _DISTRIBUTED_ARGS
            if section.get(name) is not None}
  ids = section.get("local_device_ids")
  if ids is not None:
    kwargs["local_device_ids"] = [int(p) for p in str(ids).split(",")]
  try:
    jax.distributed.initialize(**kwargs)
  except (RuntimeError, ValueError) as e:  # no cluster detected, coordinator unreachable
    raise errors.ConfigError(
        f"jax.distributed.initialize({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) "
        f"failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}. Set "
        "config.distributed.coordinator_address, num_processes and process_id where JAX "
        "cannot detect the cluster, or distributed.enabled=False for one process.") from e


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


def to_global(local_batch: Any, mesh: Mesh) -> Any:
  """Assembles each process's share of the batch (a tree of arrays) into global, sharded arrays."""
  sharding = data_sharding(mesh)
  return jax.tree.map(lambda v: jax.make_array_from_process_local_data(sharding, v), local_batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """A copy of `tree` (the same values on every process) on every device of the mesh."""
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  # device_put would have to send this process's arrays to the other
  # processes' devices, which CPU and GPU backends cannot do; every process
  # holds the same values, so each places its own copy on its own devices.
  def place(x):
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
  return jax.tree.map(place, tree)
