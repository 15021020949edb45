"""View groups: the named sets of augmented crops a method trains on.

`config.views` holds one ConfigDict per group (`sslx.config.defaults.view()`):
how many crops of each image (`num_crops`), their side in pixels
(`crop_size`, None: `data.image_size`), the random-resized-crop and flip
(done on the host, in tf.data) and every photometric parameter (done on
device, `sslx/data/augment.py`). BYOL has two groups of one crop, `v1` and
`v2`, with different blur and solarize; a multi-crop method (SwAV, DINO) has
e.g. `global` (2 crops at 224 px, scale 0.14-1) and `local` (6 crops at 96
px, scale 0.05-0.14).

A method declares the groups it needs and their order (`Method.view_groups`);
ConfigDict lists its keys sorted, so the order is never taken from there
(names without a declared order are sorted naturally: v2 before v10).

The crops of all groups are numbered in that order, group by group, crop by
crop. Crop number v draws its host randomness at Philox counter
(example * V + v) * 11 and its photometric randomness from fold_in(key, v),
so a config whose groups are today's v1 and v2 of one crop each gets exactly
the crops it always got.

This module is the one place where view fields are named and checked.
"""

import dataclasses
import re
from typing import Any, Callable, Sequence

import ml_collections

from sslx import errors

_MISSING = object()

# Host-side (tf.data) fields.
CROP_FIELDS = ("crop_area_min", "crop_area_max", "crop_aspect_min", "crop_aspect_max",
               "flip_prob")
# Device-side photometric fields, in ViewParams order.
PHOTOMETRIC_FIELDS = ("color_jitter_prob", "brightness", "contrast", "saturation", "hue",
                      "grayscale_prob", "blur_prob", "blur_sigma_min", "blur_sigma_max",
                      "blur_kernel_fraction", "solarize_prob", "solarize_threshold")


def _real(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


# field -> (predicate, what is valid)
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "num_crops": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "crop_size": (lambda v: v is None or (_int(v) and v >= 1),
                  "an integer >= 1, or None for data.image_size"),
    "crop_area_min": (lambda v: _real(v) and 0 < v <= 1, "a number in (0, 1]"),
    "crop_area_max": (lambda v: _real(v) and 0 < v <= 1, "a number in (0, 1]"),
    "crop_aspect_min": (lambda v: _real(v) and v > 0, "a number > 0"),
    "crop_aspect_max": (lambda v: _real(v) and v > 0, "a number > 0"),
    "flip_prob": (lambda v: _real(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "color_jitter_prob": (lambda v: _real(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "brightness": (lambda v: _real(v) and v >= 0, "a number >= 0"),
    "contrast": (lambda v: _real(v) and v >= 0, "a number >= 0"),
    "saturation": (lambda v: _real(v) and v >= 0, "a number >= 0"),
    # A fraction of the hue circle; 0.5 already reaches every hue.
    "hue": (lambda v: _real(v) and 0 <= v <= 0.5, "a number in [0, 0.5]"),
    "grayscale_prob": (lambda v: _real(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "blur_prob": (lambda v: _real(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "blur_sigma_min": (lambda v: _real(v) and v > 0, "a number > 0"),
    "blur_sigma_max": (lambda v: _real(v) and v > 0, "a number > 0"),
    "blur_kernel_fraction": (lambda v: _real(v) and 0 < v <= 1, "a number in (0, 1]"),
    "solarize_prob": (lambda v: _real(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "solarize_threshold": (lambda v: _real(v) and 0 <= v <= 1, "a number in [0, 1]"),
}
# Fields a group may lack (configs saved before they existed): their defaults.
OPTIONAL = {"num_crops": 1, "crop_size": None}
_ORDERED = (("crop_area_min", "crop_area_max"), ("crop_aspect_min", "crop_aspect_max"),
            ("blur_sigma_min", "blur_sigma_max"))


@dataclasses.dataclass(frozen=True)
class ViewGroup:
  """One validated group, as plain Python numbers (static at trace time)."""
  name: str
  num_crops: int
  crop_size: int
  area: tuple[float, float]
  aspect: tuple[float, float]
  flip_prob: float
  photometric: dict[str, float]  # PHOTOMETRIC_FIELDS -> value


def natural_key(name: str):
  """'v2' < 'v10': digits compare as numbers."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def group_names(views_config, declared: Sequence[str] | None = None) -> list[str]:
  """The groups in crop-numbering order: the method's declared order, else natural order."""
  names = list(views_config.keys()) if views_config is not None else []
  if declared is not None:
    return [n for n in declared if n in names] + sorted(
        (n for n in names if n not in declared), key=natural_key)
  return sorted(names, key=natural_key)


def name_problems(views_config, declared: Sequence[str], method: str) -> list[str]:
  """The groups of `config.views` must be exactly those the method declares."""
  names = set(views_config.keys()) if views_config is not None else set()
  if names == set(declared):
    return []
  return [f"method {method!r} trains on the view group{'s' if len(declared) > 1 else ''} "
          f"{', '.join(declared)}, but config.views has "
          f"{', '.join(sorted(names, key=natural_key)) or 'none'}; start from "
          f"configs/{method}.py, which sets the groups the method needs."]


def group_problems(views_config, declared: Sequence[str] | None = None,
                   section: str = "views") -> list[str]:
  """Every problem with the fields of `config.views`: types, ranges, order of ranges.

  `section` names where the groups live in messages (config.<section>.<group>.<field>).
  """
  if views_config is None or not list(views_config.keys()):
    return ["config.views has no view groups; give at least one, e.g. v1 (see "
            "sslx/config/defaults.py, view())."]
  problems = []
  for name in group_names(views_config, declared):
    group = views_config[name]
    prefix = f"config.{section}.{name}."
    if not isinstance(group, (ml_collections.ConfigDict, dict)):
      problems.append(f"config.{section}.{name} is {group!r}, not a view group (a ConfigDict from "
                      "sslx.config.defaults.view()).")
      continue
    for field, (ok, valid) in RULES.items():
      value = group.get(field, _MISSING)
      if value is _MISSING:
        if field not in OPTIONAL:
          problems.append(f"{prefix}{field} is missing; build view groups with "
                          "sslx.config.defaults.view().")
        continue
      if not ok(value):
        problems.append(f"{prefix}{field}={value!r}; it must be {valid}.")
    for low, high in _ORDERED:
      lo, hi = group.get(low), group.get(high)
      if _real(lo) and _real(hi) and lo > hi:
        problems.append(f"{prefix}{low}={lo} is above {prefix}{high}={hi}.")
  return problems


def parse_groups(views_config, *, image_size: int,
                 declared: Sequence[str] | None = None) -> list[ViewGroup]:
  """Validated ViewGroups in crop-numbering order; ConfigError listing every problem."""
  if isinstance(views_config, (list, tuple)) and all(
      isinstance(g, ViewGroup) for g in views_config):
    return list(views_config)
  problems = (group_problems(views_config) if declared is None else
              name_problems(views_config, declared, "this method") + group_problems(views_config))
  if problems:
    raise errors.ConfigError("Invalid view groups:\n  - " + "\n  - ".join(problems))
  groups = []
  for name in group_names(views_config, declared):
    g = views_config[name]
    size = g.get("crop_size", None)
    groups.append(ViewGroup(
        name=name, num_crops=int(g.get("num_crops", 1)),
        crop_size=int(image_size if size is None else size),
        area=(float(g.crop_area_min), float(g.crop_area_max)),
        aspect=(float(g.crop_aspect_min), float(g.crop_aspect_max)),
        flip_prob=float(g.flip_prob),
        photometric={f: float(g[f]) for f in PHOTOMETRIC_FIELDS}))
  return groups


def total_crops(groups: Sequence[ViewGroup]) -> int:
  return sum(g.num_crops for g in groups)


def first_crop_index(groups: Sequence[ViewGroup], name: str) -> int:
  """The crop number of the first crop of group `name`."""
  index = 0
  for g in groups:
    if g.name == name:
      return index
    index += g.num_crops
  raise KeyError(name)
