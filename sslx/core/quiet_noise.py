"""Keeps library noise out of sslx's console output, and nothing else.

main.py installs this; a script that wants the same quiet output calls
`install()` after absl's logging is set up.
"""

import logging as std_logging
import os
import sys

from absl import logging


class QuietLibraries(std_logging.Filter):
  """Drops the INFO chatter of libraries (orbax logs every save, tfds every read, jax that
  it found no TPU) and Orbax's warnings that a directory is opened read-only.

  Also drops asyncio's "Task exception was never retrieved" reports: when one
  array of a checkpoint fails to restore, Orbax raises that failure (sslx
  reports it as one line) and leaves its sibling reads' identical failures
  unretrieved; asyncio prints each with a traceback when it is collected,
  which reads like a second, unhandled crash.
  """

  _PACKAGES = tuple(f"{os.sep}{name}{os.sep}" for name in (
      "orbax", "tensorflow_datasets", os.path.join("jax", "_src")))
  # Orbax's notes on opening a directory read-only (every evaluator does, on purpose).
  _READ_ONLY_NOTES = ("read_only=True", "Given directory is read only")

  def filter(self, record) -> bool:
    if record.name == "asyncio" and "exception was never retrieved" in str(record.msg):
      return False
    ours = not any(package in record.pathname for package in self._PACKAGES)
    if ours:
      return True
    if record.levelno <= std_logging.INFO:
      return False  # libraries' chatter: every save, every read, "no TPU backend", ...
    return not (f"{os.sep}orbax{os.sep}" in record.pathname
                and any(note in record.getMessage() for note in self._READ_ONLY_NOTES))


def is_abandoned_orbax_read(unraisable) -> bool:
  """An Orbax read coroutine that raised while being closed, unfinished.

  When one array of a restore fails (an evaluator reading a live workdir as
  the trainer deletes that step: sslx/core/checkpointing.py retries on the
  newest step), Orbax abandons the sibling reads; closing each throws
  GeneratorExit into it, which it re-raises as a TensorStore error, and
  Python prints that as "Exception ignored in: <coroutine ...>" with a
  page of traceback, though the restore was retried or reported already.
  """
  coroutine, exc = unraisable.object, unraisable.exc_value
  code = getattr(coroutine, "cr_code", None)
  return (code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename
          and exc is not None
          and isinstance(exc.__cause__ or exc.__context__, GeneratorExit))


def ignore_known_noise(unraisable) -> None:
  """Drops two harmless unraisable exceptions of Orbax; others print as usual.

  * Orbax's asyncio threads can outlive their event loop at exit after a
    failed restore: "Exception ignored ... RuntimeError: Event loop is
    closed", after (or even before) sslx's one-line error.
  * The abandoned reads of a restore that failed (`is_abandoned_orbax_read`).
  Both print tracebacks that read like a crash where there was none.
  """
  exc = unraisable.exc_value
  if ((isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed")
      or is_abandoned_orbax_read(unraisable)):
    logging.debug("ignored: %s", str(exc).splitlines()[0][:200] if str(exc) else repr(exc))
    return
  sys.__unraisablehook__(unraisable)


def install() -> None:
  """Filters absl's handler and drops the harmless unraisable exceptions (see above)."""
  sys.unraisablehook = ignore_known_noise
  logging.get_absl_handler().addFilter(QuietLibraries())
