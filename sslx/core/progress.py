"""Progress a person can follow: a terminal line and TensorBoard scalars."""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING

from absl import logging
import jax
import numpy as np

if TYPE_CHECKING:
  from sslx.core import summaries


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def log_interval(log_every_steps: int, total_steps: int) -> int:
  """Steps between logged lines: `log_every_steps`, or less in a short run, so that every run
  of 20 steps or more logs (and draws in training_curves.png) at least 10 points."""
  if total_steps < 20:
    return int(log_every_steps)
  return max(1, min(int(log_every_steps), int(total_steps) // 10))


class Progress:
  """Measures steps/s, images/s and ETA between reports; writes scalars.

  Rates exclude the first step of the run, which includes compilation. `name`
  starts the terminal line ('fine-tune step 50/300 | ...'), `prefix` the
  TensorBoard tags ('finetune/loss'); without a writer nothing is written.
  """

  def __init__(self, writer: summaries.Writer | None, *, total_steps: int,
               start_step: int, global_batch_size: int, name: str = "", prefix: str = ""):
    self.writer = writer
    self.total_steps = total_steps
    self.global_batch_size = global_batch_size
    self.name = f"{name} " if name else ""
    self.prefix = f"{prefix}/" if prefix else ""
    self._mark_step = start_step
    self._mark_time = None

  def _write(self, step: int, scalars: dict[str, float]) -> None:
    if self.writer is not None:
      self.writer.write_scalars(step, {self.prefix + k: v for k, v in scalars.items()})

  def first_step_done(self, step: int, seconds: float) -> None:
    """Called once the first step (compile + run) has finished."""
    logging.info("%sstep %d: compiled and ran the first step in %.1fs", self.name, step, seconds)
    self._write(step, {"compile_and_first_step_s": seconds})
    self._mark_step, self._mark_time = step, time.perf_counter()

  def report(self, step: int, metrics: dict) -> dict[str, float]:
    """Fetches `metrics` (device arrays) and logs them with throughput."""
    scalars = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
    now = time.perf_counter()
    if self._mark_time is not None and step > self._mark_step:
      steps_per_sec = (step - self._mark_step) / (now - self._mark_time)
      scalars["steps_per_sec"] = steps_per_sec
      scalars["images_per_sec"] = steps_per_sec * self.global_batch_size
      eta = _duration((self.total_steps - step) / steps_per_sec)
      self._mark_step, self._mark_time = step, now
    else:
      eta = "?"
    self._write(step, scalars)
    shown = " | ".join(f"{k} {v:.4g}" for k, v in scalars.items()
                       if k not in ("steps_per_sec", "images_per_sec")
                       and (k != "skipped_updates" or v))
    rate = (f"{scalars['steps_per_sec']:.2f} steps/s, {scalars['images_per_sec']:.0f} img/s"
            if "steps_per_sec" in scalars else "")
    logging.info("%sstep %d/%d | %s | %s | ETA %s", self.name, step, self.total_steps, shown,
                 rate, eta)
    return scalars


class MetricsLog:
  """The logged scalars as JSON lines (WORKDIR/metrics.jsonl): what the plots are drawn from.

  A resumed run first drops the lines after its start step (they belong to
  the steps it will run again), so the file always describes one run.
  """

  def __init__(self, path: str | None, start_step: int):
    self.path = path
    if path is None:
      return
    kept = [r for r in self.read(path) if r["step"] <= start_step] if start_step else []
    with open(path, "w") as f:
      for record in kept:
        f.write(json.dumps(record) + "\n")

  def append(self, step: int, scalars: dict[str, float]) -> None:
    if self.path is not None:
      with open(self.path, "a") as f:
        f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}})
                + "\n")

  @staticmethod
  def read(path: str) -> list[dict]:
    if not os.path.exists(path):
      return []
    with open(path) as f:
      return [json.loads(line) for line in f if line.strip()]
