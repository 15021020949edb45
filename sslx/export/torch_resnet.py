"""sslx ResNet variables <-> PyTorch (torchvision / timm) ResNet state_dicts.

sslx's ResNet follows torchvision's layout one-to-one (sslx/models/resnet.py):
bias-free convolutions each followed by BatchNorm (eps 1e-5), v1.5
bottlenecks, symmetric padding, a 1x1 conv + BN shortcut where a block changes
shape. So the conversion is a renaming plus a kernel transpose:

  sslx (flax)                              torch
  stem_conv/kernel  [kh, kw, in, out]      conv1.weight  [out, in, kh, kw]
  stem_bn/{scale, bias, mean, var}         bn1.{weight, bias, running_mean, running_var}
  stage{i}_block{j}/conv{k}, bn{k}         layer{i}.{j}.conv{k}, bn{k}
  stage{i}_block{j}/shortcut_conv, _bn     layer{i}.{j}.downsample.0, downsample.1

timm's ResNets use the same names, so their state_dicts load the same way.
A state_dict's own shapes say which ResNet it is (blocks per stage, basic or
bottleneck, stem, width), so loading needs no description.

The CIFAR stem (3x3 stride-1 conv, no max-pool) is the usual torchvision
modification: `conv1 = Conv2d(3, 64, 3, 1, 1, bias=False)` and
`maxpool = Identity()`, as `build_torchvision` does. Torch is imported only by
the functions that read, write or build torch objects.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sslx import errors
from sslx import models
from sslx.models import resnet

# torch BatchNorm field <- flax BatchNorm field (params: scale/bias, batch_stats: mean/var).
_BN_FIELDS = (("weight", "params", "scale"), ("bias", "params", "bias"),
              ("running_mean", "batch_stats", "mean"), ("running_var", "batch_stats", "var"))
_STAGE_SIZES = {tuple(fn.keywords["stage_sizes"]) + (fn.keywords["block"].expansion,): name
                for name, fn in resnet.VARIANTS.items()}


def _torch_name(flax_module: str) -> str:
  """'stem_conv' -> 'conv1', 'stage2_block0' -> 'layer2.0', 'shortcut_bn' -> 'downsample.1'."""
  if flax_module == "stem_conv":
    return "conv1"
  if flax_module == "stem_bn":
    return "bn1"
  match = re.fullmatch(r"stage(\d)_block(\d+)", flax_module)
  if match:
    return f"layer{match.group(1)}.{match.group(2)}"
  return {"shortcut_conv": "downsample.0", "shortcut_bn": "downsample.1"}.get(flax_module,
                                                                             flax_module)


def to_state_dict(variables: dict) -> dict[str, np.ndarray]:
  """{'params', 'batch_stats'} of an sslx ResNet -> torch state_dict arrays (numpy, float32).

  Keys and shapes are torchvision's (without `fc`, which the encoder lacks);
  `num_batches_tracked` is included as torch writes it, so the result loads
  with `load_state_dict(strict=True)` into a ResNet whose fc is removed.
  """
  out = {}

  def visit(params, stats, prefix):
    for name, sub in params.items():
      torch_prefix = prefix + _torch_name(name)
      if "kernel" in sub:  # a convolution
        out[f"{torch_prefix}.weight"] = np.transpose(np.asarray(sub["kernel"], np.float32),
                                                     (3, 2, 0, 1))
      elif "scale" in sub:  # a BatchNorm
        tree = {"params": sub, "batch_stats": stats[name]}
        for torch_field, collection, flax_field in _BN_FIELDS:
          out[f"{torch_prefix}.{torch_field}"] = np.asarray(tree[collection][flax_field],
                                                            np.float32)
        out[f"{torch_prefix}.num_batches_tracked"] = np.zeros((), np.int64)
      else:
        visit(sub, stats.get(name, {}), torch_prefix + ".")
  visit(variables["params"], variables["batch_stats"], "")
  return out


def describe_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
  """The sslx model fields (name, width, stem, zero_init_residual) of a torch ResNet state_dict."""
  if "conv1.weight" not in state_dict or "layer1.0.conv1.weight" not in state_dict:
    raise errors.CheckpointError(
        "This state_dict is not a torchvision/timm ResNet: it has no conv1.weight or "
        f"layer1.0.conv1.weight (its first keys: {', '.join(list(state_dict)[:4])}).")
  blocks = []
  for stage in range(1, 5):
    indices = {int(m.group(1)) for k in state_dict
               if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
    blocks.append(len(indices))
  expansion = 4 if "layer1.0.conv3.weight" in state_dict else 1
  name = _STAGE_SIZES.get((*blocks, expansion))
  if name is None:
    raise errors.CheckpointError(
        f"A ResNet with {blocks} blocks per stage and {'bottleneck' if expansion == 4 else 'basic'}"
        f" blocks is not one of sslx's: {', '.join(resnet.VARIANTS)}.")
  stem_kernel = tuple(np.shape(state_dict["conv1.weight"]))
  stem = {7: "imagenet", 3: "cifar"}.get(stem_kernel[-1])
  if stem is None or stem_kernel[1] != 3:
    raise errors.CheckpointError(f"conv1.weight has shape {stem_kernel}; sslx's stems take RGB "
                                 "and are 7x7 (imagenet) or 3x3 (cifar).")
  width = stem_kernel[0] / 64
  return {"name": name, "width": width, "stem": stem, "zero_init_residual": False}


def from_state_dict(state_dict: dict[str, Any]) -> tuple[dict, dict[str, Any]]:
  """A torch ResNet state_dict -> (sslx {'params', 'batch_stats'}, model fields).

  Tensors or arrays are accepted; `fc.*` (a classifier) is dropped. The tree
  is checked against what sslx's ResNet of the described architecture builds,
  so a state_dict with missing or extra layers fails here with its keys named.
  """
  arrays = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
            for k, v in state_dict.items()}
  model = describe_state_dict(arrays)
  template = _template(model)
  variables: dict[str, dict] = {"params": {}, "batch_stats": {}}
  used = set()

  def put(collection, path, value):
    node = variables[collection]
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value

  for path, leaf in _leaves(template["params"]):
    module = ".".join(_torch_name(p) for p in path[:-1])
    field = path[-1]
    if field == "kernel":
      key = f"{module}.weight"
      value = np.transpose(_get(arrays, key), (2, 3, 1, 0))
    else:
      torch_field = {"scale": "weight", "bias": "bias"}[field]
      key = f"{module}.{torch_field}"
      value = _get(arrays, key)
    _check_shape(key, value, leaf.shape)
    put("params", path, value.astype(np.float32))
    used.add(key)
  for path, leaf in _leaves(template["batch_stats"]):
    module = ".".join(_torch_name(p) for p in path[:-1])
    key = f"{module}.{ {'mean': 'running_mean', 'var': 'running_var'}[path[-1]]}"
    value = _get(arrays, key)
    _check_shape(key, value, leaf.shape)
    put("batch_stats", path, value.astype(np.float32))
    used.add(key)
  extra = sorted(k for k in arrays if k not in used and not k.startswith("fc.")
                 and not k.endswith("num_batches_tracked"))
  if extra:
    raise errors.CheckpointError(f"The state_dict has layers a {model['name']} does not: "
                                 f"{', '.join(extra[:5])}.")
  return variables, model


def _template(model: dict[str, Any]):
  encoder = models.create_encoder(ml_collections.ConfigDict(model))
  size = 4 * resnet.total_stride(model["stem"])
  return jax.eval_shape(lambda: encoder.init(jax.random.key(0),
                                             jnp.zeros((1, size, size, 3)), train=False))


def _leaves(tree, prefix=()):
  for key, value in tree.items():
    if isinstance(value, dict) or hasattr(value, "items"):
      yield from _leaves(value, prefix + (key,))
    else:
      yield prefix + (key,), value


def _get(arrays, key):
  if key not in arrays:
    raise errors.CheckpointError(f"The state_dict has no {key}: it is not a complete ResNet.")
  return arrays[key]


def _check_shape(key, value, shape):
  if tuple(value.shape) != tuple(shape):
    raise errors.CheckpointError(f"{key} has shape {tuple(value.shape)}, expected "
                                 f"{tuple(shape)} for this ResNet.")


def save(path: str, variables: dict) -> None:
  """Writes the encoder as a torch state_dict (`torch.save`, a .pt file)."""
  torch = _import_torch()
  tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in to_state_dict(
      variables).items()}
  torch.save(tensors, path)


def load(path: str) -> tuple[dict, dict[str, Any]]:
  """(sslx variables, model fields) of a .pt/.pth ResNet state_dict (torchvision or timm).

  A checkpoint that wraps its state_dict ({'state_dict': ...} or
  {'model': ...}, as training scripts often save) is unwrapped.
  """
  torch = _import_torch()
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except (OSError, RuntimeError, ValueError) as e:
    raise errors.CheckpointError(f"Cannot read {path} as a torch state_dict: {e}") from e
  for key in ("state_dict", "model"):
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
      obj = obj[key]
  if not isinstance(obj, dict):
    raise errors.CheckpointError(f"{path} holds a {type(obj).__name__}, not a state_dict.")
  # DistributedDataParallel and torch.compile prefix every key.
  obj = {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in obj.items()}
  return from_state_dict(obj)


def build_torchvision(model: dict[str, Any]):
  """A torchvision ResNet of the sslx architecture `model`, with fc = Identity (eval mode).

  Its forward pass returns the pooled feature, like sslx's encoder. Width
  must be 1: torchvision's ResNet has no channel multiplier.
  """
  _import_torch()
  import torch  # pylint: disable=import-outside-toplevel
  tv_resnet = import_torchvision_resnet()
  if float(model["width"]) != 1.0:
    raise errors.ConfigError(
        f"torchvision's ResNet has no width multiplier; this encoder has width {model['width']}. "
        "Its state_dict (torch_resnet.save) still has torchvision's names and layout.")
  fn = resnet.VARIANTS[model["name"]].keywords
  block = tv_resnet.Bottleneck if fn["block"].expansion == 4 else tv_resnet.BasicBlock
  net = tv_resnet.ResNet(block, list(fn["stage_sizes"]))
  if model["stem"] == "cifar":
    net.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = torch.nn.Identity()
  net.fc = torch.nn.Identity()
  return net.eval()


def import_torchvision_resnet():
  """torchvision.models.resnet, even where torchvision's compiled ops cannot load.

  PyPI's torchvision wheels are built against CUDA builds of torch; beside a
  CPU-only torch their C++ ops (nms, roi_align) fail to register and
  `import torchvision` raises. The model definitions are pure Python and need
  none of them, so then the package is entered without running its __init__.
  """
  try:
    from torchvision.models import resnet as tv_resnet  # pylint: disable=import-outside-toplevel
    return tv_resnet
  except ImportError as e:
    raise errors.ConfigError("torchvision is not installed: pip install torchvision") from e
  except RuntimeError:
    import importlib.util  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel
    import types  # pylint: disable=import-outside-toplevel
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
      del sys.modules[name]
    spec = importlib.util.find_spec("torchvision")
    package = types.ModuleType("torchvision")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["torchvision"] = package
    from torchvision.models import resnet as tv_resnet  # pylint: disable=import-outside-toplevel
    return tv_resnet


def _import_torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise errors.ConfigError(
        "Reading or writing torch state_dicts needs PyTorch: pip install -e '.[torch]'") from e
  return torch
