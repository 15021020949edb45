"""TensorFlow for the host-side input pipeline, with every GPU hidden from it, without Keras.

Every sslx module that uses TensorFlow (or TFDS, which imports it) imports `tf`
from here first, so that the first import
- hides the GPUs before TensorFlow initialises its devices: tf.data then runs
  on the host CPU and never reserves accelerator memory that JAX needs;
- skips Keras. `import tensorflow` (2.16 and later) imports Keras eagerly, for
  its optimizers' SavedModel registrations, and Keras imports scikit-learn and
  SciPy: about 3 s of every main.py process's start on a 2-core CPU (measured:
  `python -c "import jax, tensorflow, tensorflow_datasets, orbax.checkpoint,
  optax, flax"` 10.6-11.0 s, 7.5-8.2 s with Keras skipped). sslx uses tf.data
  and tf.summary only. TensorFlow catches the ImportError of that eager load
  (tensorflow/__init__.py), and `tf.keras` still loads Keras on first use.
"""

import logging
import os
import sys

# TensorFlow's C++ start-up notes (CPU instruction sets, oneDNN) are not sslx's to show;
# a user who wants them sets TF_CPP_MIN_LOG_LEVEL first.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _import_tensorflow_without_keras():
  if "tensorflow" in sys.modules or "keras" in sys.modules:
    import tensorflow  # pylint: disable=g-import-not-at-top
    return tensorflow
  sys.modules["keras"] = None  # `import keras` raises ImportError while this is here
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,redefined-outer-name
  finally:
    if sys.modules.get("keras", "") is None:
      del sys.modules["keras"]
  return tensorflow


tf = _import_tensorflow_without_keras()

try:
  tf.config.set_visible_devices([], "GPU")
except RuntimeError as e:
  # TensorFlow already initialised its devices (someone used TF first); it
  # can no longer be changed, so say so instead of failing the import.
  logging.getLogger(__name__).warning(
      "Could not hide GPUs from TensorFlow (%s); tf.data may reserve GPU memory. Import "
      "sslx's input pipeline before using TensorFlow.", e)

__all__ = ["tf"]
