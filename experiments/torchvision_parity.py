r"""Max abs difference between sslx's and torchvision's features of one exported ResNet.

    python experiments/torchvision_parity.py                # the README's three rows
    python experiments/torchvision_parity.py --arch=resnet50:imagenet:224

Needs `pip install -e ".[torch]"`. Weights are random, with BatchNorm scales
and offsets moved off 1/0 and running statistics made by 20 train-mode passes
over the probe images (as in tests/test_export.py), so activations have
realistic scale. Prints, per architecture, the largest |difference| and the
largest |feature|, float32 on CPU.
"""

import argparse

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import torch

from sslx import models
from sslx.export import torch_resnet

DEFAULT = ("resnet18:cifar:32", "resnet50:imagenet:64", "resnet50:imagenet:224")


def parity(name: str, stem: str, size: int, images: int = 8, passes: int = 20, seed: int = 0):
  model = {"name": name, "width": 1.0, "stem": stem, "zero_init_residual": False}
  encoder = models.create_encoder(ml_collections.ConfigDict(model))
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.uniform(-2, 2, (images, size, size, 3)), jnp.float32)
  variables = encoder.init(jax.random.PRNGKey(seed), x, train=False)
  params = jax.tree.map(lambda p: p + 0.05 * jnp.asarray(rng.normal(size=p.shape), p.dtype),
                        variables["params"])
  stats = variables["batch_stats"]
  for _ in range(passes):
    _, updates = encoder.apply({"params": params, "batch_stats": stats}, x, train=True,
                               mutable=["batch_stats"])
    stats = updates["batch_stats"]
  host = jax.tree.map(np.asarray, jax.device_get({"params": params, "batch_stats": stats}))
  ours = np.asarray(encoder.apply(host, x, train=False).pooled)
  net = torch_resnet.build_torchvision(model)
  net.load_state_dict({k: torch.from_numpy(np.array(v))
                       for k, v in torch_resnet.to_state_dict(host).items()}, strict=True)
  with torch.no_grad():
    theirs = net(torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2)).numpy()
  return float(np.abs(theirs - ours).max()), float(np.abs(ours).max())


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--arch", action="append", help="NAME:STEM:SIZE (repeatable)")
  args = parser.parse_args()
  for arch in args.arch or DEFAULT:
    name, stem, size = arch.split(":")
    diff, scale = parity(name, stem, int(size))
    print(f"{name} {stem} stem {size} px: max abs difference {diff:.2g}, "
          f"max |feature| {scale:.2g}", flush=True)


if __name__ == "__main__":
  main()
