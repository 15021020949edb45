"""Exports a checkpoint's encoder for use outside sslx.

    python main.py --config=configs/export.py --workdir=/tmp/sslx_byol_export \\
        --config.checkpoint=/tmp/sslx_byol

Writes into the workdir:
  encoder.msgpack + encoder.json    (format 'portable' or 'all') the variables
                                    and how to feed them; flax alone reads them
  resnet_torchvision.pt             (format 'torchvision' or 'all') a torch
                                    state_dict in torchvision's ResNet layout
and checks each file by loading it back and comparing its features on a few
test images with the checkpoint's (printed as the max abs difference).
"""

import os

import ml_collections
import numpy as np

from sslx import encoder as encoder_lib
from sslx import errors
from sslx.evaluation import transfer

FORMATS = ("portable", "torchvision", "all")
TORCH_FILE = "resnet_torchvision.pt"


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  if config.format not in FORMATS:
    raise errors.ConfigError(f"config.format={config.format!r}; valid: {', '.join(FORMATS)}.")
  if not config.checkpoint or config.checkpoint in (transfer.RANDOM, transfer.SCRATCH):
    raise errors.ConfigError("config.checkpoint must name a pretraining workdir, one of its "
                             "steps, an export or a .pt state_dict to export.")
  encoder = encoder_lib.load_encoder(config.checkpoint, config.checkpoint_step)
  transfer.check_workdir(workdir, encoder)  # beside, never into, the pretraining run
  rng = np.random.default_rng(0)
  probe = rng.integers(0, 256, (8, encoder.image_size, encoder.image_size, 3), np.uint8)
  reference = encoder(probe)
  written = {}
  if config.format in ("portable", "all"):
    paths = encoder.save_portable(workdir)
    again = encoder_lib.load_encoder(workdir)
    written["portable"] = dict(paths, max_abs_difference=float(np.abs(again(probe) -
                                                                       reference).max()))
  if config.format in ("torchvision", "all"):
    path = encoder.save_torchvision(os.path.join(workdir, TORCH_FILE))
    again = encoder_lib.load_encoder(path, image_size=encoder.image_size, mean=encoder.mean,
                                     std=encoder.std)
    written["torchvision"] = dict(path=path, max_abs_difference=float(
        np.abs(again(probe) - reference).max()))
  for fmt, info in written.items():
    files = ", ".join(v for k, v in info.items() if k != "max_abs_difference")
    print(f"exported {fmt}: {files} (reloaded: max abs feature difference "
          f"{info['max_abs_difference']:.1e})", flush=True)
  return {"source": encoder.source, "written": written}
