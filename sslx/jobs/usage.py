"""What `python main.py --help` and a bare `python main.py` print: the configs, presets and jobs."""

import os

from sslx.config import catalog
from sslx.jobs import JOBS, SUMMARIES


def help_text(directory: str = "configs", brief: bool = False) -> str:
  """What `python main.py --help` prints (`brief`: what a bare `python main.py` prints)."""
  usage = ("usage: python main.py --config=configs/NAME.py[:PRESET] --workdir=DIR "
           "[--config.FIELD=VALUE ...]")
  found = catalog.entries(directory)
  if brief:
    return "\n".join([
        usage,
        f"configs: {', '.join(os.path.basename(e.path) for e in found)}",
        "python main.py --help lists their presets and the jobs; for example:",
        "  python main.py --config=configs/byol.py --workdir=/tmp/sslx_byol"])
  lines = ["sslx: self-supervised visual representation learning and transfer in JAX/Flax.",
           "", usage, "", "Configs (configs/; the part after ':' picks a preset):"]
  width = max(len(os.path.basename(e.path)) for e in found)
  for e in found:
    lines.append(f"  {os.path.basename(e.path):<{width}}  {e.job:<11}  {e.summary}")
    if e.presets or e.versions:
      presets = ", ".join(f"{p} (default)" if p == e.default else p for p in e.presets)
      if e.presets and e.default not in e.presets:
        presets = f"none (the checkpoint's dataset, the default), {presets}"
      versions = (f"; versions {', '.join([f'{e.versions[0]} (default)', *e.versions[1:]])}"
                  f" (e.g. :{e.presets[-1] if e.presets else ''},{e.versions[-1]})"
                  if e.versions else "")
      lines.append(f"  {'':<{width}}  {'':<11}  presets: {presets}{versions}")
  lines += ["", "Jobs (config.job, set by each config):"]
  for name in JOBS:
    lines.append(f"  {name:<12} {SUMMARIES[name]}")
  lines += ["", "Examples:",
            "  python main.py --config=configs/byol.py --workdir=/tmp/sslx_byol",
            "  python main.py --config=configs/simclr.py:folder --workdir=/tmp/photos "
            "--config.data.dataset=folder:/path/to/photos",
            "  python main.py --config=configs/knn_eval.py --workdir=/tmp/eval_knn "
            "--config.checkpoint=/tmp/sslx_byol",
            "", "Every field is documented in sslx/config/defaults.py (pretraining) and "
            "sslx/config/transfer_defaults.py (the transfer jobs); docs/ has the rest. "
            "absl's own flags: --helpfull."]
  return "\n".join(lines)
