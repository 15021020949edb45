"""Instance discrimination (NPID: memory bank, softmax and NCE) and exemplar CNN vs numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx import errors
from sslx.methods import exemplar, instance_discrimination as npid, memory_bank
from conftest import INFO, method_batch, step_rngs, tiny_config


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_bank_update_is_the_normalised_momentum_average_of_the_batch_rows():
  rng = np.random.default_rng(0)
  bank = _unit(rng.normal(size=(10, 4))).astype(np.float32)
  features = rng.normal(size=(3, 4)).astype(np.float32) * 3  # not normalised: the update does it
  index = np.array([7, 2, 5])
  out = np.asarray(memory_bank.momentum_update(jnp.asarray(bank), jnp.asarray(index),
                                               jnp.asarray(features), 0.5))
  expected = bank.copy()
  expected[index] = _unit(0.5 * bank[index] + 0.5 * _unit(features))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1, rtol=1e-5)
  assert np.array_equal(out[[0, 1, 3]], bank[[0, 1, 3]])  # other rows untouched


def test_full_softmax_and_nce_losses_match_numpy():
  rng = np.random.default_rng(1)
  n, d, b, m, t = 50, 8, 4, 6, 0.07
  bank = _unit(rng.normal(size=(n, d))).astype(np.float32)
  v = rng.normal(size=(b, d)).astype(np.float32)
  index = np.array([3, 17, 40, 0])
  loss, _ = npid.softmax_loss(jnp.asarray(v), jnp.asarray(bank), jnp.asarray(index), t)
  logits = _unit(v).astype(np.float64) @ bank.T / t
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  np.testing.assert_allclose(loss, -log_p[np.arange(b), index].mean(), rtol=1e-5)

  negatives = rng.integers(0, n, (b, m))
  z = npid.estimate_z(jnp.asarray(v), jnp.asarray(bank), jnp.asarray(index),
                      jnp.asarray(negatives), t)
  scores = np.exp(np.einsum("bd,bmd->bm", _unit(v),
                            bank[np.concatenate([index[:, None], negatives], 1)]) / t)
  np.testing.assert_allclose(z, n * scores.mean(), rtol=1e-4)
  loss, _ = npid.nce_loss(jnp.asarray(v), jnp.asarray(bank), jnp.asarray(index),
                          jnp.asarray(negatives), t, z)
  z = float(z)
  p_pos = np.exp((_unit(v) * bank[index]).sum(-1) / t) / z
  p_neg = np.exp(np.einsum("bd,bmd->bm", _unit(v), bank[negatives]) / t) / z
  pn = 1 / n  # uniform noise distribution
  h_pos = p_pos / (p_pos + m * pn)
  h_neg = p_neg / (p_neg + m * pn)
  ref = -np.mean(np.log(h_pos) + np.log(1 - h_neg).sum(-1))  # NPID eq. 7
  np.testing.assert_allclose(loss, ref, rtol=1e-4)


@pytest.mark.parametrize("loss_kind", ["softmax", "nce"])
def test_npid_step_updates_the_bank_rows_of_the_batch_and_fixes_z_once(loss_kind):
  config = tiny_config("instance_discrimination", batch_size=4)
  config.instance_discrimination.update(loss=loss_kind, num_negatives=16, dim=8)
  method = npid.Method(config, dataset=INFO)
  view = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3))
  params, bs, state = method.init(jax.random.PRNGKey(0), view)
  assert state["bank"].shape == (INFO.num_train_examples, 8)
  batch = method_batch({"v1": view})
  batch["index"] = jnp.array([5, 9, 1, 60])
  loss, out = method.loss(params, bs, state, batch, step_rngs(jax.random.PRNGKey(2)), 0)
  v = np.asarray(method.classify(params, bs, method.head, view)[1])
  expected = np.asarray(memory_bank.momentum_update(state["bank"], batch["index"],
                                                    jnp.asarray(v), 0.5))
  np.testing.assert_allclose(out.method_state["bank"], expected, rtol=1e-5, atol=1e-6)
  if loss_kind == "nce":
    z = float(out.method_state["nce_z"])
    assert z > 0
    _, out2 = method.loss(params, bs, out.method_state, batch, step_rngs(jax.random.PRNGKey(3)), 1)
    assert float(out2.method_state["nce_z"]) == z  # estimated once, then a constant
  # The gradient reaches the encoder through v only (the bank is data).
  grads = jax.grad(lambda p: method.loss(p, bs, state, batch, step_rngs(jax.random.PRNGKey(2)),
                                         0)[0])(params)
  assert any(np.abs(g).sum() > 0 for g in jax.tree.leaves(grads["encoder"]))


def test_methods_with_a_row_per_image_need_the_datasets_size():
  config = tiny_config("instance_discrimination")
  with pytest.raises(errors.ConfigError, match="num_train_examples of its pretraining data"):
    npid.Method(config).init(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 3)))


def test_exemplar_loss_is_cross_entropy_over_images_and_skips_those_beyond_the_cap():
  config = tiny_config("exemplar", batch_size=4)
  config.exemplar.update(num_classes=10, max_rotation_degrees=0.0)
  method = exemplar.Method(config, dataset=INFO)
  view = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3))
  params, bs, state = method.init(jax.random.PRNGKey(0), view)
  batch = method_batch({"v1": view})
  batch["index"] = jnp.array([3, 12, 9, 0])  # 12 is beyond the 10 classes
  loss, out = method.loss(params, bs, state, batch, step_rngs(jax.random.PRNGKey(2)), 0)
  logits = np.asarray(method.classify(params, bs, method.head, view)[1], np.float64)
  assert logits.shape == (4, 10)
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  keep = np.array([0, 2, 3])
  np.testing.assert_allclose(loss, -log_p[keep, np.array([3, 9, 0])].mean(), rtol=1e-5)
  assert exemplar.Method(tiny_config("exemplar"), dataset=INFO).num_classes == 64  # None: all


def test_exemplar_rotation_turns_images_by_the_drawn_angle():
  image = jnp.zeros((1, 9, 9, 1)).at[0, 4, 6, 0].set(1.0)  # a dot right of the centre
  np.testing.assert_array_equal(exemplar.rotate(jax.random.PRNGKey(0), image, 0.0), image)
  angles = jax.random.uniform(jax.random.PRNGKey(0), (1,), minval=-1.0, maxval=1.0) * 90
  out = np.asarray(exemplar.rotate(jax.random.PRNGKey(0), image, 90.0))[0, ..., 0]
  r, c = np.unravel_index(out.argmax(), out.shape)
  angle = np.deg2rad(float(angles[0]))
  # Counter-clockwise by `angle` in image coordinates (rows grow downwards).
  assert (r, c) == (round(4 - 2 * np.sin(angle)), round(4 + 2 * np.cos(angle)))
