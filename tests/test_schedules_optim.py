"""Learning-rate and EMA schedules and the LARS masks against numpy references."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from sslx.core import optim
from sslx.methods import base
from sslx.core import schedules


def _opt_config(**kw):
  c = ml_collections.ConfigDict(dict(
      name="lars", base_learning_rate=0.2, weight_decay=1.5e-6, momentum=0.9,
      trust_coefficient=0.001, warmup_epochs=10.0, min_learning_rate_ratio=0.0))
  c.update(kw)
  return c


def test_learning_rate_warmup_then_cosine_matches_formula():
  batch, total, steps_per_epoch = 4096, 1000, 20.0
  schedule = optim.learning_rate_schedule(_opt_config(), batch_size=batch, train_steps=total,
                                          steps_per_epoch=steps_per_epoch)
  peak, warmup = 0.2 * batch / 256, 200
  for k in [0, 1, 100, 199, 200, 201, 500, 999, 1000]:
    if k < warmup:
      expected = peak * k / warmup
    else:
      expected = 0.5 * peak * (1 + np.cos(np.pi * (k - warmup) / (total - warmup)))
    np.testing.assert_allclose(float(schedule(k)), expected, rtol=1e-5, atol=1e-7)


def test_learning_rate_without_warmup_is_cosine_from_the_peak():
  batch, total, ratio = 512, 300, 0.1
  schedule = optim.learning_rate_schedule(
      _opt_config(warmup_epochs=0.0, min_learning_rate_ratio=ratio), batch_size=batch,
      train_steps=total, steps_per_epoch=10.0)
  peak = 0.2 * batch / 256
  for k in [0, 1, 150, 299, 300]:
    expected = peak * (ratio + (1 - ratio) * 0.5 * (1 + np.cos(np.pi * k / total)))
    np.testing.assert_allclose(float(schedule(k)), expected, rtol=1e-5, atol=1e-7)


def test_byol_ema_rate_matches_paper_formula():
  total, base = 777, 0.996
  for k in [0, 1, 100, 388, 776, 777]:
    expected = 1 - (1 - base) * (np.cos(np.pi * k / total) + 1) / 2
    np.testing.assert_allclose(float(schedules.cosine_ema_rate(k, total, base)), expected,
                               rtol=0, atol=1e-7)
  assert float(schedules.cosine_ema_rate(0, total, base)) == pytest.approx(base)
  assert float(schedules.cosine_ema_rate(total, total, base)) == pytest.approx(1.0)


def test_the_ema_update_is_optaxs_incremental_update_as_byol_writes_it():
  # target <- tau target + (1 - tau) online (BYOL eq. 1), leaf by leaf, with optax's
  # incremental_update(new, old, step_size = 1 - tau), as BYOL's and MoCo's post_step call it.
  rng = np.random.default_rng(0)
  target = {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=(4,))}
  online = {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=(4,))}
  out = optax.incremental_update(online, target, 1.0 - 0.9)
  chex.assert_trees_all_close(out, {k: 0.9 * target[k] + 0.1 * online[k] for k in target})


def test_mask_excludes_biases_and_norm_parameters():
  params = {"conv": {"kernel": jnp.ones((3, 3, 2, 4))}, "bn": {"scale": jnp.ones(4),
                                                              "bias": jnp.ones(4)},
            "dense": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones(2)}}
  mask = optim.kernels_only(params)
  assert mask == {"conv": {"kernel": True}, "bn": {"scale": False, "bias": False},
                  "dense": {"kernel": True, "bias": False}}


def test_lars_update_matches_numpy_and_skips_biases():
  """One LARS step from zero momentum: -lr * eta * |w| / |g + wd w| * (g + wd w) for kernels;
  plain -lr * g (no decay, no trust ratio) for biases."""
  rng = np.random.default_rng(1)
  w = rng.normal(size=(5, 3)).astype(np.float32)
  b = rng.normal(size=(3,)).astype(np.float32)
  gw = rng.normal(size=(5, 3)).astype(np.float32)
  gb = rng.normal(size=(3,)).astype(np.float32)
  lr, wd, eta = 0.7, 0.01, 0.02
  tx = optim.method_optimizer(_opt_config(weight_decay=wd, trust_coefficient=eta),
                              optax.constant_schedule(lr))
  params, grads = {"kernel": w, "bias": b}, {"kernel": gw, "bias": gb}
  updates, _ = tx.update(grads, tx.init(params), params)
  decayed = gw + wd * w
  expected_kernel = -lr * eta * np.linalg.norm(w) / np.linalg.norm(decayed) * decayed
  np.testing.assert_allclose(updates["kernel"], expected_kernel, rtol=1e-5)
  np.testing.assert_allclose(updates["bias"], -lr * gb, rtol=1e-6)


def test_probe_and_model_get_separate_optimizers():
  config = ml_collections.ConfigDict(dict(
      batch_size=256, train_steps=100, optimizer=_opt_config(warmup_epochs=0.0),
      probe=dict(learning_rate=0.1, momentum=0.0)))
  tx, schedule = optim.create_optimizer(config, steps_per_epoch=10)
  params = {"model": {"kernel": jnp.ones((2, 2))}, "probe": {"kernel": jnp.ones((2, 2))}}
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # Probe: plain SGD at its own rate, cosine-decayed from 0.1 (step 0 -> 0.1).
  np.testing.assert_allclose(updates["probe"]["kernel"], -0.1 * np.ones((2, 2)), rtol=1e-6)
  # Model: LARS at the scheduled rate, which starts at its peak with no warmup.
  assert float(schedule(0)) == pytest.approx(0.2)
  assert not np.allclose(updates["model"]["kernel"], updates["probe"]["kernel"])


def test_unknown_optimizer_lists_valid_names():
  with pytest.raises(ValueError, match="lars, sgd, adamw"):
    optim.method_optimizer(_opt_config(name="adam"), 0.1)


class _GroupedMethod:
  """A stand-in for a method with two extra optimizer groups (as SwAV's prototypes)."""

  def param_groups(self):
    return {"fast_head": base.ParamGroup(learning_rate_multiplier=10.0),
            "prototypes": base.ParamGroup(frozen_steps=2)}

  def param_group(self, path):
    return {"head": "fast_head", "prototypes": "prototypes"}.get(path[0])


def test_method_param_groups_get_their_own_rate_and_freezing():
  tx = optim.method_optimizer(_opt_config(name="sgd", weight_decay=0.0, momentum=0.0),
                              optax.constant_schedule(0.1), _GroupedMethod())
  params = {"encoder": {"kernel": jnp.ones((2, 2))}, "head": {"kernel": jnp.ones((2, 2))},
            "prototypes": {"kernel": jnp.ones((2, 2))}}
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  for step in range(3):
    updates, state = tx.update(grads, state, params)
    np.testing.assert_allclose(updates["encoder"]["kernel"], -0.1, rtol=1e-6)  # main group
    np.testing.assert_allclose(updates["head"]["kernel"], -1.0, rtol=1e-6)  # x10
    # Frozen for its first 2 steps (no update at all), then the main rate.
    np.testing.assert_allclose(updates["prototypes"]["kernel"], 0.0 if step < 2 else -0.1,
                               rtol=1e-6)
  forever = optim.method_optimizer(
      _opt_config(name="sgd"), optax.constant_schedule(0.1),
      type("M", (_GroupedMethod,), {"param_groups": lambda self: {
          "fast_head": base.ParamGroup(), "prototypes": base.ParamGroup(frozen_steps=-1)}})())
  updates, _ = forever.update(grads, forever.init(params), params)
  np.testing.assert_array_equal(updates["prototypes"]["kernel"], 0.0)


def test_a_method_without_groups_keeps_the_plain_optimizer_state():
  """Checkpoints written before param groups existed still match: no extra state layer."""
  plain = optim.method_optimizer(_opt_config(), optax.constant_schedule(0.1))
  direct = optim.lars(_opt_config(), optax.constant_schedule(0.1))
  params = {"kernel": jnp.ones((2, 2))}
  assert jax.tree.structure(plain.init(params)) == jax.tree.structure(direct.init(params))
  grouped = optim.method_optimizer(_opt_config(), optax.constant_schedule(0.1), _GroupedMethod())
  assert jax.tree.structure(grouped.init(params)) != jax.tree.structure(direct.init(params))
