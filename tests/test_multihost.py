"""Several processes on this machine, connected by jax.distributed (gloo CPU collectives).

Two processes with 2 CPU devices each train BYOL, SimCLR (negatives from the
global batch) and MoCo v2 (its queue) for a few steps on the same global
batches as one process with 4 devices: the losses and the final state must
agree within float tolerance, and the two processes must hold the same state.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from sslx.core import mesh
from conftest import free_port, shared_by_workers

HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = ("byol", "simclr", "moco")


def _start(out, num_processes, process_id, port, local_devices):
  cmd = [sys.executable, os.path.join(HERE, "multihost_worker.py"),
         f"--num_processes={num_processes}", f"--process_id={process_id}", f"--port={port}",
         f"--local_devices={local_devices}", f"--out={out}", f"--methods={','.join(METHODS)}"]
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
  # Session-wide and shared by the xdist workers: both workers run tests of this
  # module, and the three processes take minutes on a 2-core machine.
  with shared_by_workers(tmp_path_factory, "multihost_runs") as root:
    one, two = root / "one_process", root / "two_processes"
    if not (root / "done").exists():
      one.mkdir(exist_ok=True)
      two.mkdir(exist_ok=True)
      port = free_port()
      procs = [_start(one, 1, 0, free_port(), 4),
               _start(two, 2, 0, port, 2), _start(two, 2, 1, port, 2)]
      for p in procs:
        output, _ = p.communicate(timeout=600)
        assert p.returncode == 0, output[-3000:]
      (root / "done").touch()
  load = lambda d, m, i: dict(np.load(os.path.join(d, f"{m}_{i}.npz")))
  return {m: (load(one, m, 0), load(two, m, 0), load(two, m, 1)) for m in METHODS}


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_train_as_one_process_with_the_same_devices(runs, method):
  single, first, second = runs[method]
  assert set(first) == set(single)
  np.testing.assert_allclose(first["losses"], single["losses"], rtol=1e-4)
  for name in single:
    # Float32 sums in another order (gloo's all-reduce across processes, XLA's within one),
    # grown by 3 steps of BatchNorm over 4 examples per device: each element within 1e-3 of
    # itself or of its array's largest magnitude (MoCo's BN statistics near 0 on an AVX-512
    # CPU: 2.3e-5 apart where the array reaches 0.25). A wrong reduction or a lost
    # process's share moves whole arrays by far more.
    scale = float(np.max(np.abs(single[name])))
    np.testing.assert_allclose(first[name], single[name], rtol=1e-3, atol=1e-5 + 1e-3 * scale,
                               err_msg=name)
  if method == "moco":  # the queue filled with the keys of both processes' examples
    queue = [k for k in single if "queue" in k]
    assert queue and any(np.abs(single[k]).sum() > 0 for k in queue)


@pytest.mark.parametrize("method", METHODS)
def test_both_processes_hold_the_same_state(runs, method):
  _, first, second = runs[method]
  for name in first:
    np.testing.assert_array_equal(first[name], second[name], err_msg=name)


@pytest.mark.parametrize("fields, message", [
    (dict(coordinator_address="localhost"), r"'host:port'"),
    (dict(coordinator_address="10.0.0.1:1234"), r"num_processes and process_id must be too"),
    (dict(num_processes=0), r"num_processes=0; it must be an integer >= 1"),
    (dict(num_processes=2, process_id=2), r"process_id=2; it must be an integer from 0 to "
                                           r"num_processes - 1 \(1\)"),
    (dict(heartbeat_timeout_seconds=0), r"heartbeat_timeout_seconds=0; it must be an integer > 0"),
    (dict(local_device_ids="gpu0"), r"local_device_ids='gpu0'; it must be comma-separated"),
])
def test_a_wrong_distributed_section_is_named(fields, message):
  from sslx.config import defaults  # pylint: disable=import-outside-toplevel
  section = defaults.base_config().distributed
  section.update(enabled=True, **fields)
  problems = " ".join(mesh.distributed_problems(section))
  assert problems and re.search(message, problems), problems


def test_a_disabled_section_is_not_checked():
  from sslx.config import defaults  # pylint: disable=import-outside-toplevel
  section = defaults.base_config().distributed
  section.coordinator_address = "no port"
  assert mesh.distributed_problems(section) == []
