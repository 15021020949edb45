"""Input pipeline: the dataset registry, the embedded mnist5k and tf.data.

Importing this package hides every GPU from TensorFlow, so that tf.data runs on
the host CPU and TensorFlow never allocates accelerator memory that JAX needs,
and registers the `mnist5k` TFDS builder.
"""

import logging as _logging

import tensorflow as _tf

try:
  _tf.config.set_visible_devices([], "GPU")
except RuntimeError as _e:
  # TensorFlow already initialised its devices (someone used TF first); it
  # can no longer be changed, so say so instead of failing the import.
  _logging.getLogger(__name__).warning(
      "Could not hide GPUs from TensorFlow (%s); tf.data may reserve GPU "
      "memory. Import sslx.data before using TensorFlow.", _e)

# pylint: disable=g-import-not-at-top,wrong-import-position
from sslx.data import mnist5k  # Registers the 'mnist5k' TFDS builder.
from sslx.data import subsets
from sslx.data.datasets import DatasetInfo
from sslx.data.datasets import get_dataset_info
from sslx.data.input_pipeline import make_eval_iterator
from sslx.data.input_pipeline import make_pretrain_iterator
from sslx.data.input_pipeline import num_eval_batches

__all__ = [
    "DatasetInfo",
    "get_dataset_info",
    "make_eval_iterator",
    "make_pretrain_iterator",
    "num_eval_batches",
    "subsets",
]
