"""Type and range checks of a config, run before anything is compiled, loaded or written.

Each check returns a list of problems (strings naming the field, the value and
what is valid) instead of raising, so a config with three typos is reported
in one run, not three. `pretrain.validate_config` gathers these together with
the method's own checks (`SSLMethod.config_problems`) and the dataset's.
"""

import numbers
from typing import Any, Callable

import ml_collections

from sslx.core import mesh
from sslx.core import optim
from sslx.data import views

_MISSING = object()


def _get(config, path: str):
  node = config
  for key in path.split("."):
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or key not in node:
      return _MISSING
    node = node[key]
  return node


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


# Each kind: (predicate, what is valid). Numbers are checked for their type
# first, so `--config.batch_size=1e3` or a string fails with the same message.
Check = tuple[Callable[[Any], bool], str]
POSITIVE_INT: Check = (lambda v: _is_int(v) and v > 0, "an integer > 0")
NON_NEGATIVE_INT: Check = (lambda v: _is_int(v) and v >= 0, "an integer >= 0")
INT: Check = (_is_int, "an integer")
POSITIVE: Check = (lambda v: _is_real(v) and v > 0, "a number > 0")
NON_NEGATIVE: Check = (lambda v: _is_real(v) and v >= 0, "a number >= 0")
UNIT_INTERVAL: Check = (lambda v: _is_real(v) and 0 <= v <= 1, "a number in [0, 1]")
OPEN_UNIT_INTERVAL: Check = (lambda v: _is_real(v) and 0 < v <= 1, "a number in (0, 1]")
MOMENTUM: Check = (lambda v: _is_real(v) and 0 <= v < 1, "a number in [0, 1)")
BOOL: Check = (lambda v: isinstance(v, bool), "True or False")


def one_of(*values) -> Check:
  return (lambda v: v in values, "one of " + ", ".join(map(repr, values)))


def check_fields(config, rules: dict[str, Check], *, prefix: str = "") -> list[str]:
  """Problems with the fields of `config` named in `rules` (fields absent are skipped)."""
  problems = []
  for path, (ok, valid) in rules.items():
    value = _get(config, path)
    if value is _MISSING:
      continue
    try:
      good = ok(value)
    except TypeError:
      good = False
    if not good:
      problems.append(f"config.{prefix}{path}={value!r}; it must be {valid}.")
  return problems


TOP_LEVEL = {
    "seed": INT,
    "train_steps": POSITIVE_INT,
    "train_epochs": (lambda v: v is None or (_is_real(v) and v >= 0),
                     "a number >= 0 (0 or None: use train_steps)"),
    "data.holdout_fraction": (lambda v: _is_real(v) and 0 <= v < 1, "a number in [0, 1)"),
    "batch_size": POSITIVE_INT,
    "dtype": one_of("float32", "bfloat16", "float16"),
    "log_every_steps": POSITIVE_INT,
    "checkpoint_every_steps": POSITIVE_INT,
    "keep_checkpoints": POSITIVE_INT,
    "cpu_devices": NON_NEGATIVE_INT,
    "cpu_conv_backend": one_of(*mesh.CPU_CONV_BACKENDS),
    "resume_from_older": BOOL,
    "resume_changes": (lambda v: isinstance(v, str), "a comma-separated list of config fields "
                       "(e.g. 'train_steps,optimizer'), or ''"),
    "compilation_cache_dir": (lambda v: isinstance(v, str), "a directory, or '' for no cache"),
    "data.image_size": POSITIVE_INT,
    "data.eval_crop_fraction": OPEN_UNIT_INTERVAL,
    "data.shuffle_buffer": POSITIVE_INT,
    "data.prefetch": NON_NEGATIVE_INT,
    "optimizer.name": one_of(*optim.OPTIMIZERS.names()),
    "optimizer.base_learning_rate": POSITIVE,
    "optimizer.weight_decay": NON_NEGATIVE,
    "optimizer.momentum": MOMENTUM,
    "optimizer.trust_coefficient": POSITIVE,
    "optimizer.warmup_epochs": NON_NEGATIVE,
    "optimizer.min_learning_rate_ratio": UNIT_INTERVAL,
    "probe.learning_rate": POSITIVE,
    "probe.momentum": MOMENTUM,
    "eval.knn_k": POSITIVE_INT,
    "eval.knn_temperature": POSITIVE,
    "eval.batch_size": POSITIVE_INT,
    "eval.every_steps": NON_NEGATIVE_INT,
    "eval.few_labels": (lambda v: isinstance(v, (tuple, list)) and all(
        _is_int(n) and n > 0 for n in v), "a tuple of integers > 0 (labels per class), or ()"),
    "eval.few_label_draws": POSITIVE_INT,
    "eval.scale_with_run": BOOL,
    "eval.short_run_steps": NON_NEGATIVE_INT,
    "eval.few_label_l2": POSITIVE,
    "eval.scratch.steps": NON_NEGATIVE_INT,
    "eval.scratch.draws": POSITIVE_INT,
    "eval.scratch.batch_size": POSITIVE_INT,
    "eval.scratch.base_learning_rate": POSITIVE,
    "eval.scratch.weight_decay": NON_NEGATIVE,
    "plots.enabled": BOOL,
    "plots.tsne_max_points": POSITIVE_INT,
    "plots.retrieval_queries": POSITIVE_INT,
    "plots.retrieval_neighbours": POSITIVE_INT,
    "nonfinite.action": one_of("stop", "skip"),
    "nonfinite.max_skipped": NON_NEGATIVE_INT,
    "collapse.min_std_fraction": NON_NEGATIVE,
    "collapse.min_effective_rank": NON_NEGATIVE,
}

def view_problems(config) -> list[str]:
  """The view groups' fields (sslx/data/views.py is the one place they are named)."""
  problems = views.group_problems(config.get("views"))
  scratch_view = _get(config, "eval.scratch.view")
  if scratch_view is not _MISSING:
    problems += views.group_problems(ml_collections.ConfigDict({"view": scratch_view}),
                                     section="eval.scratch")
  return problems


def feature_layer_problems(layer: str | None, grid: int, map_names) -> list[str]:
  """What is wrong with `eval.feature_layer` / `eval.feature_grid` for a backbone's maps."""
  problems = []
  if layer is not None and layer not in map_names:
    problems.append(f"config.eval.feature_layer={layer!r} is not a feature map of this backbone; "
                    f"valid: {', '.join(map_names)}, or None for its pooled representation.")
  if not isinstance(grid, int) or isinstance(grid, bool) or grid < 1:
    problems.append(f"config.eval.feature_grid={grid!r}; it must be a positive integer (the side "
                    "of the grid a feature map is average-pooled to; 1: global average).")
  elif layer is None and grid != 1:
    problems.append(f"config.eval.feature_grid={grid} needs config.eval.feature_layer: the pooled "
                    "representation has no positions left to pool over a grid.")
  return problems


def problems(config: ml_collections.ConfigDict) -> list[str]:
  """All type and range problems of a pretraining config that need no model, method or dataset
  (`sslx.models.config_problems` and the method's `config_problems` add theirs).

  With `train_epochs` set, train_steps is computed from the dataset's size when the run
  starts, so it is not checked here.
  """
  rules = TOP_LEVEL
  if _get(config, "train_epochs") not in (_MISSING, None, 0):
    rules = {k: v for k, v in TOP_LEVEL.items() if k != "train_steps"}
  return check_fields(config, rules) + view_problems(config)
