"""MoCo v2/v3: InfoNCE with a queue and v3's loss against numpy, the FIFO queue,
shuffled BN, the momentum encoder, and where gradients stop."""

import re
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import moco as moco_config
from sslx import errors
from sslx.methods import moco
from conftest import method_batch, run_steps, step_rngs, tiny_config as _tiny

BATCH = 8


def tiny_config(version="v2", **moco_overrides):
  c = _tiny("moco", f"mnist5k,{version}", batch_size=BATCH, train_steps=10)
  c.moco.update(queue_size=2 * BATCH)
  c.moco.update(moco_overrides)
  return c


def _batch(v1, v2):
  return method_batch({"v1": v1, "v2": v2})


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_infonce(q, k, queue, t):
  """MoCo eq. (1) per query, in float64, averaged."""
  q, k, queue = _unit(q), _unit(k), _unit(queue)
  losses = []
  for i in range(len(q)):
    pos = np.exp(q[i] @ k[i] / t)
    neg = sum(np.exp(q[i] @ kn / t) for kn in queue)
    losses.append(-np.log(pos / (pos + neg)))
  return np.mean(losses)


def np_v3_loss(q1, q2, k1, k2, t):
  """MoCo v3 Algorithm 1: ctr(q1, k2) + ctr(q2, k1), ctr = 2t * CE(q k^T / t, arange)."""
  def ctr(q, k):
    q, k = _unit(q), _unit(k)
    ce = [-np.log(np.exp(q[i] @ k[i] / t) / np.sum(np.exp(q[i] @ k.T / t)))
          for i in range(len(q))]
    return 2 * t * np.mean(ce)
  return ctr(q1, k2) + ctr(q2, k1)


def test_infonce_with_queue_matches_numpy():
  rng = np.random.default_rng(0)
  q, k, queue = rng.normal(size=(4, 6)), rng.normal(size=(4, 6)), rng.normal(size=(12, 6))
  loss, _ = moco.infonce_with_queue(jnp.asarray(q), jnp.asarray(k), jnp.asarray(queue), 0.2)
  np.testing.assert_allclose(loss, np_infonce(q, k, queue, 0.2), rtol=1e-5)


def test_v3_loss_matches_numpy():
  rng = np.random.default_rng(1)
  q1, q2, k1, k2 = (rng.normal(size=(5, 6)) for _ in range(4))
  loss, _ = moco.symmetric_ctr(*(jnp.asarray(x) for x in (q1, q2, k1, k2)), 1.0)
  np.testing.assert_allclose(loss, np_v3_loss(q1, q2, k1, k2, 1.0), rtol=1e-5)


def test_enqueue_is_a_fifo_ring_buffer():
  queue, pointer = jnp.zeros((6, 2)), jnp.zeros((), jnp.int32)
  batches = [np.full((2, 2), i + 1.0) for i in range(4)]
  for b in batches:
    queue, pointer = moco.enqueue(queue, pointer, jnp.asarray(b))
  # 4 writes of 2 into 6 slots: the 4th wrapped around over the oldest (batch 1).
  np.testing.assert_array_equal(queue[:, 0], [4, 4, 2, 2, 3, 3])
  assert int(pointer) == 2  # the oldest entries (batch 2) are next to go


def test_queue_after_three_steps_holds_the_newest_keys_in_fifo_order():
  """K = 2 x batch: after 3 steps the queue wrapped once and holds the keys of steps 3 and 2."""
  method = moco.Method(tiny_config())
  views = [jax.random.normal(jax.random.PRNGKey(i), (BATCH, 16, 16, 3)) for i in range(6)]
  params, batch_stats, state = jax.jit(method.init)(jax.random.PRNGKey(0), views[0])
  assert state["queue"].shape == (2 * BATCH, 16)
  loss_fn = jax.jit(method.loss)
  keys, rng = [], jax.random.PRNGKey(1)
  for step in range(3):
    v1, v2 = views[2 * step], views[2 * step + 1]
    # The positive keys of this step: key encoder on view 2.
    (_, k), _ = method._forward([("projector", method.projector)], state["key_params"],
                                state["key_batch_stats"], v2)
    keys.append(_unit(np.asarray(k)))
    _, out = loss_fn(params, batch_stats, state, _batch(v1, v2), step_rngs(rng), step)
    state = out.method_state
  np.testing.assert_allclose(state["queue"][:BATCH], keys[2], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(state["queue"][BATCH:], keys[1], rtol=1e-4, atol=1e-5)
  assert int(state["queue_pointer"]) == BATCH


def _fixed_networks(monkeypatch, method, embeddings):
  """Query and key networks replaced by fixed embeddings per view (view i is filled with i).

  With bn_groups > 1 the key passes are the shuffled ones (a permutation is given).
  `embeddings` maps 'q', 'p' (v3's predictions) and 'k' to pairs (view 1, view 2), read at
  call time (they may be traced).
  """
  def pick(name, x):
    first, second = embeddings[name]
    return jnp.where(x[0, 0, 0, 0] == 1.0, first, second)

  def forward(networks, params, batch_stats, x, permutation=None, rngs=None):
    del params, rngs
    if permutation is not None:  # a key pass
      return [pick("k", x)[:, :4], pick("k", x)], batch_stats
    outs = [pick("q", x)[:, :4], pick("q", x)]
    if len(networks) == 2:  # v3's predictor
      outs.append(pick("p", x))
    return outs, batch_stats
  monkeypatch.setattr(method, "_forward", forward)
  return _batch(jnp.ones((BATCH, 16, 16, 3)), jnp.full((BATCH, 16, 16, 3), 2.0))


@pytest.mark.parametrize("symmetric", [False, True])
def test_v2_loss_and_queue_from_fixed_embeddings_match_the_paper(monkeypatch, symmetric):
  """Eq. (1) against the queue as it was before this step (symmetric: both views as queries,
  averaged); then the step's keys, normalised, replace the oldest queue rows; no gradient
  reaches the keys."""
  method = moco.Method(tiny_config(bn_groups=2, symmetric=symmetric))
  params, batch_stats, state = jax.jit(method.init)(jax.random.PRNGKey(0),
                                                    jnp.zeros((BATCH, 16, 16, 3)))
  rng = np.random.default_rng(3)
  q1, q2, k1, k2 = (rng.normal(size=(BATCH, 16)) for _ in range(4))
  embeddings = {}
  batch = _fixed_networks(monkeypatch, method, embeddings)

  def loss_of(q1, q2, k1, k2):
    embeddings.update(q=(q1, q2), k=(k1, k2))
    loss, out = method.loss(params, batch_stats, state, batch, step_rngs(jax.random.PRNGKey(1)), 0)
    return loss, out.method_state

  args = [jnp.asarray(v, jnp.float32) for v in (q1, q2, k1, k2)]
  loss, new_state = loss_of(*args)
  queue = np.asarray(state["queue"])
  expected = np_infonce(q1, k2, queue, 0.2)
  if symmetric:
    expected = (expected + np_infonce(q2, k1, queue, 0.2)) / 2
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  new_keys = np.concatenate([k2, k1]) if symmetric else k2
  np.testing.assert_allclose(new_state["queue"][:len(new_keys)], _unit(new_keys), rtol=1e-5)
  np.testing.assert_array_equal(new_state["queue"][len(new_keys):], queue[len(new_keys):])
  assert int(new_state["queue_pointer"]) == len(new_keys) % len(queue)
  grads = jax.grad(lambda *a: loss_of(*a)[0], argnums=(0, 1, 2, 3))(*args)
  assert not np.any(np.asarray(grads[2])) and not np.any(np.asarray(grads[3]))  # keys
  assert np.any(np.asarray(grads[0])) and (np.any(np.asarray(grads[1])) == symmetric)


def test_v3_loss_from_fixed_embeddings_matches_algorithm_1(monkeypatch):
  method = moco.Method(tiny_config("v3", bn_groups=2))
  params, batch_stats, state = jax.jit(method.init)(jax.random.PRNGKey(0),
                                                    jnp.zeros((BATCH, 16, 16, 3)))
  rng = np.random.default_rng(4)
  q1, q2, p1, p2, k1, k2 = (rng.normal(size=(BATCH, 16)) for _ in range(6))
  embeddings = {"q": (jnp.asarray(q1), jnp.asarray(q2)), "p": (jnp.asarray(p1), jnp.asarray(p2)),
                "k": (jnp.asarray(k1), jnp.asarray(k2))}
  batch = _fixed_networks(monkeypatch, method, embeddings)
  loss, _ = method.loss(params, batch_stats, state, batch, step_rngs(jax.random.PRNGKey(1)), 0)
  # The predictions (not the projections) are the queries; the keys are the other view's.
  np.testing.assert_allclose(float(loss), np_v3_loss(p1, p2, k1, k2, method.config.moco.temperature),
                             rtol=1e-5)


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_no_gradient_reaches_the_key_encoder(version):
  method = moco.Method(tiny_config(version))
  v1, v2 = (jax.random.normal(jax.random.PRNGKey(i), (BATCH, 16, 16, 3)) for i in range(2))
  params, batch_stats, state = jax.jit(method.init)(jax.random.PRNGKey(0), v1)

  def loss_of_key_params(key_params):
    s = dict(state, key_params=key_params)
    return method.loss(params, batch_stats, s, _batch(v1, v2), step_rngs(jax.random.PRNGKey(1)), 0)[0]
  grads = jax.jit(jax.grad(loss_of_key_params))(state["key_params"])
  for g in jax.tree.leaves(grads):
    np.testing.assert_array_equal(g, 0.0)
  query_grads = jax.jit(jax.grad(lambda p: method.loss(p, batch_stats, state, _batch(v1, v2),
                                                       step_rngs(jax.random.PRNGKey(1)), 0)[0]))(params)
  assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(query_grads["encoder"]))
  if version == "v3":
    assert float(jnp.abs(query_grads["predictor"]["dense0"]["kernel"]).sum()) > 0


@pytest.mark.parametrize("cosine", [False, True])
def test_post_step_is_momentum_update(cosine):
  config = tiny_config(momentum_cosine=cosine)
  method = moco.Method(config)
  params, _, state = jax.jit(method.init)(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 3)))
  moved = jax.tree.map(lambda x: x + 1.0, params)
  step = 3
  m = 1 - (1 - 0.9) * (np.cos(np.pi * step / 10) + 1) / 2 if cosine else 0.9
  new = method.post_step(moved, state, jnp.asarray(step))
  for name in ("encoder", "projector"):
    chex.assert_trees_all_close(
        new["key_params"][name],
        jax.tree.map(lambda k, q: m * k + (1 - m) * q, state["key_params"][name], moved[name]),
        rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(method.momentum(step), m, rtol=1e-6)
  np.testing.assert_array_equal(new["queue"], state["queue"])


def test_grouped_apply_normalises_each_shuffled_group_and_restores_order():
  """Shuffled BN: sample i is normalised with the statistics of its group after permutation."""
  rng = np.random.default_rng(3)
  x = rng.normal(size=(12, 3))
  perm = rng.permutation(12)
  apply = lambda xg, rngs: (xg - xg.mean(0), {"mean": xg.mean(0)})
  out, stats = moco.grouped_apply(apply, jnp.asarray(x), 3, jnp.asarray(perm))
  expected = np.zeros_like(x)
  for g in range(3):
    idx = perm[4 * g:4 * g + 4]
    expected[idx] = x[idx] - x[idx].mean(0)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats["mean"], x.mean(0), atol=1e-6)  # equal groups: the mean
  # Without a permutation: contiguous groups (the queries' BN).
  out, _ = moco.grouped_apply(apply, jnp.asarray(x), 3)
  np.testing.assert_allclose(out[:4], x[:4] - x[:4].mean(0), rtol=1e-5, atol=1e-6)


def test_shuffled_bn_keys_use_other_statistics_than_their_queries():
  method = moco.Method(tiny_config(bn_groups=4))
  v1, v2 = (jax.random.normal(jax.random.PRNGKey(i), (BATCH, 16, 16, 3)) for i in range(2))
  params, batch_stats, state = jax.jit(method.init)(jax.random.PRNGKey(0), v1)
  heads = [("projector", method.projector)]
  perm = jnp.array([4, 5, 6, 7, 0, 1, 2, 3])  # the same 4 groups of 2, in another order
  (_, k_shuffled), _ = method._forward(heads, params, batch_stats, v1, perm)
  (_, k_plain), _ = method._forward(heads, params, batch_stats, v1)
  # Groups of 2: {4,5} {6,7} {0,1} {2,3} are the same sets as unshuffled -> same outputs.
  np.testing.assert_allclose(k_shuffled, k_plain, rtol=1e-4, atol=1e-5)
  perm = jnp.array([0, 2, 1, 3, 4, 6, 5, 7])  # groups {0,2} {1,3} {4,6} {5,7}
  (_, k_shuffled), _ = method._forward(heads, params, batch_stats, v1, perm)
  assert not np.allclose(k_shuffled, k_plain, atol=1e-3)


@pytest.mark.parametrize("overrides, message", [
    (dict(queue_size=12), "moco.queue_size=12 must be a positive multiple"),
    (dict(bn_groups=3), "moco.bn_groups=3 must divide batch_size=8"),
    (dict(bn_groups=0), "moco.bn_groups=0; it must be an integer > 0"),
    (dict(version="v4"), "moco.version='v4'; it must be one of 'v2', 'v3'"),
    (dict(temperature=0.0), "moco.temperature=0.0; it must be a number > 0"),
    (dict(momentum=1.5), "moco.momentum=1.5; it must be a number in [0, 1]"),
])
def test_bad_moco_config_is_a_clear_error(overrides, message):
  config = tiny_config()
  config.moco.update(overrides)
  with pytest.raises(errors.ConfigError, match=re.escape(message)):
    moco.Method(config)


def test_config_argument_takes_preset_and_version_in_any_order():
  c = moco_config.get_config("v3,cifar10")
  assert (c.moco.version, c.data.dataset, c.moco.bn_groups) == ("v3", "cifar10", 1)
  c = moco_config.get_config("imagenet")
  assert (c.moco.version, c.moco.queue_size, c.moco.momentum, c.moco.bn_groups) == (
      "v2", 65536, 0.999, 8)


def test_v2_with_shuffled_bn_on_eight_devices_matches_one_device():
  """The groups and the shuffle are over the global batch, so the device count does not matter."""
  config = tiny_config(bn_groups=4)
  config.batch_size = 16
  config.moco.queue_size = 32
  (state1, losses1), (state8, losses8) = (run_steps(config, 1, num_steps=3),
                                          run_steps(config, 8, num_steps=3))
  np.testing.assert_allclose(losses8, losses1, rtol=1e-4)
  chex.assert_trees_all_close(state8.params, state1.params, rtol=1e-3, atol=1e-5)
  chex.assert_trees_all_close(state8.method_state, state1.method_state, rtol=1e-3, atol=1e-5)
  assert int(state1.method_state["queue_pointer"]) == 16  # 3 x 16 keys into 32 slots

