"""Orbax checkpoints of a TrainState, for every job: one layout, one identity check.

Layout of `WORKDIR/checkpoints/<step>/`, whatever job wrote it:
  online/        params and BatchNorm statistics (pretraining: {'model', 'probe'},
                 the encoder under model/encoder; fine-tuning: {'encoder', 'head'})
  method_state/  non-gradient state (BYOL's EMA target, a queue); absent if empty
  opt_state/     optimizer state
  train/         step counter, the run's key (raw words) and the skipped-update count
  config/        the full config as JSON
  run/           JSON: the run's fingerprint (what the saved state means) and the
                 encoder's record (where its variables are, its architecture and its
                 input preprocessing, `sslx.data.info.Preprocessing`)

An evaluator restores only `online`, `config` and `run`. Orbax writes each
step to a temporary directory and renames it when complete, so a killed job
never leaves a half-written checkpoint that `latest_step()` would pick up.

Resume is refused, with one line naming the field, when a rerun would not
continue the saved run: the fingerprint (`Identity.fingerprint`: batch size,
schedule length, seed, data, optimizer, method, architecture, and the process
count where the data's order depends on it) differs, or the arrays do not fit.
`config.resume_changes` names fields whose change the user accepts.
"""

from __future__ import annotations

import dataclasses
import json
import logging as std_logging
import os
import time
from typing import Any, Callable

from absl import logging
from etils import epath
import jax
import ml_collections
import orbax.checkpoint as ocp

from sslx import errors
from sslx.core import rngs as rngs_lib
from sslx.core import train_state as train_state_lib

class _ReadOnlyNotes(std_logging.Filter):
  """Drops Orbax's three warnings that a checkpoint directory is opened read-only.

  Every reader here (evaluators, `sslx.load_encoder`) opens one so on purpose; the notes
  would be the only lines a user's `load_encoder` call prints.
  """

  def filter(self, record) -> bool:
    message = record.getMessage()
    return not ("read_only=True" in message or "Given directory is read only" in message)


std_logging.getLogger("absl").addFilter(_ReadOnlyNotes())

ITEMS = ("online", "method_state", "opt_state", "train")
CONFIG_ITEM = "config"
RUN_ITEM = "run"
JSON_ITEMS = (CONFIG_ITEM, RUN_ITEM)


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


# ------------------------------------------------------------ fingerprints ----


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{'optimizer.name': 'lars', ...}: nested dicts (and ConfigDicts) as dotted keys, JSON values."""
  if isinstance(tree, ml_collections.ConfigDict):
    tree = tree.to_dict()
  if not isinstance(tree, dict):
    return {prefix.rstrip("."): json.loads(json.dumps(tree, default=str))}
  out = {}
  for key, value in tree.items():
    out.update(flatten(value, f"{prefix}{key}."))
  return out


# The fields a message names first: what most changes what the saved state is.
_FIRST = ("job", "method", "checkpoint", "model", "data.dataset", "optimizer.name", "batch_size",
          "train_steps", "seed", "process_count")


def _importance(name: str) -> tuple[int, str]:
  rank = next((i for i, f in enumerate(_FIRST) if name == f or name.startswith(f + ".")),
              len(_FIRST))
  return rank, name


def _describe_change(name: str, old, new) -> str:
  if name == "process_count":  # not a config field: how many processes read the data
    return (f"the process count: {old!r} there, {new!r} here (TFDS data is read one shard "
            "per process)")
  return f"config.{name}={old!r} there, {new!r} here"


def _allowed(name: str, allowed: tuple[str, ...]) -> bool:
  return any(name == a or name.startswith(a + ".") for a in allowed)


def fingerprint_changes(saved: dict[str, Any], current: dict[str, Any],
                        allowed: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
  """[(field, saved value, current value)] for each field that differs and is not allowed.

  A field present on one side only counts as a change unless its value there is None.
  """
  missing = object()
  changes = []
  for name in sorted(set(saved) | set(current), key=_importance):
    old, new = saved.get(name, missing), current.get(name, missing)
    if old is missing and new is None or new is missing and old is None:
      continue
    if old != new and not _allowed(name, allowed):
      changes.append((name, None if old is missing else old, None if new is missing else new))
  return changes


def parse_allowed(value: str | None) -> tuple[str, ...]:
  """`config.resume_changes` ('batch_size,optimizer') -> ('batch_size', 'optimizer')."""
  return tuple(p.strip().removeprefix("config.") for p in (value or "").split(",") if p.strip())


@dataclasses.dataclass
class Identity:
  """What a run saves beside its arrays and checks on resume.

  fingerprint: the flat fields that fix what the saved state means.
  of_config: the same fingerprint from a saved config dict (checkpoints of
    sslx versions that saved none), without the fields a config cannot tell.
  config: the full config, saved as JSON (evaluators read it).
  encoder: the encoder's record ({'params': path, 'batch_stats': path, 'model',
    'preprocessing'}), or None for a state with no encoder to transfer.
  allowed_changes: fields (or prefixes) whose change the user accepts
    (`config.resume_changes`).
  """
  fingerprint: dict[str, Any]
  of_config: Callable[[dict[str, Any]], dict[str, Any]]
  config: ml_collections.ConfigDict
  encoder: dict[str, Any] | None = None
  allowed_changes: tuple[str, ...] = ()

  def run_record(self) -> dict[str, Any]:
    return {"fingerprint": self.fingerprint, "encoder": self.encoder}


# ------------------------------------------------------------- the writer ----


def _state_items(state: train_state_lib.TrainState) -> dict[str, Any]:
  items = {
      "online": {"params": state.params, "batch_stats": state.batch_stats},
      "method_state": state.method_state,
      "opt_state": state.opt_state,
      "train": {"step": state.step, "rng": _key_data(state.rng),
                "skipped_updates": state.skipped_updates},
  }
  # Orbax cannot write an empty tree (e.g. a method with no extra state).
  return {k: v for k, v in items.items() if jax.tree.leaves(v)}


def _key_data(key):
  """A typed key's raw uint32 words (what is saved), also for an abstract state's key."""
  if isinstance(key, jax.Array):
    return jax.random.key_data(key)
  return jax.eval_shape(jax.random.key_data, key)


def _shapes_by_path(tree) -> dict[str, tuple[int, ...]]:
  """{'a/b/0': shape} for the arrays (or array metadata) of a tree, whatever its node types."""
  def key_name(k):
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        return str(getattr(k, attr))
    return str(k)
  return {"/".join(key_name(k) for k in path): tuple(getattr(leaf, "shape", ()))
          for path, leaf in jax.tree.leaves_with_path(tree)}


def _json_items(directory, step: int) -> list[str]:
  """The JSON items checkpoint `step` has (`run` is absent from older sslx versions' ones)."""
  step_dir = epath.Path(directory) / str(step)
  return [CONFIG_ITEM] + [i for i in JSON_ITEMS[1:] if (step_dir / i).exists()]


def _cause(e: Exception) -> str:
  """The first line of an Orbax/TensorStore error, which can run to pages."""
  return str(e).splitlines()[0][:300] if str(e) else type(e).__name__


class Checkpointer:
  """Periodic, keep-N, asynchronous checkpoints of a TrainState, with resume from the newest."""

  def __init__(self, workdir: str, *, max_to_keep: int, identity: Identity | None = None,
               read_only: bool = False):
    self.directory = checkpoint_dir(workdir)
    self.identity = identity
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
                       **{k: ocp.JsonCheckpointHandler() for k in JSON_ITEMS}})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def latest_path(self) -> str | None:
    step = self.manager.latest_step()
    return None if step is None else f"{self.directory}/{step}"

  def save(self, state: train_state_lib.TrainState) -> None:
    step = int(jax.device_get(state.step))
    args = {k: ocp.args.StandardSave(v) for k, v in _state_items(state).items()}
    args[CONFIG_ITEM] = ocp.args.JsonSave(json.loads(self.identity.config.to_json()))
    args[RUN_ITEM] = ocp.args.JsonSave(self.identity.run_record())
    self.manager.save(step, args=ocp.args.Composite(**args), force=True)

  def _json(self, step: int) -> dict[str, Any]:
    """{'config': ..., 'run': ... or None} of checkpoint `step`."""
    items = _json_items(self.directory, step)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        **{i: ocp.args.JsonRestore() for i in items}))
    return {i: restored[i] if i in items else None for i in JSON_ITEMS}

  def mismatch(self, step: int, state: train_state_lib.TrainState) -> str | None:
    """Why checkpoint `step` is not a checkpoint of this run, or None if it is (or is unreadable)."""
    try:
      saved = self._json(step)
      metadata = self.manager.item_metadata(step)
    except Exception:  # pylint: disable=broad-except  (unreadable: restore() reports it)
      return None
    ident = self.identity
    run = saved[RUN_ITEM] or {}
    fingerprint = run.get("fingerprint") or ident.of_config(saved[CONFIG_ITEM])
    changes = fingerprint_changes(fingerprint, ident.fingerprint, ident.allowed_changes)
    if changes:
      shown = "; ".join(_describe_change(*change) for change in changes[:3])
      more = f" (and {len(changes) - 3} more)" if len(changes) > 3 else ""
      names = ",".join(name for name, _, _ in changes)
      return (f"it was written by another run: {shown}{more}. Resuming it with these "
              "values would move its data position, bend its schedules or misread its "
              "state. Use a new --workdir, or rerun with "
              f"--config.resume_changes={names} to continue this run with the new values")
    for item, target in _state_items(state).items():
      try:
        saved_tree = metadata[item]
      except (KeyError, TypeError):
        saved_tree = None
      if saved_tree is None:
        return f"it has no {item!r} part (written by another version of sslx or another job?)"
      saved_shapes, wanted = _shapes_by_path(saved_tree), _shapes_by_path(target)
      for path, shape in wanted.items():
        if path not in saved_shapes:
          return f"it has no array {item}/{path} (another method, head or optimizer?)"
        if saved_shapes[path] != shape:
          return (f"{item}/{path} has shape {saved_shapes[path]} there and {shape} here "
                  "(another head size, queue size or width?)")
      extra = sorted(set(saved_shapes) - set(wanted))
      if extra:
        return f"it has arrays this config does not: {item}/{extra[0]}" + (
            f" and {len(extra) - 1} more" if len(extra) > 1 else "")
    return None

  def restore(self, step: int, state: train_state_lib.TrainState) -> train_state_lib.TrainState:
    """The state at `step`, into the shapes and shardings of `state`; checked against this run.

    A checkpoint of another run (fingerprint, arrays) raises
    CheckpointMismatchError saying which field, instead of "corrupt".
    """
    why = self.mismatch(step, state)
    if why:
      raise errors.CheckpointMismatchError(f"Cannot resume {self.directory}/{step}: {why}.")
    targets = _state_items(state)
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
          f"Cannot restore checkpoint {self.directory}/{step}: it is corrupt or truncated. "
          f"{hint} Cause: {_cause(e)}") from e
    online = restored.get("online", {"params": state.params, "batch_stats": state.batch_stats})
    train = restored["train"]
    return state.replace(params=online["params"], batch_stats=online["batch_stats"],
                         method_state=restored.get("method_state", state.method_state),
                         opt_state=restored["opt_state"], step=train["step"],
                         rng=rngs_lib.as_typed(train["rng"]),
                         skipped_updates=train["skipped_updates"])

  def restore_newest(self, state: train_state_lib.TrainState, *, fall_back: bool):
    """The state of the newest checkpoint that restores, or None if there is none.

    Without `fall_back`, a newest checkpoint that fails raises CheckpointError
    (naming it and the older ones). With it, failing steps are renamed to
    `<step>.unrestorable` (kept for inspection, invisible to Orbax) and the
    next older one is tried. A checkpoint of another run always raises: it is
    not damaged, so nothing is moved aside.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self.restore(step, state)
        logging.info("Resuming from %s/%d", self.directory, step)
        return restored
      except errors.CheckpointError as e:
        if not fall_back or isinstance(e, errors.CheckpointMismatchError):
          raise
        logging.warning("%s", e)
        aside = os.path.join(self.directory, f"{step}.unrestorable")
        if jax.process_index() == 0:
          os.rename(os.path.join(self.directory, str(step)), aside)
        logging.warning("Moved %s/%d to %s; trying the next older checkpoint.",
                        self.directory, step, aside)
        self.manager.reload()
    return None

  def restore_config(self, step: int) -> dict:
    return self._json(step)[CONFIG_ITEM]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


# ------------------------------------------------------------- the readers ----


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
  for item in _json_items(manager.directory, step):
    args[item] = ocp.args.JsonRestore()
  restored = dict(manager.restore(step, args=ocp.args.Composite(**args)))
  restored.setdefault(RUN_ITEM, None)
  return restored


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
  """Reads `items` of `step` (None: the newest) while a training job may be writing.

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
          f"Cause: {_cause(e)}") from e
  raise AssertionError("unreachable")


# Where a pretraining checkpoint of an sslx version that saved no `run` record keeps its encoder.
PRETRAIN_ENCODER = {"params": ["model", "encoder"], "batch_stats": ["encoder"]}


@dataclasses.dataclass
class SavedEncoder:
  """The encoder of a checkpoint: its variables and what it needs to be fed and rebuilt."""
  variables: dict  # {'params', 'batch_stats'} on the local device
  config: dict  # the config of the run that saved it
  step: int
  record: dict  # {'params': path, 'batch_stats': path, 'model': {...}, 'preprocessing': {...}}


def _subtree(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def read_encoder(workdir: str, step: int | None = None) -> SavedEncoder:
  """Reads only the encoder (and the JSON records) of a checkpoint.

  Opens the directory read-only, works whatever number of devices wrote the
  checkpoint, and may run while the training job is still writing to it.
  Checkpoints of sslx versions that saved no encoder record are pretraining
  runs: their record is rebuilt from their config.
  """
  restored, step = _read(workdir, step, ["online"])
  config = restored[CONFIG_ITEM]
  record = (restored[RUN_ITEM] or {}).get("encoder")
  if record is None:
    if config.get("job", "pretrain") != "pretrain":
      raise errors.CheckpointError(
          f"{checkpoint_dir(workdir)}/{step} is a {config.get('job')} checkpoint of an sslx "
          "version that did not record its encoder; give the pretraining run it started from.")
    from sslx.data import info as info_lib  # pylint: disable=import-outside-toplevel
    record = dict(PRETRAIN_ENCODER, model=config["model"],
                  preprocessing=info_lib.Preprocessing.of_pretraining(config).to_dict())
  online = restored["online"]
  variables = {"params": _subtree(online["params"], record["params"]),
               "batch_stats": _subtree(online["batch_stats"], record["batch_stats"])
               if online.get("batch_stats") else {}}
  return SavedEncoder(variables=variables, config=config, step=step, record=record)


def load_encoder(workdir: str, step: int | None = None) -> tuple[dict, dict, int]:
  """(encoder variables {'params', 'batch_stats'}, the saved config dict, the step)."""
  saved = read_encoder(workdir, step)
  return saved.variables, saved.config, saved.step


def load_all(workdir: str, step: int | None = None) -> tuple[dict, int]:
  """Every saved array of a checkpoint, as {item: tree}, and its step.

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
  return {k: v for k, v in restored.items() if k not in JSON_ITEMS}, step
