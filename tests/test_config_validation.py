"""Config validation: types and ranges, every problem in one error, before anything is built."""

import importlib
import os
import subprocess
import sys

import pytest

from sslx import models
from sslx.config import validation as config_validation
from sslx import errors
from sslx import methods
from sslx.jobs import pretrain
from conftest import REPO, tiny_config
from sslx.config import overrides
from sslx.core import optim
from sslx.registry import Registry

METHODS = ("byol", "simclr", "moco", "rotnet", "relative_patch", "jigsaw", "context_encoder",
           "exemplar", "instance_discrimination", "cpc", "supervised")
SHIPPED = ([(m, p) for m in METHODS for p in ("mnist5k", "cifar10", "cifar100", "imagenet",
                                              "folder")]
           + [("colorization", p) for p in ("mnistm5k", "cifar10", "cifar100", "imagenet",
                                            "folder")])


@pytest.mark.parametrize("method, preset", SHIPPED)
def test_every_shipped_config_is_valid(method, preset):
  config = importlib.import_module(f"configs.{method}").get_config(preset)
  found = (config_validation.problems(config) + models.config_problems(config)
           + methods.get_method_class(config).config_problems(config))
  assert not found


def test_all_problems_are_reported_in_one_error_before_anything_is_built(tmp_path, monkeypatch):
  def must_not_run(*args, **kwargs):
    raise AssertionError("validation must come before the trainer and the data")
  monkeypatch.setattr(pretrain, "Trainer", must_not_run)
  monkeypatch.setattr(pretrain.data, "get_dataset_info", must_not_run)

  config = tiny_config(batch_size=12, num_devices=8)
  config.byol.tau_base = 1.5
  config.optimizer.base_learning_rate = -0.1
  config.optimizer.weight_decay = None
  config.views.v1.update(crop_area_min=0.9, crop_area_max=0.5, solarize_prob=1.2)
  config.views.v2.hue = 0.7
  config.model.stem = "imagenet"  # 16 px images: below its total stride of 32
  config.eval.knn_temperature = 0.0
  config.nonfinite.action = "ignore"
  with pytest.raises(errors.ConfigError) as info:
    pretrain.run(config, str(tmp_path / "run"))
  message = str(info.value)
  expected = [
      "config.byol.tau_base=1.5; it must be a number in [0, 1].",
      "config.optimizer.base_learning_rate=-0.1; it must be a number > 0.",
      "config.optimizer.weight_decay=None; it must be a number >= 0.",
      "config.views.v1.crop_area_min=0.9 is above config.views.v1.crop_area_max=0.5.",
      "config.views.v1.solarize_prob=1.2; it must be a number in [0, 1].",
      "config.views.v2.hue=0.7; it must be a number in [0, 0.5].",
      "config.data.image_size=16 is smaller than the total stride 32 of a ResNet with "
      "model.stem='imagenet'",
      "use model.stem='cifar' (total stride 8)",
      "config.eval.knn_temperature=0.0; it must be a number > 0.",
      "config.nonfinite.action='ignore'; it must be one of 'stop', 'skip'.",
      "config.batch_size=12 is not divisible by the number of devices (8)",
  ]
  for text in expected:
    assert text in message
  assert message.startswith(f"Invalid config ({len(expected) - 1} problems):")  # stem: one line
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("method, field, value, text", [
    ("simclr", "temperature", 0.0, "config.simclr.temperature=0.0; it must be a number > 0."),
    ("simclr", "projector_dim", 0, "config.simclr.projector_dim=0; it must be an integer > 0."),
    ("moco", "momentum", -0.1, "config.moco.momentum=-0.1; it must be a number in [0, 1]."),
    ("moco", "temperature", -1.0, "config.moco.temperature=-1.0; it must be a number > 0."),
    ("byol", "tau_base", 1.01, "config.byol.tau_base=1.01; it must be a number in [0, 1]."),
    ("context_encoder", "decoder_input", "pool",
     "config.context_encoder.decoder_input='pool'; it must be one of 'feature_map', 'pooled'."),
])
def test_method_fields_are_range_checked(method, field, value, text):
  config = importlib.import_module(f"configs.{method}").get_config()
  config[method][field] = value
  assert text in methods.get_method_class(config).config_problems(config)
  with pytest.raises(errors.ConfigError, match="must be"):
    methods.get_method(config)


def test_integer_fields_reject_floats_and_bools():
  # ConfigDict keeps a field's type on assignment; a config built from plain
  # dicts (or a field a config file adds) reaches the validator unchecked.
  found = config_validation.check_fields(
      {"log_every_steps": 2.5, "keep_checkpoints": True, "seed": "0"},
      config_validation.TOP_LEVEL)
  assert found == ["config.seed='0'; it must be an integer.",
                   "config.log_every_steps=2.5; it must be an integer > 0.",
                   "config.keep_checkpoints=True; it must be an integer > 0."]


def test_image_size_at_the_stride_is_accepted():
  config = tiny_config()
  config.model.stem = "imagenet"
  config.data.image_size = 32
  assert not models.config_problems(config)
  config.data.image_size = 31
  assert models.config_problems(config)


@pytest.mark.parametrize("flag, line", [
    ("--config.dataset=cifar10",
     "error: --config.dataset: config has no field 'dataset'; did you mean config.data.dataset?"),
    ("--config.data.datset=x",
     "error: --config.data.datset: config has no field 'data.datset'; did you mean "
     "config.data.dataset?"),
    ("--config.optimizer.lr=1",
     "error: --config.optimizer.lr: config has no field 'optimizer.lr'; did you mean "
     "config.optimizer.base_learning_rate or config.optimizer.min_learning_rate_ratio?"),
    ("--config.batch_size=abc",
     "error: --config.batch_size=abc: config.batch_size takes an integer, not 'abc'."),
])
def test_a_bad_override_is_one_line_and_exit_2(tmp_path, flag, line):
  result = subprocess.run(
      [sys.executable, "main.py", "--config=configs/byol.py", f"--workdir={tmp_path / 'w'}", flag],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 2
  assert result.stderr.strip() == line
  assert "Traceback" not in result.stderr and not (tmp_path / "w").exists()


def test_override_checks_accept_every_valid_form():
  config = importlib.import_module("configs.moco").get_config("v3")
  good = [("batch_size", "64"), ("views.v2.solarize_prob", "0.1"), ("eval.knn", "False"),
          ("moco.version", "v2"), ("eval.knn", None), ("eval.noknn", None),
          ("eval.max_train_examples", "100"), ("data.data_dir", "/tmp/x")]
  assert overrides.problems(config, good) == []
  bad = overrides.problems(config, [("moco.temprature", "0.1"), ("eval.knn", "maybe"),
                                    ("batch_size.x", "1")])
  assert bad[0].endswith("did you mean config.moco.temperature?")
  assert bad[1] == "--config.eval.knn=maybe: config.eval.knn takes True or False."
  assert "config.batch_size is a value, not a section" in bad[2]


@pytest.mark.parametrize("config_file, arg", [
    ("byol", None), ("simclr", None), ("moco", None), ("moco", "v3"), ("rotnet", None)])
def test_short_runs_shorten_a_longer_warmup(config_file, arg):
  config = importlib.import_module(f"configs.{config_file}").get_config(*(arg and [arg] or []))
  config.train_steps = 20
  assert config_validation.problems(config) == []
  steps_per_epoch = 4000 / config.batch_size
  configured = optim.configured_warmup_steps(config.optimizer.warmup_epochs, steps_per_epoch)
  used = optim.warmup_steps(config.optimizer, steps_per_epoch, 20)
  if configured >= 20:
    assert used == int(20 * optim.SHORT_RUN_WARMUP_FRACTION) == 2
    _, note = optim.fit_warmup(configured, 20, "config.optimizer.warmup_epochs=2.0")
    assert note == (f"config.optimizer.warmup_epochs=2.0 is {configured} steps, not fewer than "
                    "the run's 20: warming up for 2 steps (10% of the run) instead.")
  else:
    assert used == configured
  schedule = optim.learning_rate_schedule(config.optimizer, batch_size=config.batch_size,
                                          train_steps=20, steps_per_epoch=steps_per_epoch)
  peak = optim.scaled_learning_rate(config.optimizer, config.batch_size)
  assert float(schedule(used)) == pytest.approx(peak, rel=1e-5)  # warmup over, then decay
  assert float(schedule(19)) < peak


def test_registries_name_the_closest_valid_names():
  registry = Registry("method", "config.method", {"byol": "a:b", "simclr": "a:c"})
  with pytest.raises(errors.ConfigError) as info:
    registry.get("byl")
  assert str(info.value) == ("Unknown method 'byl' (config.method); did you mean 'byol'? "
                             "Valid: byol, simclr.")
  # Only listed modules are methods: base.py (and any helper beside the methods) is not.
  assert methods.available() == sorted(METHODS + ("colorization",))
  with pytest.raises(errors.ConfigError, match="Unknown method 'base'"):
    methods.get_method_class(tiny_config(method="base"))
  with pytest.raises(errors.ConfigError, match="did you mean 'adamw'"):
    optim.OPTIMIZERS.get("adam")
