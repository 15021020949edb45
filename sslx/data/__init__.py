"""Input pipeline: the dataset registry, the embedded mnist5k and tf.data.

`import sslx.data` is cheap and needs no TensorFlow: the pipeline's names
below are loaded on first use. The device-side pieces (`views`, `augment`) and
the trainer that uses them import without TensorFlow, so a train step can be
built and measured on an accelerator image that has JAX but no TensorFlow
(experiments/gpu_check.sh). The first use imports TensorFlow through
`sslx.data.host_tf`, which hides every GPU from it, and registers the
`mnist5k` TFDS builder.
"""

import importlib

from sslx.data.info import DatasetInfo

# name -> submodule that defines it (each imports TensorFlow).
_LAZY = {
    "get_dataset_info": "datasets",
    "class_names": "datasets",
    "make_eval_iterator": "input_pipeline",
    "make_pretrain_iterator": "input_pipeline",
    "num_eval_batches": "input_pipeline",
    "subsets": None,  # the submodule itself
}


def __getattr__(name: str):
  if name not in _LAZY:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  module = importlib.import_module(f"{__name__}.{_LAZY[name] or name}")
  value = module if _LAZY[name] is None else getattr(module, name)
  globals()[name] = value  # later lookups skip __getattr__
  return value


__all__ = ["DatasetInfo", *_LAZY]
