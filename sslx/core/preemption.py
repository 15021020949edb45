"""Graceful stop on SIGTERM / SIGINT: finish the step, checkpoint, exit with a distinctive code.

Cloud TPU and GPU schedulers announce preemption with SIGTERM; a person at a
terminal presses Ctrl-C (SIGINT). Either way the trainer should lose nothing:
the signal only sets a flag, the step in flight completes, the loop saves a
checkpoint of that step and raises `errors.Preempted`, which main.py turns into
exit code EXIT_CODE (75, EX_TEMPFAIL: "try again"). Rerunning the same command
resumes from that checkpoint. A second signal while stopping is ignored, so
an impatient Ctrl-C cannot interrupt the save.

With several processes, each checks whether any process was signalled
(one tiny all-gather per step), so all of them stop at the same step and
write the same checkpoint.
"""

import signal

from absl import logging
import jax
import numpy as np
from jax.experimental import multihost_utils

EXIT_CODE = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
  """Context manager: while active, SIGTERM/SIGINT set `requested` instead of killing."""

  def __init__(self):
    self.signal_name = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.signal_name is None:
      self.signal_name = signal.Signals(signum).name
      logging.warning("Received %s: finishing the current step, then saving a checkpoint.",
                      self.signal_name)

  def __enter__(self):
    for sig in SIGNALS:
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread (e.g. run() called from a worker thread)
        pass
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False

  def requested(self) -> bool:
    """Whether any process has been asked to stop (the same answer on every process)."""
    local = self.signal_name is not None
    if jax.process_count() == 1:
      return local
    return bool(np.any(multihost_utils.process_allgather(np.array(local))))
