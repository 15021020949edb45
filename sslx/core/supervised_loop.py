"""The safe loop of the supervised jobs: fine-tuning and the augmented linear probe.

It gives these jobs pretraining's guarantees without pretraining's trainer:
  * periodic, asynchronous Orbax checkpoints of the whole state in
    `WORKDIR/checkpoints/<step>/` (items `state` and `config`), the newest
    `keep_checkpoints` kept;
  * auto-resume from the newest checkpoint of the workdir; a checkpoint of
    another job or setting is named, never overwritten;
  * SIGTERM / SIGINT: the step in flight finishes, is saved, and the job
    raises `errors.Preempted` (main.py exits 75); a rerun resumes;
  * a non-finite loss or gradient stops the run naming the step, before it
    is saved (or, with `nonfinite.action='skip'`, the update is dropped and
    counted), read one step late so the host never stalls the device;
  * exact resume: the data stream restarts at the saved step and the state
    is restored bit for bit, so N steps + preemption + resume to 2N equals
    2N straight.

A job supplies its state (a `SupervisedState`, replicated on the mesh), a
jitted step `(state, global batch) -> (state, metrics)` whose metrics carry
`loss`, `grad_norm` and `finite` (`guard` below computes the latter and
applies the skip policy), and a function that builds the batch iterator
from a start step. Segmentation or domain adaptation fork this loop.
"""

import json
from typing import Any, Callable, Iterator

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from sslx import errors
from sslx.core import checkpointing
from sslx.core import health
from sslx.core import mesh as mesh_lib
from sslx.core import preemption
from sslx.core import summaries

PyTree = Any
STATE_ITEM, CONFIG_ITEM = "state", "config"


@flax.struct.dataclass
class SupervisedState:
  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  skipped_updates: jax.Array

  @classmethod
  def create(cls, params, batch_stats, opt_state) -> "SupervisedState":
    return cls(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
               opt_state=opt_state, skipped_updates=jnp.zeros((), jnp.int32))

  def as_dict(self) -> dict[str, PyTree]:
    return {f: getattr(self, f) for f in self.__dataclass_fields__}


def guard(state: SupervisedState, new: SupervisedState, loss, grads, action: str):
  """(the state to keep, {'finite', 'skipped_updates'}): with action 'skip' a non-finite
  update is dropped (the input state is kept, step advanced) and counted."""
  finite = health.all_finite(loss, grads)
  fields = ("params", "batch_stats", "opt_state")
  kept, skipped = health.drop_if_nonfinite(
      finite, {f: getattr(new, f) for f in fields}, {f: getattr(state, f) for f in fields},
      state.skipped_updates, action)
  return new.replace(skipped_updates=skipped, **kept), {"finite": finite,
                                                        "skipped_updates": skipped}


def _cause(e: Exception) -> str:
  """The first line of an Orbax/TensorStore error, which can run to pages."""
  return str(e).splitlines()[0][:200] if str(e) else repr(e)


class StateCheckpointer:
  """Orbax checkpoints of a SupervisedState plus the job's config, with resume."""

  def __init__(self, workdir: str, *, max_to_keep: int, identity: dict[str, Any]):
    self.directory = checkpointing.checkpoint_dir(workdir)
    # What must match for a checkpoint to be resumed, as its saved JSON reads back.
    self.identity = json.loads(json.dumps(identity, default=str))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=True,
                                             cleanup_tmp_directories=True),
        item_handlers={STATE_ITEM: ocp.StandardCheckpointHandler(),
                       CONFIG_ITEM: ocp.JsonCheckpointHandler()})

  def latest_path(self) -> str | None:
    step = self.manager.latest_step()
    return None if step is None else f"{self.directory}/{step}"

  def save(self, state: SupervisedState) -> None:
    step = int(jax.device_get(state.step))
    self.manager.save(step, force=True, args=ocp.args.Composite(**{
        STATE_ITEM: ocp.args.StandardSave(state.as_dict()),
        CONFIG_ITEM: ocp.args.JsonSave(self.identity)}))

  def restore_newest(self, state: SupervisedState) -> SupervisedState | None:
    """The newest checkpoint's state (into `state`'s shapes and shardings), or None."""
    step = self.manager.latest_step()
    if step is None:
      return None
    where = f"{self.directory}/{step}"
    try:
      saved = self.manager.restore(step, args=ocp.args.Composite(
          **{CONFIG_ITEM: ocp.args.JsonRestore()}))[CONFIG_ITEM]
    except Exception as e:  # pylint: disable=broad-except  (Orbax raises bare Exception)
      raise errors.CheckpointError(
          f"Cannot read checkpoint {where}: it is corrupt, truncated or from before sslx "
          f"checkpointed this job ({_cause(e)}). Move it "
          "aside or use another --workdir.") from e
    differs = [f"{k}={saved.get(k)!r} there, {v!r} here" for k, v in self.identity.items()
               if saved.get(k) != v]
    if differs:
      raise errors.CheckpointMismatchError(
          f"The workdir's checkpoint {where} is of another run ({'; '.join(differs[:4])}). "
          "Use another --workdir, or the settings that wrote it to resume it.")
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          state.as_dict())
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          **{STATE_ITEM: ocp.args.StandardRestore(target)}))[STATE_ITEM]
    except Exception as e:  # pylint: disable=broad-except
      raise errors.CheckpointError(
          f"Cannot restore checkpoint {where}: it is corrupt or truncated "
          f"({_cause(e)}). Move it aside to start "
          "again.") from e
    logging.info("Resuming from %s", where)
    return SupervisedState(**restored)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


class Loop:
  """Runs `num_steps` updates of a supervised job with checkpoints, resume and guards."""

  def __init__(self, *, name: str, workdir: str, config: ml_collections.ConfigDict, mesh,
               num_steps: int, identity: dict[str, Any], metric_prefix: str):
    self.name, self.workdir, self.config, self.mesh = name, workdir, config, mesh
    self.num_steps = num_steps
    self.metric_prefix = metric_prefix
    self.ckpt = StateCheckpointer(workdir, max_to_keep=config.keep_checkpoints,
                                  identity=identity)
    self.writer = summaries.Writer(workdir)

  def report(self, step: int, metrics: dict) -> dict[str, float]:
    """Logs the step's metrics (a person's progress line and TensorBoard)."""
    scalars = {k: float(v) for k, v in jax.device_get(metrics).items()
               if k not in ("finite",)}
    self.writer.write_scalars(step, {f"{self.metric_prefix}/{k}": v for k, v in scalars.items()})
    shown = " | ".join(f"{k} {v:.4g}" for k, v in scalars.items()
                       if k != "skipped_updates" or v)
    logging.info("%s step %d/%d | %s", self.name, step, self.num_steps, shown)
    return scalars

  def run(self, state: SupervisedState, train_step: Callable,
          batches_from: Callable[[int], Iterator[dict]]) -> tuple[SupervisedState, dict]:
    """Resumes if the workdir has a checkpoint, trains to `num_steps`, returns (state, metrics)."""
    try:
      restored = self.ckpt.restore_newest(state)
    except errors.CheckpointError:
      self.ckpt.close()
      raise
    state = state if restored is None else restored
    start = int(jax.device_get(state.step))
    every = self.config.checkpoint_every_steps
    nonfinite = health.NonFiniteWatch(self.config.nonfinite, latest_checkpoint=self.ckpt.latest_path)
    last = {}
    pending = None
    try:
      with preemption.StopRequest() as stop:
        batches = batches_from(start) if start < self.num_steps else iter(())
        for step in range(start, self.num_steps):
          state, metrics = train_step(state, mesh_lib.to_global(next(batches), self.mesh))
          done = step + 1
          if pending:
            nonfinite.check(*pending)
          pending = (done, metrics)
          is_last = done == self.num_steps
          save = done % every == 0 or is_last
          if save or stop.requested():
            nonfinite.check(done, metrics)  # never checkpoint a diverged state
            pending = None
          if done % self.config.log_every_steps == 0 or is_last:
            last = self.report(done, metrics)
          if save or stop.requested():
            self.ckpt.save(state)
          if stop.requested():
            self.ckpt.wait()
            raise errors.Preempted(
                f"Stopped by {stop.signal_name or 'a signal on another process'} after "
                f"{self.name} step {done}; newest checkpoint: {self.ckpt.latest_path()}. "
                "Rerun the same command to resume.")
    except (errors.Preempted, health.NonFiniteError):
      self.ckpt.wait()
      self.ckpt.close()
      self.writer.flush()
      raise
    self.ckpt.wait()
    self.ckpt.close()
    self.writer.flush()
    return state, last


def describe_for_resume(config: ml_collections.ConfigDict, *sections: str) -> dict[str, Any]:
  """The fields whose change makes a saved supervised run another run (checked on resume)."""
  keys = ("job", "checkpoint", "checkpoint_step", "seed", "batch_size", "label_fraction",
          "labels_per_class", "dtype")
  out = {k: config.get(k) for k in keys}
  out["dataset"] = config.data.dataset
  for section in sections:
    out[section] = config[section].to_dict() if section in config else None
  return out

