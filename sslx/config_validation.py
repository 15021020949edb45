"""Type and range checks of a config, run before anything is compiled, loaded or written.

Each check returns a list of problems (strings naming the field, the value and
what is valid) instead of raising, so a config with three typos is reported
in one run, not three. `pretrain.validate_config` gathers these together with
the method's own checks (`SSLMethod.config_problems`) and the dataset's.
"""

import numbers
from typing import Any, Callable

import ml_collections

from sslx import mesh
from sslx import models
from sslx import optim

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
    "batch_size": POSITIVE_INT,
    "dtype": one_of("float32", "bfloat16", "float16"),
    "log_every_steps": POSITIVE_INT,
    "checkpoint_every_steps": POSITIVE_INT,
    "keep_checkpoints": POSITIVE_INT,
    "cpu_devices": NON_NEGATIVE_INT,
    "cpu_conv_backend": one_of(*mesh.CPU_CONV_BACKENDS),
    "resume_from_older": BOOL,
    "data.image_size": POSITIVE_INT,
    "data.eval_crop_fraction": OPEN_UNIT_INTERVAL,
    "data.shuffle_buffer": POSITIVE_INT,
    "data.prefetch": NON_NEGATIVE_INT,
    "model.width": POSITIVE,
    "model.stem": one_of(*models.STEMS),
    "model.name": one_of(*models.MODELS),
    "optimizer.name": one_of(*optim.OPTIMIZERS),
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
    "nonfinite.action": one_of("stop", "skip"),
    "nonfinite.max_skipped": NON_NEGATIVE_INT,
    "collapse.min_std_fraction": NON_NEGATIVE,
    "collapse.min_effective_rank": NON_NEGATIVE,
}

VIEW = {
    "crop_area_min": OPEN_UNIT_INTERVAL,
    "crop_area_max": OPEN_UNIT_INTERVAL,
    "crop_aspect_min": POSITIVE,
    "crop_aspect_max": POSITIVE,
    "flip_prob": UNIT_INTERVAL,
    "color_jitter_prob": UNIT_INTERVAL,
    "brightness": NON_NEGATIVE,
    "contrast": NON_NEGATIVE,
    "saturation": NON_NEGATIVE,
    "hue": (lambda v: _is_real(v) and 0 <= v <= 0.5, "a number in [0, 0.5]"),
    "grayscale_prob": UNIT_INTERVAL,
    "blur_prob": UNIT_INTERVAL,
    "blur_sigma_min": POSITIVE,
    "blur_sigma_max": POSITIVE,
    "blur_kernel_fraction": OPEN_UNIT_INTERVAL,
    "solarize_prob": UNIT_INTERVAL,
    "solarize_threshold": UNIT_INTERVAL,
}


def _ordered(config, low: str, high: str, prefix: str) -> list[str]:
  lo, hi = _get(config, low), _get(config, high)
  if _is_real(lo) and _is_real(hi) and lo > hi:
    return [f"config.{prefix}{low}={lo} is above config.{prefix}{high}={hi}."]
  return []


def view_problems(config) -> list[str]:
  problems = []
  for name, view in (config.get("views") or {}).items():
    prefix = f"views.{name}."
    problems += check_fields(view, VIEW, prefix=prefix)
    problems += _ordered(view, "crop_area_min", "crop_area_max", prefix)
    problems += _ordered(view, "crop_aspect_min", "crop_aspect_max", prefix)
    problems += _ordered(view, "blur_sigma_min", "blur_sigma_max", prefix)
  return problems


def image_size_problems(config) -> list[str]:
  """The encoder must see at least one pixel per output position of its last stage."""
  size, stem = _get(config, "data.image_size"), _get(config, "model.stem")
  if not _is_int(size) or stem not in models.STEMS:
    return []  # already reported by the field checks
  stride = models.total_stride(stem)
  if size < stride:
    other = [s for s in models.STEMS if models.total_stride(s) <= size]
    fix = (f"use model.stem={other[0]!r} (total stride {models.total_stride(other[0])}) or "
           if other else "")
    return [f"config.data.image_size={size} is smaller than the total stride {stride} of a "
            f"ResNet with model.stem={stem!r}, so its last stage would see padding only; "
            f"{fix}use image_size >= {stride}."]
  return []


def problems(config: ml_collections.ConfigDict) -> list[str]:
  """All type and range problems of a pretraining config that need no method or dataset."""
  found = check_fields(config, TOP_LEVEL) + view_problems(config) + image_size_problems(config)
  return found
