"""The one training loop: pretraining, fine-tuning, the augmented probe and the few-label baseline.

A job supplies a TrainState (replicated on the mesh), a jitted step
`(state, global batch) -> (state, metrics)` whose metrics carry `loss` and the
guard's flags (`train_state.guarded_update`), and `batches_from(start_step)`,
the job's input stream from any step. The loop gives every job the same
guarantees:

  * periodic, asynchronous Orbax checkpoints (`checkpointing.Checkpointer`),
    and exact resume from the newest one: the stream restarts at the saved
    step and the state is restored bit for bit, so N steps + preemption +
    resume to 2N equals 2N straight; a checkpoint of another run is refused
    with one line naming the field (the checkpointer's identity check);
  * SIGTERM / SIGINT: one stop decision per step (one collective with several
    processes); the step in flight finishes, is checked and saved, and
    `errors.Preempted` is raised (main.py exits 75), so a rerun resumes;
  * a non-finite loss, gradient, parameter or state stops the run naming the
    step, before it is saved or evaluated (or with `nonfinite.action='skip'`
    the update is dropped and counted); the check of a step that is neither
    saved nor evaluated is read one step late, so the host never stalls the
    device;
  * a progress line and TensorBoard scalars every `log_every_steps`, and
    periodic hooks (pretraining's kNN / linear evaluation) on checked states.

Without a checkpointer (the few-label baseline trains in memory) the same
loop runs with the same guards; a stop request then ends it unsaved.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Iterator

import jax
import ml_collections
from orbax.checkpoint import multihost as ocp_multihost

from sslx import errors
from sslx.core import checkpointing
from sslx.core import health
from sslx.core import mesh as mesh_lib
from sslx.core import preemption
from sslx.core import progress as progress_lib

# Per-step flags of the guard: the loop reads them, the progress line does not show them.
GUARD_FLAGS = ("finite", "finite_update")

Hook = Callable[[Any, int], None]  # (state, step done)


class Loop:
  """Runs the updates of one job up to `num_steps`, with checkpoints, resume and guards."""

  def __init__(self, *, config: ml_collections.ConfigDict, mesh, num_steps: int,
               global_batch_size: int, checkpointer: checkpointing.Checkpointer | None = None,
               writer=None, name: str = "", metric_prefix: str = "",
               log_every_steps: int | None = None,
               on_log: Callable[[int, dict[str, float]], None] | None = None,
               hooks: tuple[tuple[int, Hook], ...] = ()):
    """`config` gives checkpoint_every_steps, log_every_steps, nonfinite and resume_from_older.

    `name` prefixes the progress line and the stop message ('fine-tune');
    `metric_prefix` the TensorBoard tags; `on_log(step, scalars)` sees every
    logged set of scalars; each hook `(every, fn)` runs `fn(state, step)` on a
    checked state every `every` steps but the last.
    """
    self.config, self.mesh, self.num_steps = config, mesh, num_steps
    self.ckpt, self.name = checkpointer, name
    self.writer = writer
    self.global_batch_size = global_batch_size
    self.metric_prefix = metric_prefix
    # Given: exactly that; else the config's, shortened in short runs (progress.log_interval).
    self.log_every = log_every_steps or progress_lib.log_interval(config.log_every_steps,
                                                                  num_steps)
    self.on_log = on_log
    self.hooks = tuple((every, fn) for every, fn in hooks if every)
    self.hidden = set(GUARD_FLAGS) | (
        {"skipped_updates"} if config.nonfinite.action == "stop" else set())

  def _latest(self) -> str | None:
    return self.ckpt.latest_path() if self.ckpt else None

  def restore(self, state):
    """The newest checkpoint's state (checked to be this run's), or `state` if there is none."""
    if self.ckpt is None:
      return state
    try:
      restored = self.ckpt.restore_newest(state,
                                          fall_back=self.config.get("resume_from_older", False))
    except errors.CheckpointError:
      self.ckpt.close()  # stop Orbax's background threads before the error ends the process
      raise
    return state if restored is None else restored

  def run(self, state, train_step: Callable, batches_from: Callable[[int], Iterator[dict]],
          *, restored: bool = False) -> tuple[Any, dict[str, float]]:
    """Resumes (unless `restored`: the caller did), trains to `num_steps`; (state, last scalars)."""
    if not restored:
      state = self.restore(state)
    start = int(jax.device_get(state.step))
    progress = progress_lib.Progress(self.writer, total_steps=self.num_steps, start_step=start,
                                     global_batch_size=self.global_batch_size, name=self.name,
                                     prefix=self.metric_prefix)
    nonfinite = health.NonFiniteWatch(self.config.nonfinite, latest_checkpoint=self._latest)
    every = self.config.get("checkpoint_every_steps") or self.num_steps
    last, pending = {}, None  # pending: the previous step's metrics, checked one step late
    t0 = time.perf_counter()
    try:
      with preemption.StopRequest() as stop:
        batches = batches_from(start) if start < self.num_steps else iter(())
        if start < self.num_steps:
          batches = self._compiled_everywhere(train_step, state, batches)
        for step in range(start, self.num_steps):
          state, metrics = train_step(state, mesh_lib.to_global(next(batches), self.mesh))
          done = step + 1
          if step == start:
            jax.block_until_ready(state.step)
            progress.first_step_done(done, time.perf_counter() - t0)
          # The one stop decision of this step: every process gets the same answer.
          stopping = stop.requested()
          is_last = done == self.num_steps
          save = self.ckpt is not None and (done % every == 0 or is_last or stopping)
          hooks = [fn for n, fn in self.hooks if done % n == 0 and not is_last]
          if pending:
            nonfinite.check(*pending)
          pending = (done, metrics)
          if save or hooks or is_last or stopping:
            # Never save, evaluate or return a diverged state: the last good checkpoint
            # stays the newest.
            nonfinite.check(done, metrics)
            pending = None
          if done % self.log_every == 0 or is_last:
            last = progress.report(done, {k: v for k, v in metrics.items()
                                          if k not in self.hidden})
            if self.on_log:
              self.on_log(done, last)
          if save:
            self.ckpt.save(state)
          for fn in hooks:
            fn(state, done)
          if stopping:
            self._stopped(stop.signal_name, done)
    except (errors.Preempted, health.NonFiniteError):
      self.close()
      raise
    self.close()
    return state, last

  def _compiled_everywhere(self, train_step, state, batches: Iterator[dict]) -> Iterator[dict]:
    """With several processes, compiles the step, then waits until every process has.

    Compilation time differs between processes (a busy host, a colder cache); a
    process that starts its first step long before another waits in that step's
    first collective, and on CPU that wait (gloo's) gives up after 30 s, which
    reads as a lost process. A barrier of the coordination service, which waits
    up to `distributed.initialization_timeout`, lines them up instead.
    """
    if jax.process_count() == 1 or not hasattr(train_step, "lower"):
      return batches
    first = next(batches)
    train_step.lower(state, mesh_lib.to_global(first, self.mesh)).compile()
    self._wait_for_every_process("step-compiled")
    return itertools.chain([first], batches)

  _barriers = 0  # barriers this process has passed (each key is used once, in the same order)

  def _wait_for_every_process(self, what: str) -> None:
    """A barrier of the coordination service (no device collective, so no 30 s gloo limit)."""
    Loop._barriers += 1
    timeout_s = (self.config.get("distributed") or {}).get("initialization_timeout") or 600
    ocp_multihost.get_barrier_sync_fn()(key=f"sslx:{what}:{Loop._barriers}",
                                        timeout_ms=int(timeout_s * 1000))

  def _stopped(self, signal_name: str | None, done: int) -> None:
    by = signal_name or "a signal on another process"
    what = f"{self.name} step" if self.name else "step"
    if self.ckpt is None:
      raise errors.Preempted(f"Stopped by {by} after {what} {done}, before it finished (it "
                             "keeps no checkpoint). Rerun the same command to run it again.")
    self.ckpt.wait()
    raise errors.Preempted(f"Stopped by {by} after {what} {done}; newest checkpoint: "
                           f"{self.ckpt.latest_path()}. Rerun the same command to resume.")

  def close(self) -> None:
    """Waits for the checkpoint in flight, stops Orbax's threads, flushes the events.

    With several processes, every process then waits for the others: none goes on (to
    evaluate, or to exit) while another is still writing its part of the last checkpoint.
    """
    if self.ckpt is not None:
      self.ckpt.wait()
      self.ckpt.close()
      if jax.process_count() > 1:
        self._wait_for_every_process("checkpoints-written")
    if self.writer is not None:
      self.writer.flush()
