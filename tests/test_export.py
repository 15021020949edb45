"""Encoders leaving sslx: torch state_dicts both ways, the portable format, load_encoder, export."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import sslx
from sslx import errors
from sslx import models
from sslx.export import portable
from sslx.export import torch_resnet
from conftest import REPO, subprocess_env

ARCHITECTURES = [("resnet10", 0.25, "cifar", 28), ("resnet18", 1.0, "cifar", 32),
                 ("resnet50", 0.125, "imagenet", 64)]


def _trained_like_variables(name, width, stem, size, seed=0, passes=20):
  """Variables with non-trivial BN statistics: running averages of real batch statistics."""
  model = {"name": name, "width": width, "stem": stem, "zero_init_residual": False}
  encoder = models.create_encoder(ml_collections.ConfigDict(model))
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.uniform(-2, 2, (8, size, size, 3)), jnp.float32)
  variables = encoder.init(jax.random.PRNGKey(seed), x, train=False)
  params = jax.tree.map(lambda p: p + 0.05 * jnp.asarray(rng.normal(size=p.shape), p.dtype),
                        variables["params"])  # BN scales/offsets away from 1/0
  stats = variables["batch_stats"]
  for _ in range(passes):  # momentum 0.9: the running stats approach the batch's
    _, updates = encoder.apply({"params": params, "batch_stats": stats}, x, train=True,
                               mutable=["batch_stats"])
    stats = updates["batch_stats"]
  host = jax.device_get({"params": params, "batch_stats": stats})
  return model, encoder, jax.tree.map(np.asarray, _plain(host)), np.asarray(x)


def _plain(tree):
  return {k: _plain(v) for k, v in tree.items()} if hasattr(tree, "items") else tree


@pytest.mark.parametrize("name, width, stem, size", ARCHITECTURES)
def test_state_dict_round_trip_is_exact_and_describes_the_architecture(name, width, stem, size):
  model, _, variables, _ = _trained_like_variables(name, width, stem, size, passes=1)
  state_dict = torch_resnet.to_state_dict(variables)
  assert state_dict["conv1.weight"].shape[1:] == (3, 7, 7) if stem == "imagenet" else (3, 3, 3)
  assert torch_resnet.describe_state_dict(state_dict) == model
  back, described = torch_resnet.from_state_dict(state_dict)
  assert described == model
  chex_equal = jax.tree.map(lambda a, b: np.array_equal(a, b), variables, back)
  assert all(jax.tree.leaves(chex_equal))
  assert jax.tree.structure(variables) == jax.tree.structure(back)


def test_state_dict_keys_are_torchvisions():
  _, _, variables, _ = _trained_like_variables("resnet50", 0.125, "imagenet", 64, passes=0)
  keys = set(torch_resnet.to_state_dict(variables))
  for key in ("conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight",
              "layer1.0.downsample.1.num_batches_tracked", "layer3.5.conv3.weight",
              "layer4.2.bn3.bias"):
    assert key in keys
  assert not any(k.startswith("fc.") for k in keys)


@pytest.mark.parametrize("change, message", [
    (lambda sd: sd.pop("layer2.0.bn1.running_mean"), "no layer2.0.bn1.running_mean"),
    (lambda sd: sd.update({"layer1.0.conv1.weight": np.zeros((2, 2, 3, 3), np.float32)}),
     "layer1.0.conv1.weight has shape"),
    (lambda sd: sd.update({"layer1.0.extra.weight": np.zeros(3, np.float32)}),
     "layers a resnet10 does not"),
    (lambda sd: sd.pop("conv1.weight"), "not a torchvision/timm ResNet"),
])
def test_a_wrong_state_dict_is_named(change, message):
  _, _, variables, _ = _trained_like_variables("resnet10", 0.25, "cifar", 28, passes=0)
  state_dict = torch_resnet.to_state_dict(variables)
  change(state_dict)
  with pytest.raises(errors.CheckpointError, match=message):
    torch_resnet.from_state_dict(state_dict)


@pytest.mark.parametrize("name, stem, size", [("resnet18", "cifar", 32),
                                              ("resnet50", "imagenet", 64)])
def test_torchvision_computes_the_same_features(name, stem, size, tmp_path):
  torch = pytest.importorskip("torch")
  pytest.importorskip("torchvision")
  model, encoder, variables, x = _trained_like_variables(name, 1.0, stem, size)
  path = str(tmp_path / "encoder.pt")
  torch_resnet.save(path, variables)
  net = torch_resnet.build_torchvision(model)
  # strict: every torchvision key (fc removed) is present and nothing else.
  net.load_state_dict(torch.load(path, weights_only=True), strict=True)
  with torch.no_grad():
    theirs = net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  ours = np.asarray(encoder.apply(variables, x, train=False).pooled)
  assert theirs.shape == ours.shape == (8, encoder.feature_dim)
  assert np.abs(ours).mean() > 0.1  # real activations, not a vanishing network
  # float32 rounding grows with depth (experiments/torchvision_parity.py):
  # ResNet-18 7e-6 (features up to 2.1); ResNet-50 at 64 px 2.0e-4 on features
  # up to 4.8 (4.8e-5 at 224 px).
  scale = 1.0 if name == "resnet18" else max(1.0, float(np.abs(ours).max()))
  assert np.abs(theirs - ours).max() <= 1e-4 * scale
  # And back: a torchvision ResNet's own state_dict (fc included) is a fine-tuning start.
  net.fc = torch.nn.Linear(encoder.feature_dim, 10)
  torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}},
             str(tmp_path / "wrapped.pt"))
  back, described = torch_resnet.load(str(tmp_path / "wrapped.pt"))
  assert described == model
  np.testing.assert_array_equal(back["params"]["stem_conv"]["kernel"],
                                variables["params"]["stem_conv"]["kernel"])


def test_torchvision_has_no_width_multiplier():
  pytest.importorskip("torch")
  pytest.importorskip("torchvision")
  with pytest.raises(errors.ConfigError, match="no width multiplier"):
    torch_resnet.build_torchvision({"name": "resnet10", "width": 0.25, "stem": "cifar"})


def test_portable_export_reads_back_with_flax_alone(tmp_path, pretrained):
  encoder = sslx.load_encoder(pretrained)
  paths = encoder.save_portable(str(tmp_path / "export"))
  description = json.load(open(paths["description"]))
  assert description["format"] == portable.FORMAT
  assert description["model"] == encoder.model and description["feature_dim"] == encoder.feature_dim
  assert description["input"]["image_size"] == 20
  # A fresh interpreter with only flax and numpy, no sslx import:
  script = ("import flax.serialization, numpy as np, sys; "
            f"v = flax.serialization.msgpack_restore(open({paths['variables']!r}, 'rb').read()); "
            "print(sorted(v), v['params']['stem_conv']['kernel'].shape)")
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"), cwd="/")
  assert out.returncode == 0, out.stderr[-2000:]
  stem = encoder.variables["params"]["stem_conv"]["kernel"].shape
  assert out.stdout.strip() == f"['batch_stats', 'params'] {tuple(stem)}"


def test_load_encoder_gives_features_maps_and_preprocessing(tmp_path, pretrained):
  encoder = sslx.load_encoder(pretrained)
  assert encoder.source["step"] == 2 and encoder.source["method"] == "byol"
  assert encoder.image_size == 20 and encoder.mean == (0.1307,) * 3
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (5, 20, 20, 3), np.uint8)  # the preset's size: no resize
  features = encoder(images, batch_size=2)  # batching must not change anything
  assert features.shape == (5, encoder.feature_dim) and features.dtype == np.float32
  # Against the flax module on hand-normalised input.
  x = (images / 255.0 - 0.1307) / 0.3081
  reference = encoder.module.apply(encoder.variables, jnp.asarray(x, jnp.float32), train=False)
  np.testing.assert_allclose(features, reference.pooled, atol=1e-5)
  maps = encoder.feature_maps(images)
  assert set(maps) == {"stem", "stage1", "stage2", "stage3", "stage4"}
  assert maps["stage4"].shape[:3] == (5, 3, 3)  # 20 -> 10 -> 5 -> 3
  # Grey [N, H, W, 1] and a single [H, W, 3] image are accepted; floats are [0, 1].
  np.testing.assert_allclose(encoder(images[..., :1]), encoder(np.repeat(images[..., :1], 3, -1)))
  np.testing.assert_allclose(encoder(images[0]), features[0], atol=1e-5)
  np.testing.assert_allclose(encoder(images / 255.0), features, atol=1e-5)
  with pytest.raises(errors.ConfigError, match=r"\[N, H, W, 3\]"):
    encoder(np.zeros((2, 28, 28, 4), np.uint8))
  with pytest.raises(errors.ConfigError, match="give a pretraining workdir"):
    sslx.load_encoder("random")
  # The same encoder from a step directory and from its portable export.
  again = sslx.load_encoder(os.path.join(pretrained, "checkpoints", "2"))
  np.testing.assert_allclose(again(images), features, atol=1e-6)
  encoder.save_portable(str(tmp_path / "export"))
  exported = sslx.load_encoder(str(tmp_path / "export"))
  assert exported.source["exported_from"].endswith("checkpoints/2")
  np.testing.assert_allclose(exported(images), features, atol=1e-6)


@pytest.mark.slow
def test_export_job_writes_checks_and_refuses_bad_input(tmp_path, pretrained):
  env = subprocess_env()

  def export(workdir, *flags):
    return subprocess.run([sys.executable, "main.py", "--config=configs/export.py",
                           f"--workdir={workdir}", *flags], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
  has_torch = subprocess.run([sys.executable, "-c", "import torch"]).returncode == 0
  out = export(tmp_path / "e", f"--config.checkpoint={pretrained}",
               f"--config.format={'all' if has_torch else 'portable'}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "exported portable:" in out.stdout and "max abs feature difference 0.0e+00" in out.stdout
  assert os.path.isfile(tmp_path / "e" / "encoder.msgpack")
  if has_torch:
    assert "exported torchvision:" in out.stdout
    assert os.path.isfile(tmp_path / "e" / "resnet_torchvision.pt")
  for flags, message in [(["--config.checkpoint=/nonexistent/run"], "/nonexistent/run"),
                         ([f"--config.checkpoint={pretrained}", "--config.format=onnx"],
                          "config.format='onnx'; valid: portable, torchvision, all"),
                         ([], "config.checkpoint must name")]:
    bad = export(tmp_path / "bad", *flags)
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert message in bad.stderr and "Traceback" not in bad.stderr


def test_a_torch_state_dict_is_a_fine_tuning_start(tmp_path, pretrained):
  """Exported to .pt and read back by the transfer jobs' loader: the same encoder."""
  pytest.importorskip("torch")
  from configs import finetune as finetune_config  # pylint: disable=import-outside-toplevel
  from sslx.evaluation import transfer  # pylint: disable=import-outside-toplevel
  path = sslx.load_encoder(pretrained).save_torchvision(str(tmp_path / "resnet.pt"))
  config = finetune_config.get_config()
  config.checkpoint = pretrained
  original = transfer.load_backbone(config)
  config.checkpoint = path
  loaded = transfer.load_backbone(config)
  assert loaded.model_config.to_dict() == original.model_config.to_dict()
  assert loaded.source["format"] == "torch state_dict" and loaded.source["step"] is None
  same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
                      dict(original.variables), loaded.variables)
  assert all(jax.tree.leaves(same))
  config.checkpoint_step = 3
  with pytest.raises(errors.ConfigError, match="one set of weights"):
    transfer.load_backbone(config)
