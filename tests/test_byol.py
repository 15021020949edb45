"""BYOL: loss against a numpy reference, the EMA target, and where gradients stop."""


import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import method_batch, step_rngs, tiny_config
from sslx.methods import byol

BATCH = 8


def _tiny_config(train_steps=10):
  c = tiny_config("byol", train_steps=train_steps)
  c.byol.tau_base = 0.9
  return c


def _batch(views):
  return method_batch({"v1": views[0], "v2": views[1]})


def _np_regression(p, z):
  p = p / np.linalg.norm(p, axis=-1, keepdims=True)
  z = z / np.linalg.norm(z, axis=-1, keepdims=True)
  return np.sum((p - z) ** 2, axis=-1)  # = 2 - 2 cos, paper eq. (2)


def test_regression_loss_matches_normalized_squared_error():
  rng = np.random.default_rng(0)
  p, z = rng.normal(size=(6, 9)), rng.normal(size=(6, 9)) * 5.0
  np.testing.assert_allclose(byol.regression_loss(p, z), _np_regression(p, z), rtol=1e-5)
  # Scale-invariant, 0 for aligned vectors, 4 for opposite ones.
  np.testing.assert_allclose(byol.regression_loss(p, 3 * p), 0.0, atol=1e-5)
  np.testing.assert_allclose(byol.regression_loss(p, -p), 4.0, rtol=1e-5)


@pytest.fixture(scope="module")
def method_and_state():
  method = byol.Method(_tiny_config())
  images = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 16, 16, 3))
  params, batch_stats, state = jax.jit(method.init)(jax.random.PRNGKey(0), images[0])
  # Make the target differ from the online network, as after some training.
  state = dict(state, target_params=jax.tree.map(lambda x: x * 1.1 + 0.01, state["target_params"]))
  # Eager flax is slow op by op on CPU; one compiled loss serves all tests.
  method.jit_loss = jax.jit(method.loss)
  return method, params, batch_stats, state, (images[0], images[1])


def test_init_target_equals_online(method_and_state):
  method = byol.Method(_tiny_config())
  params, batch_stats, state = jax.jit(method.init)(jax.random.PRNGKey(0),
                                                    jnp.zeros((2, 16, 16, 3)))
  chex.assert_trees_all_equal(state["target_params"],
                              {"encoder": params["encoder"], "projector": params["projector"]})
  chex.assert_trees_all_equal(state["target_batch_stats"],
                              {"encoder": batch_stats["encoder"],
                               "projector": batch_stats["projector"]})


def _fixed_networks(monkeypatch, method, embeddings):
  """The online and target networks replaced by fixed embeddings per view.

  View i of the batch is filled with the value i, so a stub knows (traced or not) which view
  it sees; `embeddings` maps 'q' (online predictions), 'p' (online projections) and 'z'
  (target projections) to a pair (view 1, view 2), read at call time (they may be traced).
  """
  def pick(name, x):
    first, second = embeddings[name]
    return jnp.where(x[0, 0, 0, 0] == 1.0, first, second)

  def online(params, batch_stats, x, rngs):
    del params, rngs
    p = pick("p", x)
    return p[:, :4], p, pick("q", x), batch_stats
  monkeypatch.setattr(method, "_online", online)
  monkeypatch.setattr(method, "_target", lambda params, bs, x, rngs: (pick("z", x), bs))
  views = (jnp.ones((BATCH, 16, 16, 3)), jnp.full((BATCH, 16, 16, 3), 2.0))
  return _batch(views)



def test_loss_from_fixed_embeddings_matches_the_paper_and_stops_at_the_target(
    method_and_state, monkeypatch):
  """Eq. (2) symmetrised: mean over images of ||q1 - z2'||^2 + ||q2 - z1'||^2 (unit vectors);
  no gradient reaches the target's projections, the predictions get the analytic one."""
  method, params, batch_stats, state, _ = method_and_state
  rng = np.random.default_rng(7)
  q1, q2, z1, z2, p = (rng.normal(size=(BATCH, 16)) * s for s in (1, 2, 3, 0.5, 1))
  embeddings = {"p": (jnp.asarray(p), jnp.asarray(p))}
  batch = _fixed_networks(monkeypatch, method, embeddings)

  def loss_of(q1, q2, z1, z2):
    embeddings.update(q=(q1, q2), z=(z1, z2))
    return method.loss(params, batch_stats, state, batch, step_rngs(jax.random.PRNGKey(0)), 0)[0]

  args = [jnp.asarray(v, jnp.float32) for v in (q1, q2, z1, z2)]
  expected = np.mean(_np_regression(q1, z2) + _np_regression(q2, z1))
  np.testing.assert_allclose(float(loss_of(*args)), expected, rtol=1e-5)
  g_q1, g_q2, g_z1, g_z2 = jax.grad(loss_of, argnums=(0, 1, 2, 3))(*args)
  assert not np.any(np.asarray(g_z1)) and not np.any(np.asarray(g_z2))

  def np_grad(q, z):  # d/dq of mean_b (2 - 2 q^.z^): -(2/B) (z^ - (q^.z^) q^) / |q|
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    cos = np.sum(qn * zn, axis=1, keepdims=True)
    return -2.0 / len(q) * (zn - cos * qn) / np.linalg.norm(q, axis=1, keepdims=True)
  np.testing.assert_allclose(g_q1, np_grad(q1, z2), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(g_q2, np_grad(q2, z1), rtol=1e-4, atol=1e-6)


def test_no_gradient_reaches_the_target(method_and_state):
  method, params, batch_stats, state, views = method_and_state

  def loss_of(online, target):
    s = dict(state, target_params=target)
    return method.loss(online, batch_stats, s, _batch(views), step_rngs(jax.random.PRNGKey(0)), 0)[0]

  g_online, g_target = jax.jit(jax.grad(loss_of, argnums=(0, 1)))(params, state["target_params"])
  for leaf in jax.tree.leaves(g_target):
    assert np.all(np.asarray(leaf) == 0.0)
  # ...while the online network, predictor included, does learn.
  for part in ("encoder", "projector", "predictor"):
    assert any(np.abs(np.asarray(x)).max() > 0 for x in jax.tree.leaves(g_online[part]))


def test_target_batch_stats_come_from_the_target_forward_pass(method_and_state):
  method, params, batch_stats, state, views = method_and_state
  _, out = method.jit_loss(params, batch_stats, state, _batch(views), step_rngs(jax.random.PRNGKey(0)), 0)
  before = state["target_batch_stats"]
  after = out.method_state["target_batch_stats"]
  assert not np.allclose(jax.tree.leaves(before)[0], jax.tree.leaves(after)[0])
  # The online statistics moved too, and differently (different weights).
  assert not np.allclose(jax.tree.leaves(out.batch_stats["encoder"])[0], jax.tree.leaves(after)[0])


def test_post_step_is_ema_with_the_cosine_tau(method_and_state):
  method, params, _, state, _ = method_and_state
  total = method.config.train_steps
  for step in (0, 4, total):
    new = method.post_step(params, state, step)["target_params"]
    tau = 1 - (1 - 0.9) * (np.cos(np.pi * step / total) + 1) / 2
    expected = jax.tree.map(lambda t, o: tau * np.asarray(t) + (1 - tau) * np.asarray(o),
                            state["target_params"],
                            {"encoder": params["encoder"], "projector": params["projector"]})
    chex.assert_trees_all_close(new, expected, rtol=1e-6, atol=1e-7)
  # At the last step tau = 1: the target no longer moves.
  chex.assert_trees_all_close(method.post_step(params, state, total)["target_params"],
                              state["target_params"])
