r"""sslx entry point: pretraining and transfer-evaluation jobs chosen by config.

  python main.py --config=configs/byol.py --workdir=/tmp/byol
  python main.py --config=configs/byol.py:cifar10 --workdir=/tmp/byol_c10 \
      --config.batch_size=512 --config.train_steps=20000
  python main.py --config=configs/linear_eval.py --workdir=/tmp/byol_linear \
      --config.checkpoint=/tmp/byol

`config.job` names the module under sslx/ that runs (default 'pretrain').
"""

import importlib
import logging as std_logging
import os
import sys

# TensorFlow is only used for tf.data: keep it off the GPU/TPU and quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from ml_collections import config_flags

from sslx import errors
from sslx import mesh
from sslx import preemption

JOBS = ("pretrain", "knn_eval", "linear_eval", "finetune")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with a preset: configs/byol.py:cifar10.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  config = _CONFIG.value
  mesh.split_cpu_into_devices(config)
  job = config.get("job", "pretrain")
  try:
    if job not in JOBS:
      raise errors.ConfigError(f"Unknown job {job!r} (config.job); valid jobs: {', '.join(JOBS)}.")
    importlib.import_module(f"sslx.{job}").run(config, _WORKDIR.value)
  except errors.Preempted as e:
    logging.warning("%s", e)
    print(str(e), file=sys.stderr, flush=True)
    sys.exit(preemption.EXIT_CODE)
  except errors.SslxError as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


class _QuietLibraries:
  """Drops the INFO chatter of libraries (orbax logs every save, tfds every read)."""

  _PACKAGES = tuple(f"{os.sep}{name}{os.sep}" for name in ("orbax", "tensorflow_datasets"))

  def filter(self, record) -> bool:
    return record.levelno > std_logging.INFO or not any(
        package in record.pathname for package in self._PACKAGES)


def _ignore_closed_event_loop(unraisable) -> None:
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


if __name__ == "__main__":
  sys.unraisablehook = _ignore_closed_event_loop
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  app.run(main)
