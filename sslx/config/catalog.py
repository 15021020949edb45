"""The configs a user can run: their files, presets, jobs and one-line descriptions.

`python main.py --help` prints this catalog (sslx/jobs/usage.py); `check_config_arg` turns a
misspelt `--config=configs/byoll.py` or preset (`configs/byol.py:cifar1O`)
into one line with a did-you-mean, before anything else runs. A config file
names its presets in a module-level `PRESETS` tuple (the first is the
default) and, where it takes them, `VERSIONS` (MoCo's 'v2' / 'v3', combined
with a preset as 'cifar10,v3').
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import importlib.util
import inspect
import os
import re
import types

from sslx import errors


@dataclasses.dataclass(frozen=True)
class ConfigEntry:
  path: str  # as given on the command line, e.g. 'configs/byol.py'
  summary: str  # the docstring's first sentence
  presets: tuple[str, ...]
  default: str  # the preset without ':' ('' where that is none of them)
  versions: tuple[str, ...]
  job: str


def _load(path: str) -> types.ModuleType:
  spec = importlib.util.spec_from_file_location(
      f"_sslx_config_{os.path.basename(path)[:-3]}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _summary(module: types.ModuleType, width: int = 80) -> str:
  """The docstring's first paragraph without paper titles, cut to `width` characters."""
  doc = (module.__doc__ or "").strip()
  first = " ".join(doc.split("\n\n")[0].split())
  first = re.sub(r',\s*"[^"]*"', "", first).rstrip(".")
  return first if len(first) <= width else first[:width - 3].rstrip(" ,;:(") + "..."


def entries(directory: str = "configs") -> list[ConfigEntry]:
  """Every config file of `directory`, in name order."""
  found = []
  for path in sorted(glob.glob(os.path.join(directory, "*.py"))):
    if os.path.basename(path).startswith("_"):
      continue
    module = _load(path)
    presets = tuple(getattr(module, "PRESETS", ()))
    default = next(iter(inspect.signature(module.get_config).parameters.values())).default
    found.append(ConfigEntry(path=path, summary=_summary(module), presets=presets,
                             default=default if isinstance(default, str) else "",
                             versions=tuple(getattr(module, "VERSIONS", ())),
                             job=module.get_config().get("job", "pretrain")))
  return found


def _closest(word: str, choices, cutoff: float = 0.5) -> str:
  close = difflib.get_close_matches(word, list(choices), n=2, cutoff=cutoff)
  return f"; did you mean {' or '.join(map(repr, close))}?" if close else "."


def check_config_arg(config_arg: str) -> None:
  """ConfigError (one line) for a config file that does not exist or a preset it lacks."""
  path, _, argument = config_arg.partition(":")
  if not os.path.isfile(path):
    directory = os.path.dirname(path) or "."
    known = [os.path.join(directory, os.path.basename(p))
             for p in glob.glob(os.path.join(directory, "*.py"))] if os.path.isdir(
                 directory) else []
    hint = _closest(path, known) if known else "."
    valid = f" Configs in {directory}/: {', '.join(sorted(os.path.basename(p) for p in known))}." \
        if known else ""
    raise errors.ConfigError(f"--config={config_arg}: there is no config file {path!r}{hint}"
                             f"{valid} (python main.py --help lists them with their presets)")
  if not argument:
    return
  module = _load(path)
  presets = tuple(getattr(module, "PRESETS", ()))
  versions = tuple(getattr(module, "VERSIONS", ()))
  if not presets and not versions:
    return  # a config that takes free-form arguments (or none): its own checks apply
  for token in filter(None, (t.strip() for t in argument.split(","))):
    if token not in presets + versions:
      valid = ", ".join(presets + versions)
      raise errors.ConfigError(
          f"--config={config_arg}: {path} has no preset {token!r}"
          f"{_closest(token, presets + versions)} Valid: {valid}.")
