"""The generic trainer: sharding invariance and the train step's bookkeeping."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import INFO, run_steps, synthetic_batch, tiny_config
from sslx import methods
from sslx.config import defaults as config_defaults
from sslx.core import checkpointing
from sslx.core import mesh as mesh_lib
from sslx.jobs import pretrain


@pytest.fixture(scope="module")
def one_and_eight_device_runs():
  config = tiny_config()
  return run_steps(config, 1), run_steps(config, 8)


def test_eight_devices_match_one_device(one_and_eight_device_runs):
  (state1, losses1), (state8, losses8) = one_and_eight_device_runs
  assert len(jax.devices()) >= 8
  np.testing.assert_allclose(losses8, losses1, rtol=1e-4)
  chex.assert_trees_all_close(state8.params, state1.params, rtol=1e-3, atol=1e-5)
  chex.assert_trees_all_close(state8.batch_stats, state1.batch_stats, rtol=1e-3, atol=1e-5)
  chex.assert_trees_all_close(state8.method_state, state1.method_state, rtol=1e-3, atol=1e-5)


def test_step_updates_everything_it_should(one_and_eight_device_runs):
  (state, losses), _ = one_and_eight_device_runs
  config = tiny_config()
  fresh = jax.device_get(pretrain.Trainer(config, INFO, mesh_lib.create_mesh(1)).init_state(0))
  assert int(state.step) == 2
  assert all(np.isfinite(losses))
  changed = lambda a, b: any(not np.allclose(x, y) for x, y in zip(jax.tree.leaves(a),
                                                                   jax.tree.leaves(b)))
  assert changed(state.params["model"]["encoder"], fresh.params["model"]["encoder"])
  assert changed(state.params["probe"], fresh.params["probe"])
  assert changed(state.batch_stats, fresh.batch_stats)
  # The EMA target moved towards the online network but is not equal to it.
  assert changed(state.method_state["target_params"], fresh.method_state["target_params"])
  assert changed(state.method_state["target_params"]["encoder"], state.params["model"]["encoder"])
  np.testing.assert_array_equal(jax.random.key_data(state.rng),  # the run's key never changes
                                jax.random.key_data(fresh.rng))


def test_probe_does_not_train_the_encoder():
  """With the method's loss scaled to zero, only the probe may move the encoder: it must not."""
  config = tiny_config()
  mesh = mesh_lib.create_mesh(1)
  trainer = pretrain.Trainer(config, INFO, mesh)
  original_loss = trainer.method.loss

  def zero_method_loss(*args):
    loss, out = original_loss(*args)
    return 0.0 * loss, out
  trainer.method.loss = zero_method_loss
  step = jax.jit(trainer._train_step)
  state = trainer.init_state(0)
  before = jax.device_get(state.params)
  state, _ = step(state, mesh_lib.to_global(synthetic_batch(config), mesh))
  after = jax.device_get(state.params)
  # LARS with zero gradient still applies weight decay to kernels, so compare
  # against a step whose gradient is exactly zero: only decay, no probe signal.
  biases_and_norms = [(b, a) for b, a in zip(jax.tree.leaves(before["model"]["encoder"]),
                                             jax.tree.leaves(after["model"]["encoder"]))
                      if b.ndim <= 1]
  for b, a in biases_and_norms:  # no decay, no gradient -> unchanged
    np.testing.assert_array_equal(a, b)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(after["probe"]),
                                                   jax.tree.leaves(before["probe"])))


def test_unlabelled_batches_give_zero_probe_loss():
  config = tiny_config()
  mesh = mesh_lib.create_mesh(1)
  trainer = pretrain.Trainer(config, INFO, mesh)
  batch = synthetic_batch(config)
  batch["label"][:] = -1
  _, metrics = trainer.train_step(trainer.init_state(0), mesh_lib.to_global(batch, mesh))
  assert float(metrics["probe_loss"]) == 0.0


class TwoSizeMethod(methods.base.SSLMethod):
  """A test method on the contract's new inputs: two view groups of different crop sizes and
  crop counts, the example index and a sampling stream of its own (as multi-crop and
  memory-bank methods)."""

  view_groups = ("global", "local")

  def init(self, rng, images):
    params, batch_stats, _ = self.init_encoder(rng, images)
    bank = self.config.twosize.bank_size
    return {"encoder": params}, {"encoder": batch_stats}, {"seen": jnp.zeros((bank,), jnp.int32)}

  def loss(self, params, batch_stats, method_state, batch, rngs, step):
    del step
    stats = batch_stats["encoder"]
    outs = []
    for group in self.view_groups:
      crops = batch["views"][group]
      for j in range(crops.shape[1]):
        f, stats = self.encode(params["encoder"], stats, crops[:, j])
        outs.append(methods.base.l2_normalize(f))
    # Every local crop's feature should match the first global crop's.
    loss = jnp.mean(jnp.stack([jnp.sum((o - outs[0]) ** 2, -1) for o in outs[1:]]))
    keep = jax.random.bernoulli(rngs.method("twosize/keep"), 0.5, (batch["index"].shape[0],))
    seen = method_state["seen"].at[batch["index"]].add(1)  # a memory bank's bookkeeping
    return loss, methods.base.LossOutput(
        batch_stats={"encoder": stats}, method_state={"seen": seen}, features=outs[0],
        embeddings=outs[0], metrics={"kept": jnp.mean(keep), "index_sum": jnp.sum(batch["index"])})


def _two_size_config(bank_size=64):
  config = tiny_config(method="twosize", train_steps=2)
  config.twosize = ml_collections.ConfigDict(dict(bank_size=bank_size))
  config.views = ml_collections.ConfigDict({
      "global": config_defaults.view(num_crops=2, crop_size=16, blur_prob=0.0),
      "local": config_defaults.view(num_crops=3, crop_size=8, crop_area_max=0.3, blur_prob=0.0)})
  return config


@pytest.fixture
def two_size_method(monkeypatch):
  monkeypatch.setitem(methods.METHODS._entries, "twosize", f"{__name__}:TwoSizeMethod")  # pylint: disable=protected-access


def test_a_method_gets_groups_of_two_sizes_the_index_and_its_own_rngs(two_size_method):
  config = _two_size_config()
  (state1, losses1), (state8, losses8) = run_steps(config, 1), run_steps(config, 8)
  np.testing.assert_allclose(losses8, losses1, rtol=1e-4)
  chex.assert_trees_all_close(state8.params, state1.params, rtol=1e-3, atol=1e-5)
  # Each synthetic batch holds every index 0..15 once: two steps saw each twice.
  np.testing.assert_array_equal(state1.method_state["seen"][:16], 2)
  np.testing.assert_array_equal(state1.method_state["seen"][16:], 0)


@pytest.mark.slow
def test_multi_crop_pretraining_runs_end_to_end_on_real_data(two_size_method, tmp_path):
  config = _two_size_config(bank_size=4000)  # mnist5k's 4,000 training digits
  config.data.data_dir = str(tmp_path / "tfds")
  config.update(num_devices=2, log_every_steps=1, checkpoint_every_steps=2)
  config.eval.update(knn=False, linear=False)
  results = pretrain.run(config, str(tmp_path / "run"))
  assert results["step"] == 2 and np.isfinite(results["final_metrics"]["loss"])
  saved, _ = checkpointing.load_all(str(tmp_path / "run"))
  seen = np.asarray(saved["method_state"]["seen"])
  # 2 steps of 16 distinct digits of the first epoch, each counted once at its own id.
  assert seen.sum() == 32 and seen.max() == 1


def test_a_run_says_what_it_trains_and_warns_of_a_folder_with_the_digit_preset():
  config = tiny_config()  # the mnist5k preset
  trainer = pretrain.Trainer(config, INFO, mesh_lib.create_mesh(1))
  lines = pretrain.describe_run(config, trainer)
  assert lines[0].startswith("byol with preset 'mnist5k': mnist5k at 16 px, resnet10 (width 0.125")
  assert any(line.startswith("  views v1: 1 crop(s) of 16 px") for line in lines)
  assert not any("WARNING" in line for line in lines)
  config.data.dataset = "folder:/photos"
  (warning,) = [line for line in pretrain.describe_run(config, trainer) if "WARNING" in line]
  assert "for photos use --config=configs/byol.py:folder" in warning


def test_short_runs_log_enough_points_for_a_curve():
  from sslx.core import progress  # pylint: disable=import-outside-toplevel
  assert progress.log_interval(50, 20) == 2  # 10 points
  assert progress.log_interval(50, 1800) == 50  # the quick start: as configured
  assert progress.log_interval(2, 6) == 2  # under 20 steps: as configured
  assert progress.log_interval(50, 100) == 10


def test_a_short_run_scales_its_evaluation_down_and_says_so():
  config = tiny_config(train_steps=20)
  config.eval.scratch.steps = 100
  line = pretrain.scale_evaluation(config)
  assert line.startswith("a short run (20 steps): a smaller evaluation, probes on at most "
                         "1,000 train images, 1 few-label draw, no from-scratch baselines")
  assert config.eval.few_label_draws == 1 and config.eval.scratch.steps == 0
  assert config.eval.max_train_examples == 1000 and config.plots.tsne_max_points == 300
  smaller = tiny_config(train_steps=20)
  smaller.eval.max_train_examples = 256  # a smaller sample asked for is kept
  pretrain.scale_evaluation(smaller)
  assert smaller.eval.max_train_examples == 256
  full = tiny_config(train_steps=20)
  full.eval.scale_with_run = False
  assert pretrain.scale_evaluation(full) is None and full.eval.few_label_draws == 5
  long = tiny_config(train_steps=1800)
  assert pretrain.scale_evaluation(long) is None and long.eval.few_label_draws == 5
