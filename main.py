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

JOBS = ("pretrain", "knn_eval", "linear_eval", "finetune")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with a preset: configs/byol.py:cifar10.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.mark_flags_as_required(["config", "workdir"])


def _split_cpu_into_devices(config) -> None:
  """Data parallelism over CPU cores: one XLA host device per core.

  XLA's CPU backend keeps about one core busy per device for small convnets
  (measured: a lone BYOL run used 1 of 2 cores; two devices ran the quick
  start ~30% faster, experiments/README.md). This only affects the host
  platform: on GPU/TPU machines jax.devices() is unchanged. It must run before
  JAX initialises its backends, which nothing has done yet at this point.
  """
  flags_now = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" in flags_now:
    return
  count = config.get("cpu_devices", 0)
  if not count:
    batches = (config.batch_size, config.get("eval", {}).get("batch_size", config.batch_size))
    count = max(d for d in range(1, (os.cpu_count() or 1) + 1)
                if all(b % d == 0 for b in batches))
  os.environ["XLA_FLAGS"] = f"{flags_now} --xla_force_host_platform_device_count={count}".strip()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  config = _CONFIG.value
  _split_cpu_into_devices(config)
  job = config.get("job", "pretrain")
  try:
    if job not in JOBS:
      raise errors.ConfigError(f"Unknown job {job!r} (config.job); valid jobs: {', '.join(JOBS)}.")
    importlib.import_module(f"sslx.{job}").run(config, _WORKDIR.value)
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


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  app.run(main)
