"""TensorFlow for the host-side input pipeline, with every GPU hidden from it.

Every sslx module that uses TensorFlow imports `tf` from here, so that the
first import hides the GPUs before TensorFlow initialises its devices: tf.data
then runs on the host CPU and never reserves accelerator memory that JAX needs.
"""

import logging

import tensorflow as tf

try:
  tf.config.set_visible_devices([], "GPU")
except RuntimeError as e:
  # TensorFlow already initialised its devices (someone used TF first); it
  # can no longer be changed, so say so instead of failing the import.
  logging.getLogger(__name__).warning(
      "Could not hide GPUs from TensorFlow (%s); tf.data may reserve GPU memory. Import "
      "sslx's input pipeline before using TensorFlow.", e)

__all__ = ["tf"]
