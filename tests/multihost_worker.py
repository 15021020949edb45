"""One process of a multi-process run on this machine (started by tests/test_multihost.py).

  python tests/multihost_worker.py --num_processes=2 --process_id=0 --port=P \
      --local_devices=2 --out=DIR

Runs a few pretraining steps of each method on the same synthetic global
batches, this process feeding its share of each (rows [i B/P, (i+1) B/P)), as
the input pipeline does on a real multi-host run, and writes its losses and
its copy of the final state to DIR/<method>_<process_id>.npz. One process with
twice the local devices is the reference: the same global batch over the same
number of devices.
"""

import argparse
import os
import sys


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument("--process_id", type=int, required=True)
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--local_devices", type=int, required=True)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--methods", default="byol,simclr,moco")
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  # Before jax starts: this process's CPU devices. conftest, imported below before
  # the backend starts, keeps this count and adds its FAST_COMPILE_FLAGS.
  os.environ["JAX_NUM_CPU_DEVICES"] = str(args.local_devices)
  here = os.path.dirname(os.path.abspath(__file__))
  sys.path[:0] = [here, os.path.dirname(here)]
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from conftest import INFO, synthetic_batch, tiny_config  # pylint: disable=import-outside-toplevel
  from sslx.core import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  from sslx.jobs import pretrain  # pylint: disable=import-outside-toplevel

  for method in args.methods.split(","):
    config = tiny_config(method)
    config.distributed.update(
        enabled=args.num_processes > 1, coordinator_address=f"127.0.0.1:{args.port}",
        num_processes=args.num_processes, process_id=args.process_id,
        initialization_timeout=60, heartbeat_timeout_seconds=20)
    mesh_lib.initialize_distributed(config.distributed)
    mesh = mesh_lib.create_mesh(None)
    assert jax.process_count() == args.num_processes and mesh.devices.size == 4, (
        jax.process_count(), mesh.devices.size)
    trainer = pretrain.Trainer(config, INFO, mesh)
    state = trainer.init_state(config.seed)
    share = config.batch_size // args.num_processes
    rows = slice(args.process_id * share, (args.process_id + 1) * share)
    losses = []
    for step in range(args.steps):
      batch = jax.tree.map(lambda x: x[rows], synthetic_batch(config, step))
      state, metrics = trainer.train_step(state, mesh_lib.to_global(batch, mesh))
      losses.append(float(metrics["loss"].addressable_data(0)))
    # The state is replicated: every process holds a full copy on each local device.
    leaves = jax.tree_util.tree_leaves_with_path(
        {"params": state.params, "batch_stats": state.batch_stats,
         "method_state": state.method_state})
    np.savez(os.path.join(args.out, f"{method}_{args.process_id}.npz"),
             losses=np.asarray(losses),
             **{jax.tree_util.keystr(path): np.asarray(leaf.addressable_data(0))
                for path, leaf in leaves})


if __name__ == "__main__":
  main()
