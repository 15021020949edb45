"""Every pretext method of issue 17 on the generic trainer: 8 devices give the step of 1
device, and state beyond the weights (memory bank, NCE's Z, colour prior, permutation
set) is checkpointed and resumes exactly."""

import chex
import jax
import numpy as np
import pytest

from sslx import errors
from sslx.core import checkpointing
from sslx.core import progress as progress_lib
from sslx.jobs import pretrain
from conftest import preempt_after, run_steps, tiny_config

PRETEXT = ("relative_patch", "jigsaw", "colorization", "context_encoder", "exemplar",
           "instance_discrimination", "cpc", "supervised")


def small(name):
  adversarial = name == "context_encoder_adversarial"  # with the discriminator
  name = "context_encoder" if adversarial else name
  config = tiny_config(name, arg="mnistm5k" if name == "colorization" else None)
  if name == "relative_patch":
    config.views.v1.crop_size = 24
    config.relative_patch.update(patch_size=6, gap=2)
  elif name == "jigsaw":
    config.views.v1.crop_size = 18
    config.jigsaw.update(tile_size=5, num_permutations=10)
  elif name == "cpc":
    config.views.v1.crop_size = 16
    config.cpc.update(patch_size=8, patch_stride=4, prediction_steps=2, context_dim=16,
                      directions=("top_down", "bottom_up"))  # 3x3 grid
  elif name == "instance_discrimination":
    config.instance_discrimination.update(dim=16, loss="nce", num_negatives=32)
  elif name == "colorization":
    config.colorization.decoder_channels = (8, 8, 8)
  elif name == "context_encoder":
    config.context_encoder.update(decoder_channels=(8, 8, 8), discriminator_channels=(8, 8),
                                  adversarial_weight=0.5 if adversarial else 0.0)
  return config


def assert_same_updates(after8, after1, before, rtol):
  """Each leaf's update (after - before) agrees in norm: |u8 - u1| <= rtol |u1|."""
  for (path, a1), a8, b in zip(jax.tree_util.tree_leaves_with_path(after1),
                               jax.tree.leaves(after8), jax.tree.leaves(before)):
    u1, u8 = np.asarray(a1) - np.asarray(b), np.asarray(a8) - np.asarray(b)
    assert np.linalg.norm(u8 - u1) <= rtol * np.linalg.norm(u1) + 1e-7, jax.tree_util.keystr(path)


@pytest.mark.parametrize("name", PRETEXT + ("context_encoder_adversarial",))
def test_eight_devices_match_one_device(name):
  config = small(name)
  (state1, losses1), (state8, losses8) = run_steps(config, 1), run_steps(config, 8)
  np.testing.assert_allclose(losses8, losses1, rtol=1e-4)
  fresh = run_steps(config, 1, num_steps=0)[0]
  if name == "context_encoder":
    # Without the adversarial term its encoder's gradient is ill-conditioned: the
    # sum order of 8 devices moves every encoder leaf's update by 0.3-0.7% of its
    # norm on an AVX-512 AMD EPYC (elementwise: 6 of 18,432 weights of one layer
    # off by 4e-5), where the other methods agree to 3e-5. A sharding error (a
    # per-device batch norm, a per-device mean) moves it by tens of percent.
    assert_same_updates(state8.params, state1.params, fresh.params, rtol=2e-2)
  else:
    chex.assert_trees_all_close(state8.params, state1.params, rtol=1e-3, atol=1e-5)
  chex.assert_trees_all_close(state8.batch_stats, state1.batch_stats, rtol=1e-3, atol=1e-5)
  chex.assert_trees_all_close(state8.method_state, state1.method_state, rtol=1e-3, atol=1e-5)
  # The step trained something (a method whose loss ignored its weights would pass above).
  assert any(not np.allclose(a, b) for a, b in zip(
      jax.tree.leaves(state1.params["model"]["encoder"]),
      jax.tree.leaves(fresh.params["model"]["encoder"])))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["instance_discrimination", "colorization", "jigsaw"])
def test_method_state_resumes_exactly(name, tmp_path, monkeypatch):
  # Every kind of method state the new methods add: NPID's bank, NCE's Z and a
  # per-step random draw of negatives; colorization's running ab-bin counts (the
  # class-rebalancing prior, summed over every step so far); jigsaw's permutation set.
  steps = 4
  config = small(name)
  config.update(train_steps=steps, batch_size=16, num_devices=2, log_every_steps=1,
                checkpoint_every_steps=2)
  config.data.data_dir = str(tmp_path.parent / "tfds")
  config.eval.update(knn=False, linear=False)
  straight = str(tmp_path / "straight")
  pretrain.run(config, straight)
  interrupted = str(tmp_path / "interrupted")
  with monkeypatch.context() as m:
    preempt_after(m, progress_lib.Progress, steps // 2 - 1)  # stops after step steps // 2
    with pytest.raises(errors.Preempted):
      pretrain.run(config, interrupted)
  halfway, half_step = checkpointing.load_all(interrupted)
  pretrain.run(config, interrupted)
  expected, step = checkpointing.load_all(straight)
  resumed, resumed_step = checkpointing.load_all(interrupted)
  assert half_step == steps // 2 and step == resumed_step == steps
  chex.assert_trees_all_close(resumed, expected, rtol=1e-6, atol=1e-7)
  state, before = expected["method_state"], halfway["method_state"]
  if name == "instance_discrimination":
    assert state["bank"].shape == (4000, 16) and float(state["nce_z"]) > 0
  elif name == "colorization":
    # One count per bin at init, then every pixel of every step's ab targets
    # (soft-encoded: each pixel's weights sum to 1): a restart that lost or
    # re-initialised the counts would not reach this total.
    size = config.views.v1.crop_size or config.data.image_size
    pixels = config.batch_size * size * size
    init = state["ab_counts"].shape[0]
    np.testing.assert_allclose(float(np.sum(before["ab_counts"])), init + half_step * pixels,
                               rtol=1e-4)
    np.testing.assert_allclose(float(np.sum(state["ab_counts"])), init + steps * pixels,
                               rtol=1e-4)
  else:
    perms = np.asarray(state["permutations"])
    assert perms.shape == (10, 9) and len({tuple(p) for p in perms}) == 10
    np.testing.assert_array_equal(np.asarray(before["permutations"]), perms)
