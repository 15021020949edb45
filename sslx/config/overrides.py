"""Checks `--config.a.b=value` overrides before absl parses them.

ml_collections reports an unknown field or an unparsable value with a long
traceback from inside flag parsing. `check_argv` loads the config file the
same way, walks every override, and raises one ConfigError naming the field
and what is valid: the closest field names (`did you mean config.data.dataset?`)
or the type the field takes. main.py prints it as one line and exits 2.
"""

import difflib
import importlib.util
import os
from typing import Sequence

import ml_collections

from sslx import errors
from sslx.config import catalog

_FLAG = "--config"


def _split_config_arg(argv: Sequence[str]) -> tuple[str | None, list[tuple[str, str | None]]]:
  """(the --config value, [(dotted field, value or None)]) from argv."""
  config_arg, fields = None, []
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    if arg in (_FLAG, "-config") and i + 1 < len(args):
      config_arg, i = args[i + 1], i + 2
      continue
    for prefix in (_FLAG, "-config"):
      if arg.startswith(prefix + "="):
        config_arg = arg[len(prefix) + 1:]
      elif arg.startswith(prefix + "."):
        body = arg[len(prefix) + 1:]
        if "=" in body:
          name, value = body.split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("-"):
          name, value = body, args[i + 1]
          i += 1
        else:
          name, value = body, None  # a bare boolean flag (--config.x, --config.nox)
        fields.append((name, value))
    i += 1
  return config_arg, fields


def load_config(config_arg: str) -> ml_collections.ConfigDict:
  """`path.py[:argument]` -> its get_config(argument), as config_flags loads it."""
  path, _, argument = config_arg.partition(":")
  if not os.path.isfile(path):
    raise errors.ConfigError(f"--config={config_arg}: no config file {path!r}.")
  spec = importlib.util.spec_from_file_location("_sslx_config_check", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(argument) if argument else module.get_config()


def _leaf_paths(config, prefix="") -> list[str]:
  out = []
  for key in config.keys():
    value = config[key]
    path = f"{prefix}{key}"
    out.append(path)
    if isinstance(value, ml_collections.ConfigDict):
      out += _leaf_paths(value, path + ".")
  return out


def _section(config, dotted: str):
  node = config
  for key in dotted.split(".") if dotted else []:
    if not (isinstance(node, ml_collections.ConfigDict) and key in node):
      return None
    node = node[key]
  return node if isinstance(node, ml_collections.ConfigDict) else None


# What a user most often means by a bare name (the field of that name in a side section, e.g.
# the online probe's learning rate, comes after these).
_INTENDED = {
    "learning_rate": "optimizer.base_learning_rate", "lr": "optimizer.base_learning_rate",
    "base_learning_rate": "optimizer.base_learning_rate",
    "weight_decay": "optimizer.weight_decay", "wd": "optimizer.weight_decay",
    "momentum": "optimizer.momentum", "warmup_epochs": "optimizer.warmup_epochs",
    "dataset": "data.dataset", "image_size": "data.image_size", "data_dir": "data.data_dir",
    "epochs": "train_steps", "steps": "train_steps", "num_steps": "train_steps",
    "batch": "batch_size", "model": "model.name", "backbone": "model.name",
    "arch": "model.name", "width": "model.width",
}
# Sections a suggestion comes from first: the run's main settings before its side parts.
_SECTION_ORDER = ("", "optimizer", "data", "model")


def _rank(path: str) -> int:
  section = path.rpartition(".")[0]
  return _SECTION_ORDER.index(section) if section in _SECTION_ORDER else len(_SECTION_ORDER)


def _suggest(name: str, config) -> str:
  """'; did you mean config.x?' with the likeliest fields, or the parent section's fields."""
  paths = _leaf_paths(config)
  parent, _, last = name.rpartition(".")
  close = [p for p in [_INTENDED.get(name)] if p in paths]
  # The right name in another place; the main sections first.
  close += sorted((p for p in paths if p.split(".")[-1] == last and p != name), key=_rank)
  section = _section(config, parent)
  if section is not None:
    initials = lambda k: "".join(w[0] for w in k.split("_") if w)
    keys = list(section.keys())
    near = difflib.get_close_matches(last, keys, n=2, cutoff=0.6)
    near += [k for k in keys if len(last) > 1 and last in initials(k) and k not in near]
    close += [f"{parent}.{k}" if parent else k for k in near]
  close += [p for p in difflib.get_close_matches(name, paths, n=2, cutoff=0.8) if p not in close]
  close = [p for p in dict.fromkeys(close) if not name.startswith(p + ".")]
  leaves = [p for p in close if _section(config, p) is None]
  close = leaves or close
  if close:
    return "; did you mean " + " or ".join(f"config.{p}" for p in close[:3]) + "?"
  while section is None and parent:  # the nearest section that exists
    parent = parent.rpartition(".")[0]
    section = _section(config, parent)
  return f"; config{'.' + parent if parent else ''} has: {', '.join(section.keys())}."


def _field_type(node: ml_collections.ConfigDict, key: str):
  try:
    return node.get_type(key)
  except (AttributeError, KeyError, TypeError):
    return None


def _type_problem(name: str, value: str | None, field_type) -> str | None:
  if value is None or field_type is None:
    return None
  if field_type is bool:
    if value.lower() not in ("true", "false", "1", "0", "t", "f", "yes", "no"):
      return f"--config.{name}={value}: config.{name} takes True or False."
    return None
  for kind, parse, what in ((int, int, "an integer"), (float, float, "a number")):
    if field_type is kind:
      try:
        parse(value)
      except ValueError:
        return f"--config.{name}={value}: config.{name} takes {what}, not {value!r}."
  return None


def problems(config: ml_collections.ConfigDict, fields: list[tuple[str, str | None]]) -> list[str]:
  """One message per override that names no field of `config` or has a value of the wrong type."""
  found = []
  for name, value in fields:
    node, keys = config, name.split(".")
    for depth, key in enumerate(keys):
      bool_key = key[2:] if value is None and key.startswith("no") else key
      if isinstance(node, ml_collections.ConfigDict) and (key in node or (
          depth == len(keys) - 1 and bool_key in node)):
        if depth == len(keys) - 1:
          key = key if key in node else bool_key
          found += [p for p in [_type_problem(name, value, _field_type(node, key))] if p]
        node = node[key]
        continue
      if not isinstance(node, ml_collections.ConfigDict):
        found.append(f"--config.{name}: config.{'.'.join(keys[:depth])} is a value, not a "
                     f"section, so it has no field {key!r}.")
      else:
        found.append(f"--config.{name}: config has no field {name!r}{_suggest(name, config)}")
      break
  return found


def check_argv(argv: Sequence[str]) -> None:
  """Raises ConfigError (a missing flag, a config file or preset that does not exist, every
  bad override: one line each) before absl parses the flags."""
  config_arg, fields = _split_config_arg(argv[1:])
  if config_arg is None:
    raise errors.ConfigError("--config is required: a config file, e.g. "
                             "--config=configs/byol.py (python main.py --help lists them).")
  if not any(a == "--workdir" or a.startswith("--workdir=") for a in argv[1:]):
    raise errors.ConfigError("--workdir is required: the directory for the run's checkpoints, "
                             "logs and results, e.g. --workdir=/tmp/sslx_byol.")
  catalog.check_config_arg(config_arg)
  if not fields:
    return
  try:
    config = load_config(config_arg)
  except errors.ConfigError:
    raise
  except Exception:  # pylint: disable=broad-except  (let config_flags report its own errors)
    return
  found = problems(config, fields)
  if found:
    raise errors.ConfigError("\n".join(found) if len(found) > 1 else found[0])

