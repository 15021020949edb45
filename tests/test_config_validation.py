"""Config validation: types and ranges, every problem in one error, before anything is built."""

import importlib

import pytest

from sslx import config_validation
from sslx import errors
from sslx import methods
from sslx import pretrain
from tests.test_train import tiny_config

SHIPPED = [(m, p) for m in ("byol", "simclr", "moco", "rotnet")
           for p in ("mnist5k", "cifar10", "cifar100", "imagenet")]


@pytest.mark.parametrize("method, preset", SHIPPED)
def test_every_shipped_config_is_valid(method, preset):
  config = importlib.import_module(f"configs.{method}").get_config(preset)
  found = (config_validation.problems(config)
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
  assert not config_validation.image_size_problems(config)
  config.data.image_size = 31
  assert config_validation.image_size_problems(config)
