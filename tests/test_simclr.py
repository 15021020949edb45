"""SimCLR: NT-Xent and its gradient against numpy, global negatives, 8 devices = 1 device."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import simclr as simclr_config
from sslx.core import mesh as mesh_lib
from sslx.methods import simclr
from conftest import method_batch, run_steps, step_rngs, tiny_config as _tiny


def tiny_config():
  return _tiny("simclr")


def np_nt_xent(z1, z2, temperature):
  """Paper eq. (1), anchor by anchor, in float64."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  n2 = len(z)
  n = n2 // 2
  sim = lambda u, v: u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
  total = 0.0
  for i in range(n2):
    j = (i + n) % n2
    denominator = sum(np.exp(sim(z[i], z[k]) / temperature) for k in range(n2) if k != i)
    total += -np.log(np.exp(sim(z[i], z[j]) / temperature) / denominator)
  return total / n2


def np_numerical_grad(f, x, eps=1e-6):
  g = np.zeros_like(x)
  for idx in np.ndindex(*x.shape):
    d = np.zeros_like(x)
    d[idx] = eps
    g[idx] = (f(x + d) - f(x - d)) / (2 * eps)
  return g


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_matches_numpy(temperature):
  rng = np.random.default_rng(0)
  z1, z2 = rng.normal(size=(5, 7)), rng.normal(size=(5, 7)) * 3.0
  loss, _ = simclr.nt_xent(jnp.asarray(z1), jnp.asarray(z2), temperature)
  np.testing.assert_allclose(loss, np_nt_xent(z1, z2, temperature), rtol=1e-5)


def test_nt_xent_gradient_matches_numerical_gradient_of_numpy_reference():
  rng = np.random.default_rng(1)
  z1, z2 = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
  grad_fn = jax.grad(lambda a, b: simclr.nt_xent(a, b, 0.2)[0], argnums=(0, 1))
  g1, g2 = grad_fn(jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32))
  np.testing.assert_allclose(g1, np_numerical_grad(lambda a: np_nt_xent(a, z2, 0.2), z1),
                             rtol=2e-3, atol=1e-5)
  np.testing.assert_allclose(g2, np_numerical_grad(lambda b: np_nt_xent(z1, b, 0.2), z2),
                             rtol=2e-3, atol=1e-5)


def test_nt_xent_aligned_pairs_are_classified_correctly():
  z = np.eye(4, 8)
  loss, accuracy = simclr.nt_xent(jnp.asarray(z), jnp.asarray(z * 2.0), 0.1)
  assert float(accuracy) == 1.0
  # Each anchor: positive at cos 1, six orthogonal negatives at cos 0.
  np.testing.assert_allclose(loss, np.log(1 + 6 * np.exp(-10.0)), atol=1e-6)


def test_nt_xent_on_a_sharded_batch_uses_negatives_from_every_device():
  """Under jit, sharded inputs give the GLOBAL loss, not a mean of per-device losses."""
  mesh = mesh_lib.create_mesh(8)
  rng = np.random.default_rng(2)
  z1, z2 = rng.normal(size=(16, 8)), rng.normal(size=(16, 8))
  sharded = mesh_lib.to_global({"a": z1.astype(np.float32), "b": z2.astype(np.float32)}, mesh)
  loss = jax.jit(lambda a, b: simclr.nt_xent(a, b, 0.5)[0])(sharded["a"], sharded["b"])
  np.testing.assert_allclose(loss, np_nt_xent(z1, z2, 0.5), rtol=1e-5)
  per_device = np.mean([np_nt_xent(z1[i:i + 2], z2[i:i + 2], 0.5) for i in range(0, 16, 2)])
  assert abs(float(loss) - per_device) > 0.5  # 31 negatives per anchor, not 3


def test_loss_is_nt_xent_of_the_projections_of_both_views():
  method = simclr.Method(tiny_config())
  views = tuple(jax.random.normal(jax.random.PRNGKey(i), (6, 16, 16, 3)) for i in range(2))
  params, batch_stats, state = jax.jit(method.init)(jax.random.PRNGKey(0), views[0])
  loss, out = jax.jit(method.loss)(params, batch_stats, state,
                                   method_batch({"v1": views[0], "v2": views[1]}),
                                   step_rngs(jax.random.PRNGKey(1)), 0)
  # Reference: both views through encoder and projector as one batch (shared BN statistics).
  h, _ = method.encode(params["encoder"], batch_stats["encoder"], jnp.concatenate(views))
  z, _ = method.apply_train(method.projector, params["projector"], batch_stats["projector"], h)
  z = np.asarray(z, np.float64)
  np.testing.assert_allclose(loss, np_nt_xent(z[:6], z[6:], 0.5), rtol=1e-4)
  np.testing.assert_allclose(out.features, h[:6], rtol=1e-4, atol=1e-5)
  assert out.method_state == {}


def test_jitter_strength_sets_both_views():
  c = simclr_config.get_config("cifar10")
  c.simclr.color_jitter_strength = 0.25
  for v in c.views.values():
    assert (v.brightness, v.contrast, v.saturation, v.hue) == pytest.approx((0.2, 0.2, 0.2, 0.05))
  assert c.views.v1.blur_prob == c.views.v2.blur_prob == 0.0  # the paper's CIFAR recipe
  assert simclr_config.get_config("imagenet").views.v1.blur_prob == 0.5


def test_eight_devices_match_one_device():
  config = tiny_config()
  (state1, losses1), (state8, losses8) = (run_steps(config, 1),
                                          run_steps(config, 8))
  np.testing.assert_allclose(losses8, losses1, rtol=1e-4)
  chex.assert_trees_all_close(state8.params, state1.params, rtol=1e-3, atol=1e-5)
  chex.assert_trees_all_close(state8.batch_stats, state1.batch_stats, rtol=1e-3, atol=1e-5)
