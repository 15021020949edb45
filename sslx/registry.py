"""One registry style for every pluggable part: jobs, methods, backbones, optimizers.

A registry is an explicit table from the name a config uses to the object it
means, written as "module:attribute" so that nothing is imported until it is
asked for (a job never imports the methods it does not run). Only names in
the table exist: a helper module placed beside the methods is not a method.

    METHODS = Registry("method", "config.method", {
        "byol": "sslx.methods.byol:Method",
        ...
    })
    METHODS.get("byol")  # -> the class
    METHODS.get("byl")   # ConfigError: Unknown method 'byl' (config.method);
                         #   did you mean 'byol'? Valid: byol, moco, ...

Adding a part is one line in its package's table, next to its module.
"""

import difflib
import importlib
from typing import Any, Iterator

from sslx import errors


class Registry:
  """Names (as configs spell them) -> lazily imported objects."""

  def __init__(self, kind: str, field: str, entries: dict[str, str]):
    """`kind` names the part in messages, `field` the config field that chooses it."""
    for name, target in entries.items():
      if target.count(":") != 1:
        raise ValueError(f"Registry {kind}: {name!r} -> {target!r} is not 'module:attribute'.")
    self.kind, self.field = kind, field
    self._entries = dict(entries)

  def names(self) -> tuple[str, ...]:
    return tuple(self._entries)

  def __contains__(self, name: Any) -> bool:
    return isinstance(name, str) and name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def unknown_message(self, name: Any) -> str:
    close = difflib.get_close_matches(str(name), self.names(), n=2, cutoff=0.6)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else "."
    return (f"Unknown {self.kind} {name!r} ({self.field}){hint} Valid: "
            f"{', '.join(self.names())}.")

  def check(self, name: Any) -> None:
    if name not in self:
      raise errors.ConfigError(self.unknown_message(name))

  def get(self, name: Any) -> Any:
    """The registered object; ConfigError naming the valid names for an unknown one."""
    self.check(name)
    module, attribute = self._entries[name].split(":")
    return getattr(importlib.import_module(module), attribute)
