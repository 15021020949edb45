"""The pretraining loop keeps the accelerator busy: one compilation, no per-step host waits.

And the trainer builds where TensorFlow is missing (an accelerator image with JAX only).

On a GPU or TPU a step is dispatched asynchronously; anything that brings a
device value to the host inside the loop makes the host wait for that step
and leaves the device idle while the next batch is prepared. The loop may
fetch only the one-step-late health flag (two scalars of the previous step)
and, on logged steps, the logged scalars.
"""

import subprocess
import sys

import jax
import numpy as np

from sslx.jobs import pretrain
from conftest import REPO, tiny_config

STEPS, LOG_EVERY = 8, 4


def test_train_step_compiles_once_and_the_loop_fetches_only_scalars(tmp_path, monkeypatch):
  trainers = []

  traces = []

  class Recording(pretrain.Trainer):

    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      trainers.append(self)

    def _train_step(self, state, batch):
      traces.append(1)  # runs when jax traces the step, i.e. once per compilation
      return super()._train_step(state, batch)

  fetched = []  # the sizes of the leaves of every explicit device -> host fetch
  real_device_get = jax.device_get

  def counting_device_get(tree):
    fetched.append([int(np.size(leaf)) for leaf in jax.tree.leaves(tree)])
    return real_device_get(tree)

  monkeypatch.setattr(pretrain, "Trainer", Recording)
  monkeypatch.setattr(jax, "device_get", counting_device_get)
  config = tiny_config(train_steps=STEPS, log_every_steps=LOG_EVERY, checkpoint_every_steps=100)
  config.data.data_dir = str(tmp_path / "tfds")
  config.eval.update(knn=False, linear=False, few_labels=())
  config.plots.enabled = False
  # Implicit transfers (float(x), np.asarray(x), `if x:` on a device value)
  # raise: every fetch in the run is an explicit, counted device_get.
  with jax.transfer_guard_device_to_host("disallow"):
    results = pretrain.run(config, str(tmp_path / "run"))

  assert results["step"] == STEPS
  assert len(trainers) == 1 and len(traces) == 1  # one trace, so one compilation
  # No fetch of anything bigger than a scalar (no embeddings, no parameters).
  assert all(size == 1 for sizes in fetched for size in sizes), fetched
  # Per step one fetch (the previous step's flag), per logged step one more,
  # and a few around the loop (start step, the last step's check, the save).
  logged = STEPS // LOG_EVERY
  assert STEPS <= len(fetched) <= STEPS + logged + 4, len(fetched)


_WITHOUT_TENSORFLOW = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name.split(".")[0] in ("tensorflow", "tensorflow_datasets", "tensorboard"):
      raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
from sslx import data
from sslx.jobs import pretrain
assert isinstance(data.DatasetInfo, type) and pretrain.Trainer
try:
  data.make_pretrain_iterator
except ModuleNotFoundError as e:
  print("pipeline needs", e.name)
"""


def test_the_trainer_imports_without_tensorflow():
  # Accelerator images often have JAX but no TensorFlow: the train step (and
  # experiments/benchmark.py --what=step) must still build there.
  out = subprocess.run([sys.executable, "-c", _WITHOUT_TENSORFLOW], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "pipeline needs tensorflow" in out.stdout, out.stdout  # loaded on first use, not at import


_TENSORFLOW_WITHOUT_KERAS = """
import sys
from sslx.data import datasets, input_pipeline  # TensorFlow, TFDS, the embedded builders
from sslx.core import summaries
writer = summaries.Writer(sys.argv[1])
writer.write_hparams({"model": {"name": "resnet10", "widths": (1, 2)}, "lr": 0.1})
writer.write_scalars(3, {"loss": 1.5})
writer.close()
print("keras loaded:", "keras" in sys.modules, "sklearn" in sys.modules)
import tensorflow as tf
print("tf.keras:", tf.keras.layers.Dense.__name__)
"""


def test_tensorflow_comes_without_keras_and_the_event_files_hold_what_was_written(tmp_path):
  # TensorFlow imports Keras (and Keras scikit-learn) eagerly; sslx skips that
  # at every process's start (sslx/data/host_tf.py) and tf.keras still loads on use.
  out = subprocess.run([sys.executable, "-c", _TENSORFLOW_WITHOUT_KERAS, str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.splitlines() == ["keras loaded: False False", "tf.keras: Dense"]
  from sslx.data.host_tf import tf  # pylint: disable=g-import-not-at-top
  from tensorboard.plugins.hparams import plugin_data_pb2  # pylint: disable=g-import-not-at-top
  scalars, hparams = {}, {}
  (events,) = [f for f in tmp_path.iterdir() if f.name.startswith("events.out.tfevents")]
  for event in tf.compat.v1.train.summary_iterator(str(events)):
    for value in event.summary.value:
      if value.metadata.plugin_data.plugin_name == "hparams":
        data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
        if data.HasField("session_start_info"):
          for k, v in data.session_start_info.hparams.items():
            hparams[k] = v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
      else:
        scalars[(value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
  assert scalars == {("loss", 3): 1.5}
  assert hparams == {"model.name": "resnet10", "model.widths": "(1, 2)", "lr": 0.1}
