"""Orbax checkpoints of the train state, written as separately restorable items.

Layout of `WORKDIR/checkpoints/<step>/`:
  online/        params ({'model': ..., 'probe': ...}) and BatchNorm stats of the
                 online networks; the encoder is `params.model.encoder`
  method_state/  non-gradient state of the method (BYOL's EMA target, a queue)
  opt_state/     optimizer state
  train/         step counter and base rng key
  config/        the full config as JSON (architecture, method, data)

An evaluator restores only `online` and `config`. Orbax writes each step to a
temporary directory and renames it when complete, so a killed job never leaves
a half-written checkpoint that `latest_step()` would pick up.
"""

import json
import os
from typing import Any

from absl import logging
from etils import epath
import jax
import ml_collections
import orbax.checkpoint as ocp

from sslx import errors

ITEMS = ("online", "method_state", "opt_state", "train")
CONFIG_ITEM = "config"


def check_writable(workdir: str) -> None:
  """Fails now, not at the first checkpoint an hour later, if `workdir` cannot be written.

  Creates the directory if needed and writes and removes a small file; works
  for local paths and for the remote ones Orbax supports (gs://...).
  """
  probe = epath.Path(workdir) / f".sslx_write_test_{os.getpid()}"
  try:
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text("ok")
    probe.unlink()
  except (OSError, PermissionError) as e:
    raise errors.ConfigError(f"Cannot write to the workdir {workdir!r} ({e}); choose a "
                             "directory this job can create and write.") from e


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def _state_items(state) -> dict[str, Any]:
  items = {
      "online": {"params": state.params, "batch_stats": state.batch_stats},
      "method_state": state.method_state,
      "opt_state": state.opt_state,
      "train": {"step": state.step, "rng": state.rng},
  }
  # Orbax cannot write an empty tree (e.g. a method with no extra state).
  return {k: v for k, v in items.items() if jax.tree.leaves(v)}


class Checkpointer:
  """Periodic, keep-N, asynchronous checkpoints with resume from the newest."""

  def __init__(self, workdir: str, *, max_to_keep: int, read_only: bool = False):
    self.directory = checkpoint_dir(workdir)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
            enable_async_checkpointing=not read_only),
        # Handlers named up front, so metadata can be read before any restore.
        item_handlers={**{k: ocp.StandardCheckpointHandler() for k in ITEMS},
                       CONFIG_ITEM: ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, state, config: ml_collections.ConfigDict) -> None:
    step = int(jax.device_get(state.step))
    args = {k: ocp.args.StandardSave(v) for k, v in _state_items(state).items()}
    args[CONFIG_ITEM] = ocp.args.JsonSave(json.loads(config.to_json()))
    self.manager.save(step, args=ocp.args.Composite(**args), force=True)

  def restore(self, step: int, abstract_state):
    """Restores the full state at `step` into the shapes/shardings of `abstract_state`."""
    targets = _state_items(abstract_state)
    args = {k: ocp.args.StandardRestore(v) for k, v in targets.items()}
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # pylint: disable=broad-except  (Orbax/TensorStore raise bare Exception)
      older = [s for s in sorted(self.manager.all_steps(), reverse=True) if s < step]
      if older:
        hint = (f"Older checkpoints: steps {', '.join(map(str, older))}; to resume from the "
                "newest of them that restores, rerun with --config.resume_from_older=True (the "
                "failing ones are moved aside, not deleted).")
      else:
        hint = "There is no older checkpoint."
      raise errors.CheckpointError(
          f"Cannot restore checkpoint {self.directory}/{step}: it is corrupt or truncated, or "
          f"it does not match this config (another method, model or optimizer). {hint} "
          f"Cause: {str(e).splitlines()[0][:300]}") from e
    state = abstract_state
    if "online" in restored:
      state = state.replace(params=restored["online"]["params"],
                            batch_stats=restored["online"]["batch_stats"])
    if "method_state" in restored:
      state = state.replace(method_state=restored["method_state"])
    return state.replace(opt_state=restored["opt_state"], step=restored["train"]["step"],
                         rng=restored["train"]["rng"])

  def restore_newest_good(self, abstract_state, *, fall_back: bool):
    """The state of the newest checkpoint that restores, or None if there is none.

    Without `fall_back`, a newest checkpoint that fails raises CheckpointError
    (naming it and the older ones). With it, failing steps are renamed to
    `<step>.unrestorable` (kept for inspection, invisible to Orbax) and the
    next older one is tried.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        logging.info("Resuming from %s/%d", self.directory, step)
        return self.restore(step, abstract_state)
      except errors.CheckpointError as e:
        if not fall_back:
          raise
        logging.warning("%s", e)
        aside = os.path.join(self.directory, f"{step}.unrestorable")
        os.rename(os.path.join(self.directory, str(step)), aside)
        logging.warning("Moved %s/%d to %s; trying the next older checkpoint.",
                        self.directory, step, aside)
        self.manager.reload()
    return None

  def restore_config(self, step: int) -> dict:
    restored = self.manager.restore(step, args=ocp.args.Composite(
        **{CONFIG_ITEM: ocp.args.JsonRestore()}))
    return restored[CONFIG_ITEM]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def load_encoder(workdir: str, step: int | None = None) -> tuple[dict, dict, int]:
  """Reads only the online encoder (and the config) of a pretraining run.

  Returns (encoder variables {'params', 'batch_stats'} on the local device,
  the pretraining config as a dict, the step). Opens the directory read-only
  and works whatever number of devices wrote the checkpoint.
  """
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise errors.CheckpointError(f"No checkpoints under {directory}: is {workdir!r} a pretraining workdir?")
  ckpt = Checkpointer(workdir, max_to_keep=1, read_only=True)
  step = ckpt.latest_step() if step is None else step
  if step is None or step not in ckpt.manager.all_steps():
    raise errors.CheckpointError(
        f"No complete checkpoint{'' if step is None else f' at step {step}'} in {directory}; "
        f"available steps: {sorted(ckpt.manager.all_steps())}.")
  # Restore onto this process's first device whatever topology saved it (a run
  # pretrained on 8 GPUs is evaluated on 1 CPU): shapes and dtypes come from
  # the checkpoint's metadata, the sharding is ours.
  local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  metadata = ckpt.manager.item_metadata(step)["online"]
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=local), metadata)
  restored = ckpt.manager.restore(step, args=ocp.args.Composite(
      online=ocp.args.StandardRestore(target), **{CONFIG_ITEM: ocp.args.JsonRestore()}))
  online = restored["online"]
  encoder = {"params": online["params"]["model"]["encoder"],
             "batch_stats": online["batch_stats"]["encoder"]}
  return encoder, restored[CONFIG_ITEM], step
