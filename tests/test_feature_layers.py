"""Frozen features from any layer: grid pooling against numpy, the embed function, the checks."""

import math

import ml_collections
import numpy as np
import pytest

from configs import byol as byol_config
from configs import finetune as finetune_config
from sslx import errors
from sslx import models
from sslx.config import validation
from sslx.data import augment
from sslx.data.info import Preprocessing
from sslx.evaluation import features
from sslx.jobs import finetune


def _numpy_adaptive_average(x, grid):
  """[B, H, W, C] -> [B, grid, grid, C], PyTorch AdaptiveAvgPool2d's rule: output cell i of
  an axis of size S averages input rows floor(i*S/grid) .. ceil((i+1)*S/grid) - 1."""
  b, h, w, c = x.shape
  out = np.zeros((b, grid, grid, c))
  for i in range(grid):
    r0, r1 = math.floor(i * h / grid), math.ceil((i + 1) * h / grid)
    for j in range(grid):
      c0, c1 = math.floor(j * w / grid), math.ceil((j + 1) * w / grid)
      out[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
  return out


@pytest.mark.parametrize("shape,grid", [((2, 5, 5, 3), 2), ((2, 3, 3, 4), 2), ((1, 4, 6, 2), 3),
                                        ((3, 7, 7, 1), 1), ((1, 2, 2, 5), 2)])
def test_grid_pool_matches_numpy_adaptive_average_pooling(shape, grid):
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  got = np.asarray(features.grid_pool(x, grid))
  expected = _numpy_adaptive_average(x, grid).reshape(shape[0], -1)  # row-major cells, C last
  assert got.shape == (shape[0], grid * grid * shape[-1])
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_overlapping_cells_share_the_middle_row():
  # 5 rows in 2 cells: rows 0-2 and 2-4, so row 2 counts in both.
  x = np.zeros((1, 5, 1, 1), np.float32)
  x[0, 2] = 6.0
  np.testing.assert_allclose(np.asarray(features.grid_pool(x, 2)).reshape(2, 2)[:, 0], [2.0, 2.0])


@pytest.fixture(scope="module")
def tiny_encoder():
  config = ml_collections.ConfigDict(dict(name="resnet10", width=0.125, stem="cifar"))
  encoder = models.create_encoder(config)
  images = np.random.default_rng(1).integers(0, 256, (4, 20, 20, 3), dtype=np.uint8)
  variables = models.init_variables(encoder, 0, np.zeros((1, 20, 20, 3), np.float32))
  return encoder, variables, images


def test_embed_fn_reads_the_named_map_grid_pooled(tiny_encoder):
  encoder, variables, images = tiny_encoder
  mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
  prep = Preprocessing(image_size=20, mean=mean, std=std)
  out = encoder.apply(variables, augment.normalize(augment.to_float01(images), mean, std,
                                                   "float32"), train=False)
  stage3 = np.asarray(out.feature_maps["stage3"])
  assert stage3.shape[1:3] == (5, 5)  # 20 px through two strided stages
  got = features.make_embed_fn(encoder, prep, layer="stage3", grid=2)(variables, images)
  np.testing.assert_allclose(np.asarray(got),
                             _numpy_adaptive_average(stage3, 2).reshape(4, -1), rtol=1e-5,
                             atol=1e-6)
  pooled = features.make_embed_fn(encoder, prep)(variables, images)
  np.testing.assert_allclose(np.asarray(pooled), np.asarray(out.pooled), rtol=1e-5, atol=1e-6)
  # The last map pooled over one cell is the pooled representation.
  last = features.make_embed_fn(encoder, prep, layer="stage4", grid=1)(variables, images)
  np.testing.assert_allclose(np.asarray(last), np.asarray(pooled), rtol=1e-5, atol=1e-6)


def test_feature_layer_problems_name_what_is_valid():
  names = ("stem", "stage1", "stage2", "stage3", "stage4")
  assert validation.feature_layer_problems(None, 1, names) == []
  assert validation.feature_layer_problems("stage2", 3, names) == []
  (problem,) = validation.feature_layer_problems("stage5", 1, names)
  assert "'stage5'" in problem and "stem, stage1, stage2, stage3, stage4" in problem
  (problem,) = validation.feature_layer_problems("stage3", 0, names)
  assert "feature_grid=0" in problem and "positive integer" in problem
  (problem,) = validation.feature_layer_problems(None, 2, names)
  assert "needs config.eval.feature_layer" in problem


def test_pretraining_config_checks_the_layer_against_its_backbone():
  config = byol_config.get_config()
  assert not [p for p in models.config_problems(config) if "feature" in p]
  config.eval.feature_layer = "stage_3"
  (problem,) = [p for p in models.config_problems(config) if "feature_layer" in p]
  assert "'stage_3'" in problem and "stage3" in problem


def test_finetuning_refuses_a_feature_layer():
  config = finetune_config.get_config()
  config.eval.feature_layer = "stage3"
  with pytest.raises(errors.ConfigError, match="fine-tuning trains its head on the encoder's pooled"):
    finetune.validate(config)
