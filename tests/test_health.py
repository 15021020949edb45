"""Divergence and collapse: RankMe and embedding std against numpy, non-finite stop / skip."""

import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sslx.core import checkpointing
from sslx.core import health
from sslx.core import mesh as mesh_lib
from sslx.jobs import pretrain
from sslx.methods import byol
from sslx import errors
from sslx.core import progress as progress_lib
from conftest import INFO, preempt_after, synthetic_batch, tiny_config


def rankme_reference(z, eps=1e-7):
  """Garrido et al. (2023), eq. 1, from an SVD."""
  sigma = np.linalg.svd(np.asarray(z, np.float64), compute_uv=False)
  p = sigma / np.sum(sigma) + eps
  return float(np.exp(-np.sum(p * np.log(p))))


@pytest.mark.parametrize("shape", [(32, 8), (6, 16)])
def test_effective_rank_matches_an_svd_reference(shape):
  z = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  z[:, 0] *= 5.0  # uneven spectrum
  np.testing.assert_allclose(float(health.effective_rank(jnp.asarray(z))), rankme_reference(z),
                             rtol=1e-4)


def test_effective_rank_of_collapsed_and_of_orthogonal_embeddings():
  same = np.tile(np.random.default_rng(1).normal(size=(1, 16)), (64, 1)).astype(np.float32)
  assert float(health.effective_rank(jnp.asarray(same))) == pytest.approx(1.0, abs=1e-3)
  eye = np.eye(16, dtype=np.float32)
  assert float(health.effective_rank(jnp.asarray(eye))) == pytest.approx(16.0, rel=1e-4)
  # Two used directions out of 16 (dimensional collapse).
  two = np.zeros((64, 16), np.float32)
  two[::2, 0], two[1::2, 1] = 1.0, 1.0
  assert float(health.effective_rank(jnp.asarray(two))) == pytest.approx(2.0, rel=1e-4)


def test_embedding_std_matches_numpy():
  z = np.random.default_rng(2).normal(size=(128, 32)).astype(np.float32)
  unit = z / np.linalg.norm(z, axis=1, keepdims=True)
  np.testing.assert_allclose(float(health.embedding_std(jnp.asarray(z))),
                             np.mean(np.std(unit, axis=0)), rtol=1e-5)
  assert float(health.embedding_std(jnp.ones((8, 32)))) == pytest.approx(0.0, abs=1e-6)


def test_all_finite_sees_one_bad_entry_anywhere():
  tree = {"a": jnp.ones((3, 3)), "b": [jnp.zeros(4), jnp.float32(2.0)]}
  assert bool(health.all_finite(tree, jnp.float32(1.0)))
  assert not bool(health.all_finite(tree, jnp.float32(jnp.inf)))
  tree["b"][0] = tree["b"][0].at[2].set(jnp.nan)
  assert not bool(health.all_finite(tree))


def test_nonfinite_message_names_the_first_bad_quantity():
  values = dict(loss=1.5, probe_loss=2.0, grad_norm=float("nan"), probe_grad_norm=0.3)
  message = health.nonfinite_message(7, values, "/w/checkpoints/6")
  assert message.startswith("Non-finite gradient of the method's parameters")
  assert "at step 7" in message and "/w/checkpoints/6" in message
  assert "nonfinite.action=skip" in message
  values["loss"] = float("inf")
  assert health.nonfinite_message(7, values, None).startswith("Non-finite loss at step 7")


def test_collapse_watch_warns_once_per_episode():
  watch = health.CollapseWatch(ml_collections.ConfigDict(
      dict(min_std_fraction=0.1, min_effective_rank=2.0)), embedding_dim=100)
  healthy = {"embedding_std": 0.09, "effective_rank": 40.0}
  assert watch.check(1, healthy) is None
  low_std = watch.check(2, {"embedding_std": 0.001, "effective_rank": 40.0})
  assert "Possible collapse at step 2" in low_std and "embedding_std 0.001 < 0.01" in low_std
  assert watch.check(3, {"embedding_std": 0.001, "effective_rank": 1.2}) is None  # same episode
  assert watch.check(4, healthy) is None
  low_rank = watch.check(5, {"embedding_std": 0.09, "effective_rank": 1.2})
  assert "effective_rank 1.2 < 2" in low_rank


def poison(kind, at_update):
  """A BYOL loss made non-finite at one update: 'loss' (NaN value) or 'grad' (finite value,
  NaN gradient: d sqrt(s)/ds is infinite at s = 0 and 0 * inf = NaN)."""
  original = byol.Method.loss

  def loss(self, params, batch_stats, method_state, views, rng, step):
    value, out = original(self, params, batch_stats, method_state, views, rng, step)
    bad = step == at_update
    if kind == "loss":
      return value + jnp.where(bad, jnp.nan, 0.0), out
    leaf = params["predictor"]["dense0"]["kernel"]
    s = jnp.sum(leaf * 0.0) + jnp.where(bad, 0.0, 1.0)
    return value + 0.0 * jnp.sqrt(s), out

  return loss


def test_skip_mode_drops_exactly_the_bad_update_and_counts_it(monkeypatch):
  monkeypatch.setattr(byol.Method, "loss", poison("grad", at_update=1))
  config = tiny_config()
  config.nonfinite.action = "skip"
  mesh = mesh_lib.create_mesh(2)
  trainer = pretrain.Trainer(config, INFO, mesh)
  state = trainer.init_state(0)
  state, m0 = trainer.train_step(state, mesh_lib.to_global(synthetic_batch(config, 0), mesh))
  before = jax.device_get(state)
  state, m1 = trainer.train_step(state, mesh_lib.to_global(synthetic_batch(config, 1), mesh))
  after = jax.device_get(state)
  assert bool(m0["finite"]) and not bool(m1["finite"]) and np.isfinite(float(m1["loss"]))
  assert int(after.step) == 2 and int(after.skipped_updates) == 1
  for part in ("params", "batch_stats", "method_state"):
    chex.assert_trees_all_equal(getattr(after, part), getattr(before, part))
  # The optimizer's moments are those of before the bad step; its step counters advanced with
  # the step, so its learning rate is the logged one (a function of the step).
  counters = lambda opt: {k: v for k, v in _leaves(opt).items() if k.endswith(".count")}
  moments = lambda opt: {k: v for k, v in _leaves(opt).items() if not k.endswith(".count")}
  chex.assert_trees_all_equal(moments(after.opt_state), moments(before.opt_state))
  assert counters(after.opt_state) and all(int(c) == 2 for c in counters(after.opt_state).values())
  state, m2 = trainer.train_step(state, mesh_lib.to_global(synthetic_batch(config, 2), mesh))
  assert bool(m2["finite"]) and int(m2["skipped_updates"]) == 1
  assert all(int(c) == 3 for c in counters(jax.device_get(state.opt_state)).values())
  assert not np.allclose(jax.device_get(state.params["model"]["encoder"]["stem_conv"]["kernel"]),
                         after.params["model"]["encoder"]["stem_conv"]["kernel"])


def _leaves(tree) -> dict:
  return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree.leaves_with_path(tree)}


def _run_config(tmp_path, **overrides):
  config = tiny_config(train_steps=6, checkpoint_every_steps=2, log_every_steps=1, num_devices=2,
                       **overrides)
  config.data.update(data_dir=str(tmp_path / "tfds"), image_size=16)
  config.eval.update(knn=False, linear=False)
  return config


@pytest.mark.slow
def test_nonfinite_gradient_stops_naming_step_and_quantity_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch):
  quantity = "gradient of the method's parameters"  # the loss itself stays finite
  monkeypatch.setattr(byol.Method, "loss", poison("grad", at_update=2))  # the 3rd update
  workdir = str(tmp_path / "run")
  with pytest.raises(health.NonFiniteError) as error:
    pretrain.run(_run_config(tmp_path), workdir)
  message = str(error.value)
  assert message.startswith(f"Non-finite {quantity} at step 3 (")
  assert f"The newest checkpoint, {workdir}/checkpoints/2, is from before it." in message
  ckpt = checkpointing.Checkpointer(workdir, max_to_keep=3, read_only=True)
  assert ckpt.manager.all_steps() == [2]
  saved, _ = checkpointing.load_all(workdir)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(saved))


@pytest.mark.slow
def test_a_run_resumed_after_a_skipped_update_continues_as_the_straight_run(tmp_path, monkeypatch):
  monkeypatch.setattr(byol.Method, "loss", poison("grad", at_update=1))  # update 2 is skipped
  config = _run_config(tmp_path)
  config.train_steps = 4
  config.nonfinite.action = "skip"
  straight, interrupted = str(tmp_path / "straight"), str(tmp_path / "interrupted")
  pretrain.run(config, straight)
  with monkeypatch.context() as m:
    preempt_after(m, progress_lib.Progress, 1)  # stops after step 2, the skipped one
    with pytest.raises(errors.Preempted, match="after step 2;"):
      pretrain.run(config, interrupted)
  pretrain.run(config, interrupted)
  expected, _ = checkpointing.load_all(straight)
  resumed, step = checkpointing.load_all(interrupted)
  assert step == 4 and int(resumed["train"]["skipped_updates"]) == 1
  chex.assert_trees_all_equal(resumed, expected)


def test_skip_watch_logs_each_skip_once_and_stops_past_max_skipped():
  config = ml_collections.ConfigDict(dict(action="skip", max_skipped=1))
  watch = health.NonFiniteWatch(config, latest_checkpoint=lambda: "/w/checkpoints/2")
  ok = {"finite": jnp.bool_(True), "skipped_updates": jnp.int32(0), "loss": 1.0}
  bad = {"finite": jnp.bool_(False), "skipped_updates": jnp.int32(1), "loss": float("nan")}
  watch.check(1, ok)
  watch.check(2, bad)  # one skipped: allowed
  watch.check(2, bad)  # the same step seen again (a save right after): no double count
  watch.check(3, {**ok, "skipped_updates": jnp.int32(1)})
  with pytest.raises(health.NonFiniteError,
                     match="2 non-finite updates skipped by step 4, more than "
                           "config.nonfinite.max_skipped=1"):
    watch.check(4, {**bad, "skipped_updates": jnp.int32(2)})
  stop = health.NonFiniteWatch(ml_collections.ConfigDict(dict(action="stop", max_skipped=0)),
                               latest_checkpoint=lambda: None)
  with pytest.raises(health.NonFiniteError, match="Non-finite loss at step 5 .* No checkpoint "
                                                  "was saved before it"):
    stop.check(5, {**bad, "skipped_updates": jnp.int32(0)})


def test_effective_rank_is_computed_on_logged_steps_only():
  config = tiny_config(train_steps=10, log_every_steps=4)
  trainer = pretrain.Trainer(config, INFO, mesh_lib.create_mesh(1))
  assert trainer.embedding_dim() == config.byol.projector_dim
  z = jnp.asarray(np.random.default_rng(3).normal(size=(16, 8)), jnp.float32)
  health_metrics = jax.jit(trainer._health_metrics)  # pylint: disable=protected-access
  for step, logged in [(0, False), (3, True), (4, False), (7, True), (9, True)]:  # 9: the last
    rank = float(health_metrics(z, jnp.int32(step))["effective_rank"])
    if logged:
      assert rank == pytest.approx(rankme_reference(z), rel=1e-4)
    else:
      assert math.isnan(rank)
