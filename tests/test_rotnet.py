"""RotNet: rotations and labels against numpy, the loss against a numpy cross-entropy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx import errors
from sslx.core import mesh as mesh_lib
from sslx.jobs import pretrain
from sslx.methods import rotnet
from conftest import INFO, method_batch, step_rngs, synthetic_batch, tiny_config as _tiny


def tiny_config():
  return _tiny("rotnet", batch_size=8)


def test_rotations_and_labels_match_numpy_and_rotate_back():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(3, 5, 5, 2)).astype(np.float32)  # non-symmetric content
  rotated, labels = rotnet.rotate_batch(jnp.asarray(images))
  rotated, labels = np.asarray(rotated), np.asarray(labels)
  assert rotated.shape == (12, 5, 5, 2)
  np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
  for k in range(4):
    block = rotated[3 * k:3 * k + 3]
    # Label k is a counter-clockwise rotation by k x 90 degrees in the image plane...
    np.testing.assert_array_equal(block, np.rot90(images, k, axes=(1, 2)))
    # ...and rotating back by -k x 90 degrees gives the original image.
    np.testing.assert_array_equal(np.rot90(block, -k, axes=(1, 2)), images)
  # Pixel check for 90 degrees, independent of np.rot90: out[i, j] = in[j, W-1-i].
  np.testing.assert_array_equal(rotated[3, 1, 2], images[0, 2, 5 - 1 - 1])
  # The four rotations of a non-symmetric image all differ.
  assert len({rotated[3 * k].tobytes() for k in range(4)}) == 4


def test_non_square_images_are_rejected():
  with pytest.raises(errors.ConfigError, match="square"):
    rotnet.rotate_batch(jnp.zeros((2, 4, 6, 3)))


def test_loss_is_cross_entropy_over_all_four_rotations():
  method = rotnet.Method(tiny_config())
  view = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3))
  params, batch_stats, state = jax.jit(method.init)(jax.random.PRNGKey(0), view)
  loss, out = jax.jit(method.loss)(params, batch_stats, state, method_batch({"v1": view}),
                                   step_rngs(jax.random.PRNGKey(2)), 0)
  # Reference: encoder + head on the 16 rotated images, numpy softmax cross-entropy.
  x = jnp.concatenate([jnp.rot90(view, k, axes=(1, 2)) for k in range(4)])
  h, _ = method.encode(params["encoder"], batch_stats["encoder"], x)
  logits, _ = method.apply_train(method.head, params["head"], batch_stats["head"], h)
  logits = np.asarray(logits, np.float64)
  labels = np.repeat(np.arange(4), 4)
  log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  np.testing.assert_allclose(loss, -log_softmax[np.arange(16), labels].mean(), rtol=1e-5)
  np.testing.assert_allclose(out.metrics["rotation_accuracy"],
                             np.mean(logits.argmax(-1) == labels), rtol=1e-6)
  np.testing.assert_allclose(out.features, h[:4], rtol=1e-4, atol=1e-5)  # unrotated copies
  assert set(out.batch_stats) == {"encoder", "head"}


def test_rotnet_takes_exactly_one_view():
  config = tiny_config()
  config.views.v2 = config.views.v1
  with pytest.raises(errors.ConfigError, match="trains on the view group v1, but config.views has v1, v2"):
    rotnet.Method(config)


def test_train_steps_learn_rotations_of_a_fixed_batch():
  """Steps on one fixed batch lower the rotation loss: head and encoder train on the task."""
  config = tiny_config()
  config.optimizer.base_learning_rate = 0.4
  config.optimizer.warmup_epochs = 0.0
  mesh = mesh_lib.create_mesh(2)
  trainer = pretrain.Trainer(config, INFO, mesh)
  state = trainer.init_state(0)
  batch = mesh_lib.to_global(synthetic_batch(config), mesh)
  losses = []
  for _ in range(6):
    state, metrics = trainer.train_step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.8 * losses[0], losses
