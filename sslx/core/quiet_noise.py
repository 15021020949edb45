"""Keeps library noise out of sslx's console output, and nothing else.

main.py installs this; a script that wants the same quiet output calls
`install()` after absl's logging is set up.
"""

import logging as std_logging
import os
import sys

from absl import logging


class QuietLibraries(std_logging.Filter):
  """Drops the INFO chatter of libraries (orbax logs every save, tfds every read).

  Also drops asyncio's "Task exception was never retrieved" reports: when one
  array of a checkpoint fails to restore, Orbax raises that failure (sslx
  reports it as one line) and leaves its sibling reads' identical failures
  unretrieved; asyncio prints each with a traceback when it is collected,
  which reads like a second, unhandled crash.
  """

  _PACKAGES = tuple(f"{os.sep}{name}{os.sep}" for name in ("orbax", "tensorflow_datasets"))

  def filter(self, record) -> bool:
    if record.name == "asyncio" and "exception was never retrieved" in str(record.msg):
      return False
    return record.levelno > std_logging.INFO or not any(
        package in record.pathname for package in self._PACKAGES)


def ignore_closed_event_loop(unraisable) -> None:
  """Orbax's asyncio threads can outlive their event loop at exit after a failed restore.

  Python then prints "Exception ignored ... RuntimeError: Event loop is
  closed" with a traceback, after (or even before) sslx's one-line error: noise
  that reads like a crash. Only that exception is silenced; others print.
  """
  if (isinstance(unraisable.exc_value, RuntimeError)
      and str(unraisable.exc_value) == "Event loop is closed"):
    logging.debug("ignored at exit: %s", unraisable.exc_value)
    return
  sys.__unraisablehook__(unraisable)


def install() -> None:
  """Filters absl's handler and drops the one harmless exit-time exception (see above)."""
  sys.unraisablehook = ignore_closed_event_loop
  logging.get_absl_handler().addFilter(QuietLibraries())
