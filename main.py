r"""sslx entry point: pretraining and transfer-evaluation jobs chosen by config.

  python main.py --config=configs/byol.py --workdir=/tmp/byol
  python main.py --config=configs/byol.py:cifar10 --workdir=/tmp/byol_c10 \
      --config.batch_size=512 --config.train_steps=20000
  python main.py --config=configs/linear_eval.py --workdir=/tmp/byol_linear \
      --config.checkpoint=/tmp/byol

`config.job` names the job of sslx/jobs that runs (default 'pretrain').
"""

import os
import sys

# TensorFlow is only used for tf.data: keep it off the GPU/TPU and quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# ... and its oneDNN note ("oneDNN custom operations are on"), which absl's C++ log
# prints whatever TF_CPP_MIN_LOG_LEVEL says: tf.data's image ops gain nothing from it.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from sslx import errors
from sslx.config import overrides
from sslx.core import compile_once
from sslx.core import mesh
from sslx.core import preemption
from sslx.core import quiet_noise
from sslx.jobs import JOBS

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with a preset: configs/byol.py:cifar10.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  config = _CONFIG.value
  job = config.get("job", "pretrain")
  try:
    mesh.split_cpu_into_devices(config)
    mesh.choose_cpu_conv_backend(config)
    compile_once.enable_persistent_cache(config)
    JOBS.get(job)(config, _WORKDIR.value)
  except errors.Preempted as e:
    print(str(e), file=sys.stderr, flush=True)
    sys.exit(preemption.EXIT_CODE)
  except errors.SslxError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)  # once: not also through the log
    sys.exit(2)
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() == 1 or not _lost_a_process(e):
      raise
    message = (
        f"Lost contact with another process of this {jax.process_count()}-process run "
        f"({str(e).splitlines()[0]}); it died or was stopped without the others. Checkpoints "
        f"already in {_WORKDIR.value}/checkpoints stay readable (a save in flight is not "
        "committed). Rerun every process with the same command to resume from the newest.")
    print(f"error: {message}", file=sys.stderr, flush=True)
    # Not sys.exit: at exit jax.distributed's shutdown waits on the lost process
    # and aborts the interpreter with a core dump.
    os._exit(preemption.EXIT_CODE)  # pylint: disable=protected-access


# Words of the runtime's errors when a peer process is gone (gloo's TCP pairs,
# the coordination service's heartbeats and barriers).
_PEER_LOST = ("Gloo", "gloo", "heartbeat", "Connection reset", "Connection refused",
              "coordination", "Barrier", "DEADLINE_EXCEEDED", "UNAVAILABLE")


def _lost_a_process(error: Exception) -> bool:
  return any(word in str(error) for word in _PEER_LOST)


_HELP = ("--help", "-h", "-help", "--helpshort")


if __name__ == "__main__":
  if len(sys.argv) == 1 or any(a in _HELP for a in sys.argv[1:]):
    from sslx.jobs import usage  # pylint: disable=g-import-not-at-top
    brief = len(sys.argv) == 1
    print(usage.help_text(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs"),
                          brief=brief), file=sys.stderr if brief else sys.stdout)
    sys.exit(2 if brief else 0)
  try:  # a missing flag, a misspelt config, preset or --config.x=y: one line, no traceback
    overrides.check_argv(sys.argv)
  except errors.ConfigError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  logging.set_verbosity(logging.INFO)
  quiet_noise.install()
  app.run(main)
