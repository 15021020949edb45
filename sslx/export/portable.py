"""A portable encoder: its variables as msgpack plus a JSON description, no sslx needed to read.

    DIR/encoder.msgpack   flax.serialization msgpack of {'params', 'batch_stats'}
                          (numpy float32 arrays, nested dicts, sslx's module names)
    DIR/encoder.json      architecture, input preprocessing, feature size and
                          where the weights came from

Reading it back needs only flax (or msgpack + numpy with flax's array
encoding): `flax.serialization.msgpack_restore(open(p, 'rb').read())`. The
JSON says how to feed the network: images resized to `input.image_size`,
scaled to [0, 1], normalised with `input.mean` / `input.std` per RGB channel,
NHWC.
"""

from __future__ import annotations

import json
import os
from typing import Any

import flax.serialization
import jax
import numpy as np

from sslx import errors

FORMAT = "sslx-encoder/1"
VARIABLES_FILE = "encoder.msgpack"
DESCRIPTION_FILE = "encoder.json"


def save(directory: str, variables: dict, description: dict[str, Any]) -> dict[str, str]:
  """Writes DIR/encoder.msgpack and DIR/encoder.json; returns their paths."""
  os.makedirs(directory, exist_ok=True)
  host = jax.tree.map(lambda a: np.asarray(a, np.float32), jax.device_get(variables))
  paths = {"variables": os.path.join(directory, VARIABLES_FILE),
           "description": os.path.join(directory, DESCRIPTION_FILE)}
  with open(paths["variables"], "wb") as f:
    f.write(flax.serialization.msgpack_serialize(_plain(host)))
  with open(paths["description"], "w") as f:
    json.dump({"format": FORMAT, **description}, f, indent=2)
  return paths


def is_portable(path: str) -> bool:
  return os.path.isfile(os.path.join(path, DESCRIPTION_FILE))


def load(directory: str) -> tuple[dict, dict[str, Any]]:
  """(variables, description) of a directory `save` wrote."""
  described = os.path.join(directory, DESCRIPTION_FILE)
  try:
    with open(described) as f:
      description = json.load(f)
    with open(os.path.join(directory, VARIABLES_FILE), "rb") as f:
      variables = flax.serialization.msgpack_restore(f.read())
  except (OSError, ValueError) as e:
    raise errors.CheckpointError(f"Cannot read the portable encoder in {directory}: {e}") from e
  if description.get("format") != FORMAT:
    raise errors.CheckpointError(f"{described} is format {description.get('format')!r}, not "
                                 f"{FORMAT!r}.")
  return variables, description


def _plain(tree):
  """Nested plain dicts (FrozenDicts and ConfigDicts serialise the same once plain)."""
  if hasattr(tree, "items"):
    return {str(k): _plain(v) for k, v in tree.items()}
  return tree
