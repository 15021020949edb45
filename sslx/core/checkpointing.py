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
import time
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
      "train": {"step": state.step, "rng": state.rng, "skipped_updates": state.skipped_updates},
  }
  # Orbax cannot write an empty tree (e.g. a method with no extra state).
  return {k: v for k, v in items.items() if jax.tree.leaves(v)}


def _shapes_by_path(tree) -> dict[str, tuple[int, ...]]:
  """{'a/b/0': shape} for the arrays (or array metadata) of a tree, whatever its node types."""
  def key_name(k):
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        return str(getattr(k, attr))
    return str(k)
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(key_name(k) for k in path): tuple(getattr(leaf, "shape", ()))
          for path, leaf in leaves}


class Checkpointer:
  """Periodic, keep-N, asynchronous checkpoints with resume from the newest."""

  def __init__(self, workdir: str, *, max_to_keep: int, read_only: bool = False):
    self.directory = checkpoint_dir(workdir)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
            enable_async_checkpointing=not read_only,
            # The writer removes the temporary directories a killed run left
            # behind; a reader must never, they may be a live writer's.
            cleanup_tmp_directories=not read_only),
        # Handlers named up front, so metadata can be read before any restore.
        item_handlers={**{k: ocp.StandardCheckpointHandler() for k in ITEMS},
                       CONFIG_ITEM: ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def latest_path(self) -> str | None:
    step = self.manager.latest_step()
    return None if step is None else f"{self.directory}/{step}"

  def save(self, state, config: ml_collections.ConfigDict) -> None:
    step = int(jax.device_get(state.step))
    args = {k: ocp.args.StandardSave(v) for k, v in _state_items(state).items()}
    args[CONFIG_ITEM] = ocp.args.JsonSave(json.loads(config.to_json()))
    self.manager.save(step, args=ocp.args.Composite(**args), force=True)

  def mismatch(self, step: int, abstract_state, config) -> str | None:
    """Why checkpoint `step` cannot hold this config's state, or None if it can (or is unreadable).

    Compares the saved config's method and model, then every array's shape,
    so that a checkpoint of another run is not mistaken for a corrupt one.
    """
    try:
      saved = self.restore_config(step)
      metadata = self.manager.item_metadata(step)
    except Exception:  # pylint: disable=broad-except  (unreadable: restore() reports it)
      return None
    if saved.get("method") != config.method:
      return (f"it was written by method {saved.get('method')!r}, and this config is method "
              f"{config.method!r}")
    model = saved.get("model", {})
    diffs = [f"model.{k}={model.get(k)!r} there, {v!r} here" for k, v in config.model.items()
             if k in model and model[k] != v]
    optimizer = saved.get("optimizer", {}).get("name")
    if optimizer and optimizer != config.optimizer.name:
      diffs.append(f"optimizer.name={optimizer!r} there, {config.optimizer.name!r} here")
    if diffs:
      return f"it holds another architecture or optimizer ({'; '.join(diffs)})"
    for item, target in _state_items(abstract_state).items():
      try:
        saved_tree = metadata[item]
      except (KeyError, TypeError):
        saved_tree = None
      if saved_tree is None:
        return f"it has no {item!r} part (written by another version of sslx?)"
      saved_shapes = _shapes_by_path(saved_tree)
      wanted = _shapes_by_path(target)
      for path, shape in wanted.items():
        if path not in saved_shapes:
          return f"it has no array {item}/{path} (another method, head or optimizer?)"
        if saved_shapes[path] != shape:
          return (f"{item}/{path} has shape {saved_shapes[path]} there and {shape} here "
                  f"(another {config.method} head size, queue size or width?)")
      extra = sorted(set(saved_shapes) - set(wanted))
      if extra:
        return f"it has arrays this config does not: {item}/{extra[0]}" + (
            f" and {len(extra) - 1} more" if len(extra) > 1 else "")
    return None

  def restore(self, step: int, abstract_state, config=None):
    """Restores the full state at `step` into the shapes/shardings of `abstract_state`.

    With `config`, a checkpoint written for another method, architecture or
    head size raises CheckpointMismatchError saying which, instead of the
    generic "corrupt or truncated" error.
    """
    why = None if config is None else self.mismatch(step, abstract_state, config)
    if why:
      raise errors.CheckpointMismatchError(
          f"Checkpoint {self.directory}/{step} does not match this config: {why}. Resume it "
          f"with the config that wrote it (saved as JSON in {self.directory}/{step}/"
          f"{CONFIG_ITEM}), or use another --workdir for this config.")
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
    train = restored["train"]
    return state.replace(opt_state=restored["opt_state"], step=train["step"], rng=train["rng"],
                         skipped_updates=train["skipped_updates"])

  def restore_newest_good(self, abstract_state, *, fall_back: bool, config=None):
    """The state of the newest checkpoint that restores, or None if there is none.

    Without `fall_back`, a newest checkpoint that fails raises CheckpointError
    (naming it and the older ones). With it, failing steps are renamed to
    `<step>.unrestorable` (kept for inspection, invisible to Orbax) and the
    next older one is tried. A checkpoint of another config (method,
    architecture, sizes) always raises: it is not damaged, so nothing is
    moved aside.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        logging.info("Resuming from %s/%d", self.directory, step)
        return self.restore(step, abstract_state, config)
      except errors.CheckpointError as e:
        if not fall_back or isinstance(e, errors.CheckpointMismatchError):
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


def _restore_to_local_device(manager, step: int, items) -> dict:
  """Restores `items` of checkpoint `step` onto this process's first device, whatever wrote them.

  Shapes and dtypes come from the checkpoint's metadata and the sharding is
  ours, so a run pretrained on 8 GPUs can be read by 1 CPU.
  """
  local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  metadata = manager.item_metadata(step)
  args = {}
  for item in items:
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=local),
                          metadata[item])
    args[item] = ocp.args.StandardRestore(target)
  args[CONFIG_ITEM] = ocp.args.JsonRestore()
  return manager.restore(step, args=ocp.args.Composite(**args))


def _retry_vanished(list_steps, attempts: int = 20):
  """Runs `list_steps` again when a step directory vanishes while Orbax lists them.

  Orbax lists the step directories, then stats each one; a live writer's
  keep-N deletion between the two raises FileNotFoundError from the stat, or
  NotADirectoryError where Orbax saw the step exist and then found it no
  directory (its metadata path check: `exists()`, then `is_dir()`). The
  listing is simply stale, so a fresh one is correct.
  """
  for attempt in range(attempts):
    try:
      return list_steps()
    except (FileNotFoundError, NotADirectoryError):
      if attempt == attempts - 1:
        raise
      time.sleep(0.05)
  raise AssertionError("unreachable")


def _open_read_only(workdir: str) -> Checkpointer:
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise errors.CheckpointError(
        f"No checkpoints under {directory}: is {workdir!r} a pretraining workdir?")
  return _retry_vanished(lambda: Checkpointer(workdir, max_to_keep=1, read_only=True))


def _read(workdir: str, step: int | None, items) -> tuple[dict, int]:
  """Reads `items` of `step` (None: the newest) while a pretraining job may be writing.

  The job may delete the newest-but-one checkpoint (keep-N) between our
  listing and our reading; with step=None that is retried on the then newest
  one, so an evaluator polling a live run never fails on the race.
  """
  ckpt = _open_read_only(workdir)
  try:
    return _read_with_retries(ckpt, step, items)
  finally:
    ckpt.close()


def _read_with_retries(ckpt: Checkpointer, step: int | None, items) -> tuple[dict, int]:
  for attempt in range(5):
    _retry_vanished(ckpt.manager.reload)
    wanted = ckpt.latest_step() if step is None else step
    if wanted is None or wanted not in ckpt.manager.all_steps():
      raise errors.CheckpointError(
          f"No complete checkpoint{'' if step is None else f' at step {step}'} in "
          f"{ckpt.directory}; available steps: {sorted(ckpt.manager.all_steps())}.")
    try:
      return _restore_to_local_device(ckpt.manager, wanted, items), wanted
    except Exception as e:  # pylint: disable=broad-except  (Orbax/TensorStore raise bare Exception)
      # Orbax deletes an old step item by item after committing a newer one,
      # so a step that vanished, or is no longer the newest, was being removed.
      _retry_vanished(ckpt.manager.reload)
      replaced = (not os.path.isdir(os.path.join(ckpt.directory, str(wanted)))
                  or ckpt.latest_step() != wanted)
      if step is None and replaced and attempt < 4:
        logging.info("Checkpoint %s/%d was replaced while reading it; reading the newest.",
                     ckpt.directory, wanted)
        continue
      raise errors.CheckpointError(
          f"Cannot read checkpoint {ckpt.directory}/{wanted}: it is corrupt or truncated. "
          f"Other steps: {sorted(set(ckpt.manager.all_steps()) - {wanted})}. "
          f"Cause: {str(e).splitlines()[0][:300] if str(e) else type(e).__name__}") from e
  raise AssertionError("unreachable")


def load_encoder(workdir: str, step: int | None = None) -> tuple[dict, dict, int]:
  """Reads only the online encoder (and the config) of a pretraining run.

  Returns (encoder variables {'params', 'batch_stats'} on the local device,
  the pretraining config as a dict, the step). Opens the directory read-only,
  works whatever number of devices wrote the checkpoint, and may run while
  the pretraining job is still writing to the same workdir.
  """
  restored, step = _read(workdir, step, ["online"])
  online = restored["online"]
  encoder = {"params": online["params"]["model"]["encoder"],
             "batch_stats": online["batch_stats"]["encoder"]}
  return encoder, restored[CONFIG_ITEM], step


def load_all(workdir: str, step: int | None = None) -> tuple[dict, int]:
  """Every saved array of a pretraining checkpoint, as {item: tree}, and its step.

  For comparing two runs (exact resume, fault injection) without their configs.
  """
  ckpt = _open_read_only(workdir)
  try:
    step = ckpt.latest_step() if step is None else step
    items = [i for i in ITEMS if step is not None
             and i in (ckpt.manager.item_metadata(step) or {})]
  finally:
    ckpt.close()
  restored, step = _read(workdir, step, items)
  return {k: v for k, v in restored.items() if k != CONFIG_ITEM}, step
