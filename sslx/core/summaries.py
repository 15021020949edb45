"""TensorBoard event files: scalars and a run's hyperparameters, from process 0 only.

TensorBoard's own API (tf.summary, and the HParams plugin's summary_v2), in the
interface clu's metric writers have (write_scalars, write_hparams, flush,
close). Not clu.metric_writers itself: importing it imports the HParams
plugin's Keras callback, so Keras, scikit-learn and SciPy, which
`sslx.data.host_tf` keeps out of every process's start (about 3 s on 2 cores).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


class Writer:
  """Writes event files into `logdir` in process 0; in the other processes it does nothing,
  so that a multi-process run has one set of event files."""

  def __init__(self, logdir: str):
    self._writer = None
    if jax.process_index() == 0:
      from sslx.data.host_tf import tf  # pylint: disable=g-import-not-at-top
      self._tf = tf
      self._writer = tf.summary.create_file_writer(logdir)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if self._writer is not None:
      with self._writer.as_default():
        for key, value in scalars.items():
          self._tf.summary.scalar(key, value, step=step)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """The HParams dashboard's values: bools, numbers and strings kept, anything else as text."""
    if self._writer is not None:
      from tensorboard.plugins.hparams import summary_v2  # pylint: disable=g-import-not-at-top
      values = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
                for k, v in _flatten(hparams).items()}
      with self._writer.as_default():
        summary_v2.hparams(values)

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
