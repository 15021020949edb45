"""Self-supervised methods, one module each, chosen by `config.method`.

Every module defines `Method`, a subclass of `base.SSLMethod`. Adding a method
means adding its module here, its config in `configs/` and its tests; the
trainer does not change.
"""

import importlib
import pkgutil

from sslx import errors
from sslx.methods import base


def available() -> list[str]:
  return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base")


def get_method_class(config) -> type[base.SSLMethod]:
  """`sslx.methods.<config.method>.Method`, after checking the name and the config section."""
  name = config.method
  if name not in available():
    raise errors.ConfigError(
        f"Unknown method {name!r} (config.method); valid methods: {', '.join(available())}.")
  if name not in config:
    raise errors.ConfigError(
        f"config.method={name!r} needs the config section config.{name}, which this config "
        f"lacks; start from configs/{name}.py (--config=configs/{name}.py).")
  return importlib.import_module(f"sslx.methods.{name}").Method


def get_method(config) -> base.SSLMethod:
  """Instantiates `sslx.methods.<config.method>.Method(config)`."""
  return get_method_class(config)(config)
