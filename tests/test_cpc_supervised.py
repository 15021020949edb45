"""CPC (row-causal context, InfoNCE vs numpy) and the supervised reference."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx import errors
from sslx.methods import cpc, supervised
from conftest import INFO, method_batch, step_rngs, tiny_config


def test_patch_grid_cuts_overlapping_patches_at_the_stride():
  images = jnp.arange(2 * 12 * 12, dtype=jnp.float32).reshape(2, 12, 12, 1)
  grid = np.asarray(cpc.patch_grid(images, 4, 2))
  assert grid.shape == (2, 5, 5, 4, 4, 1)
  np.testing.assert_array_equal(grid[1, 2, 3], np.asarray(images)[1, 4:8, 6:10])


def test_the_context_never_sees_the_rows_it_predicts():
  module = cpc.RowCausalContext(width=8, layers=3)
  z = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 5))
  params = module.init(jax.random.PRNGKey(1), z)
  base_out = np.asarray(module.apply(params, z))
  for row in range(1, 6):
    changed = z.at[:, row:].add(jax.random.normal(jax.random.PRNGKey(row), (2, 6 - row, 6, 5)))
    out = np.asarray(module.apply(params, changed))
    np.testing.assert_array_equal(out[:, :row], base_out[:, :row])  # rows above: unchanged
    assert not np.allclose(out[:, row], base_out[:, row])  # its own row: it does see
  # And the rows above do reach it (three layers of 3-row kernels: 6 rows back).
  changed = z.at[:, 0].add(1.0)
  assert not np.allclose(np.asarray(module.apply(params, changed))[:, 5], base_out[:, 5])


def _numpy_info_nce(predictions, targets, target_of, t):
  """Mean InfoNCE over the queries (b, i, j) whose target (b, *target_of(i, j)) is on the grid."""
  b, g, _, d = targets.shape
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  cands = unit(np.asarray(targets, np.float64).reshape(-1, d))
  terms = []
  for bi in range(b):
    for i in range(g):
      for j in range(g):
        ti, tj = target_of(i, j)
        if not (0 <= ti < g and 0 <= tj < g):
          continue
        scores = cands @ unit(np.asarray(predictions[bi, i, j], np.float64)) / t
        true = (bi * g + ti) * g + tj
        terms.append(-(scores[true] - np.log(np.exp(scores).sum())))
  return np.mean(terms)


def test_info_nce_matches_numpy_with_every_patch_of_the_batch_as_candidate():
  rng = np.random.default_rng(0)
  b, g, d, k, t = 2, 4, 6, 2, 0.1
  predictions = rng.normal(size=(b, g, g, d)).astype(np.float32)
  targets = rng.normal(size=(b, g, g, d)).astype(np.float32)
  loss, _ = cpc.info_nce(jnp.asarray(predictions), jnp.asarray(targets), k, t)
  reference = _numpy_info_nce(predictions, targets, lambda i, j: (i + k, j), t)
  np.testing.assert_allclose(loss, reference, rtol=1e-5)


# In image coordinates: which patch the context at (i, j) predicts k steps ahead,
# and how to turn a map read in that direction back to image order.
_TARGETS = {"top_down": lambda i, j, k: (i + k, j), "bottom_up": lambda i, j, k: (i - k, j),
            "left_right": lambda i, j, k: (i, j + k), "right_left": lambda i, j, k: (i, j - k)}
_BACK = {"top_down": lambda x: x, "bottom_up": lambda x: x[:, ::-1],
         "left_right": lambda x: np.swapaxes(x, 1, 2),
         "right_left": lambda x: np.swapaxes(x[:, ::-1], 1, 2)}


def _cpc_with(directions, stride=2):
  config = tiny_config("cpc")
  config.views.v1.crop_size = 16
  config.cpc.update(patch_size=8, patch_stride=stride, prediction_steps=2, context_dim=8,
                    directions=directions)  # stride 2: a 5x5 grid
  return config, cpc.Method(config)


def test_every_direction_predicts_its_own_way_in_one_infonce_mean():
  directions = tuple(cpc.DIRECTIONS)
  config, method = _cpc_with(directions)
  view = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
  params, bs, state = method.init(jax.random.PRNGKey(0), view)
  # Top-down keeps its parameter names (earlier checkpoints load); the others have their own.
  names = {"context", "predictors"} | {f"{kind}_{d}" for d in directions[1:]
                                       for kind in ("context", "predictors")}
  assert set(params) == names | {"encoder"}
  loss, out = method.loss(params, bs, state, method_batch({"v1": view}),
                          step_rngs(jax.random.PRNGKey(2)), 0)
  assert set(out.batch_stats) == names | {"encoder"}
  z, _ = method.embed_grid(params, bs, view)
  z = np.asarray(z)
  terms = []
  for direction in directions:
    context_name, predictors_name = cpc.parameter_names(direction)
    context = method.context.apply({"params": params[context_name]},
                                   jnp.asarray(cpc.DIRECTIONS[direction](z)))
    predictions = _BACK[direction](np.asarray(method.predictors.apply(
        {"params": params[predictors_name]}, context)))  # image order
    for k in (1, 2):
      terms.append(_numpy_info_nce(predictions[..., k - 1, :], z,
                                   lambda i, j, k=k, d=direction: _TARGETS[d](i, j, k),
                                   config.cpc.temperature))
  np.testing.assert_allclose(loss, np.mean(terms), rtol=1e-4)


@pytest.mark.parametrize("direction", ["bottom_up", "left_right", "right_left"])
def test_a_direction_never_sees_the_patches_it_predicts(direction):
  _, method = _cpc_with((direction,))
  z = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (2, 5, 5, 4)))
  params = method.context.init(jax.random.PRNGKey(1), jnp.asarray(z))
  context = lambda zz: _BACK[direction](np.asarray(method.context.apply(
      params, jnp.asarray(cpc.DIRECTIONS[direction](zz)))))
  reference = context(z)
  for step in range(1, 5):  # change everything `step` or more steps ahead of a line
    ahead = {"bottom_up": np.s_[:, :5 - step], "left_right": np.s_[:, :, step:],
             "right_left": np.s_[:, :, :5 - step]}[direction]
    behind = {"bottom_up": np.s_[:, 5 - step:], "left_right": np.s_[:, :, :step],
              "right_left": np.s_[:, :, 5 - step:]}[direction]
    changed = z.copy()
    changed[ahead] += 1.0
    np.testing.assert_array_equal(context(changed)[behind], reference[behind])
    assert not np.allclose(context(changed)[ahead], reference[ahead])


def test_cpc_v1_reads_top_down_only_under_the_names_it_always_had():
  config = tiny_config("cpc")
  assert tuple(config.cpc.directions) == ("top_down", "bottom_up")  # CPC v2's, the default
  config.views.v1.crop_size = 16
  config.cpc.update(patch_size=8, patch_stride=4, prediction_steps=2, directions=("top_down",))
  params, _, _ = cpc.Method(config).init(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 3)))
  assert set(params) == {"encoder", "context", "predictors"}


@pytest.mark.parametrize("directions", [(), ("top_down", "top_down"), ("upwards",)])
def test_cpc_rejects_directions_it_does_not_know(directions):
  config = tiny_config("cpc")
  config.cpc.directions = directions
  problems = cpc.Method.config_problems(config)
  assert any("config.cpc.directions" in p and "'bottom_up'" in p for p in problems), problems


def test_cpc_rejects_a_grid_too_small_to_predict_ahead():
  config = tiny_config("cpc")
  config.views.v1.crop_size = 16
  config.cpc.update(patch_size=8, patch_stride=8, prediction_steps=2)  # a 2x2 grid
  with pytest.raises(errors.ConfigError, match="2x2 grid"):
    cpc.Method(config)


def test_supervised_loss_is_cross_entropy_on_the_labels():
  config = tiny_config("supervised", batch_size=4)
  method = supervised.Method(config, dataset=INFO)
  view = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3))
  params, bs, state = method.init(jax.random.PRNGKey(0), view)
  labels = jnp.array([1, 7, 7, 0])
  loss, out = method.loss(params, bs, state, method_batch({"v1": view}, labels),
                          step_rngs(jax.random.PRNGKey(2)), 0)
  logits = np.asarray(method.classify(params, bs, method.head, view)[1], np.float64)
  assert logits.shape == (4, INFO.num_classes)
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  np.testing.assert_allclose(loss, -log_p[np.arange(4), np.asarray(labels)].mean(), rtol=1e-5)


def test_supervised_refuses_unlabelled_pretraining_data():
  stl = dataclasses.replace(INFO, name="stl10", pretrain_split="train+unlabelled")
  with pytest.raises(errors.ConfigError, match="holds unlabelled images"):
    supervised.Method(tiny_config("supervised"), dataset=stl)
  with pytest.raises(errors.ConfigError, match="num_classes"):
    supervised.Method(tiny_config("supervised"), dataset=dataclasses.replace(INFO, num_classes=None))
