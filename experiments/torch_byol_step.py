r"""A straightforward PyTorch (eager) BYOL train step, for comparison with sslx's.

  pip install -e ".[torch]"
  python experiments/torch_byol_step.py --batch_size=256 --threads=2

The same network and step as `configs/byol.py:cifar10` measured by
`experiments/benchmark.py --what=step`: ResNet-18 with the CIFAR stem (3x3
stride-1 convolution, no max-pool), 32x32 inputs, two views, projector and
predictor MLPs 512-4096-256 with BatchNorm, a target network updated by EMA,
the symmetric BYOL loss, SGD with momentum on the online network, float32,
NCHW (PyTorch's default layout). The inputs are random tensors already
augmented (sslx's step also runs its photometric augmentation, a few
milliseconds of a multi-second step on this CPU). Prints images/s after
warm-up as one JSON line. torch is an optional extra, never needed by sslx.
`experiments/benchmark.py --what=step,torch` runs this step in the same
process as sslx's step, right after it, so both see the same machine.
"""

import argparse
import copy
import json
import time

import torch
from torch import nn
import torch.nn.functional as F


class BasicBlock(nn.Module):

  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.shortcut = nn.Sequential()
    if stride != 1 or cin != cout:
      self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                    nn.BatchNorm2d(cout))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def resnet18_cifar():
  layers = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
  cin = 64
  for i, cout in enumerate((64, 128, 256, 512)):
    for j in range(2):
      layers.append(BasicBlock(cin, cout, 2 if i > 0 and j == 0 else 1))
      cin = cout
  layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
  return nn.Sequential(*layers)


def mlp(cin, hidden, cout):
  return nn.Sequential(nn.Linear(cin, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
                       nn.Linear(hidden, cout))


def make_step(batch_size: int, channels_last: bool = False):
  """A BYOL train step on fixed random views; each call runs one and returns the loss."""
  torch.manual_seed(0)
  online = nn.ModuleDict({"encoder": resnet18_cifar(), "projector": mlp(512, 4096, 256)})
  predictor = mlp(256, 4096, 256)
  target = copy.deepcopy(online)
  for p in target.parameters():
    p.requires_grad_(False)
  params = list(online.parameters()) + list(predictor.parameters())
  opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-5)
  memory_format = torch.channels_last if channels_last else torch.contiguous_format
  for m in (online, target, predictor):
    m.to(memory_format=memory_format)
  views = [torch.randn(batch_size, 3, 32, 32).to(memory_format=memory_format)
           for _ in range(2)]

  def byol_loss(p, z):
    return 2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1).mean()

  def step():
    online_out = [predictor(online["projector"](online["encoder"](v))) for v in views]
    with torch.no_grad():
      target_out = [target["projector"](target["encoder"](v)) for v in views]
    loss = byol_loss(online_out[0], target_out[1]) + byol_loss(online_out[1], target_out[0])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
      for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(0.99).add_(o, alpha=0.01)
    return float(loss.detach())

  return step


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--channels_last", action="store_true")
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  step = make_step(args.batch_size, args.channels_last)
  for _ in range(args.warmup):
    step()
  start = time.perf_counter()
  for _ in range(args.steps):
    step()
  elapsed = time.perf_counter() - start
  print(json.dumps({
      "what": "torch_eager_step", "images_per_sec": round(args.steps * args.batch_size / elapsed, 1),
      "step_ms": round(elapsed / args.steps * 1e3, 1), "batch_size": args.batch_size,
      "threads": args.threads, "channels_last": args.channels_last,
      "torch": torch.__version__}))


if __name__ == "__main__":
  main()
