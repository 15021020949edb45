"""Self-supervised methods, one module each, chosen by `config.method`.

Every method module defines `Method`, a subclass of `base.SSLMethod` (the
contract is in base.py). Adding a method means adding its module here and its
line in METHODS, its config in `configs/` and its tests; the trainer does not
change. Helper modules in this package are not methods unless listed.
"""

from sslx import errors
from sslx.methods import base
from sslx.registry import Registry

METHODS = Registry("method", "config.method", {
    "byol": "sslx.methods.byol:Method",
    "colorization": "sslx.methods.colorization:Method",
    "context_encoder": "sslx.methods.context_encoder:Method",
    "cpc": "sslx.methods.cpc:Method",
    "exemplar": "sslx.methods.exemplar:Method",
    "instance_discrimination": "sslx.methods.instance_discrimination:Method",
    "jigsaw": "sslx.methods.jigsaw:Method",
    "moco": "sslx.methods.moco:Method",
    "relative_patch": "sslx.methods.relative_patch:Method",
    "rotnet": "sslx.methods.rotnet:Method",
    "simclr": "sslx.methods.simclr:Method",
    "supervised": "sslx.methods.supervised:Method",
})


def available() -> list[str]:
  return sorted(METHODS.names())


def get_method_class(config) -> type[base.SSLMethod]:
  """The `Method` class of `config.method`, after checking the name and the config section."""
  name = config.method
  METHODS.check(name)
  if name not in config:
    raise errors.ConfigError(
        f"config.method={name!r} needs the config section config.{name}, which this config "
        f"lacks; start from configs/{name}.py (--config=configs/{name}.py).")
  return METHODS.get(name)


def get_method(config, dataset=None) -> base.SSLMethod:
  """Instantiates `sslx.methods.<config.method>.Method(config)` for pretraining on `dataset`
  (a DatasetInfo; None: unknown)."""
  return get_method_class(config)(config, dataset=dataset)
