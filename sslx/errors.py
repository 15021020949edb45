"""Errors that sslx raises for bad input.

Each one is meant to be read by a person: its message says what was wrong and
what would be valid. `main.py` prints them without a stack trace.
"""


class SslxError(Exception):
  """Base class for user-facing sslx errors."""


class ConfigError(SslxError, ValueError):
  """A config value is invalid (unknown name, out of range, inconsistent)."""

  @classmethod
  def from_problems(cls, problems: list[str]) -> "ConfigError":
    """One error listing every problem found, one per line."""
    return cls("Invalid config:\n  - " + "\n  - ".join(problems))


class DatasetNotAvailableError(SslxError, RuntimeError):
  """A dataset is not prepared on disk and cannot be downloaded."""


class CheckpointError(SslxError, RuntimeError):
  """A checkpoint is missing, unreadable, or does not match the config."""


class CheckpointMismatchError(CheckpointError):
  """A readable checkpoint written for another method, architecture or head size."""


class Preempted(SslxError):
  """Training stopped on a signal after saving a checkpoint; rerun to resume."""
