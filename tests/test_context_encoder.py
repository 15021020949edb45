"""Context encoder: masks cover the configured fraction; the L2 loss sees removed pixels only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx.methods import context_encoder as ce
from conftest import method_batch, step_rngs, tiny_config


@pytest.mark.parametrize("kind, size, fraction", [
    ("center", 20, 0.25), ("center", 32, 0.25), ("random_block", 20, 0.25),
    ("random_blocks", 32, 0.25)])
def test_masks_cover_the_configured_fraction(kind, size, fraction):
  masks = np.asarray(ce.make_masks(jax.random.PRNGKey(0), 256, size, kind, fraction, 4))
  assert masks.shape == (256, size, size, 1) and set(np.unique(masks)) <= {0.0, 1.0}
  covered = masks.mean(axis=(1, 2, 3))
  if kind == "random_blocks":
    assert abs(covered.mean() - fraction) < 0.01  # on average over 256 images
    assert covered.std() > 0
  else:
    side = ce.square_side(size, fraction)
    np.testing.assert_allclose(covered, side * side / size ** 2)  # every image, exactly
    assert abs(side * side / size ** 2 - fraction) < 2 * side / size ** 2
  if kind == "center":
    side = ce.square_side(size, fraction)
    top = (size - side) // 2
    assert masks[0, top:top + side, top:top + side].all() and masks[0].sum() == side * side
  if kind == "random_block":
    assert len({m.tobytes() for m in masks[:20]}) > 10  # placed at random


def test_the_loss_ignores_pixels_outside_the_mask():
  rng = np.random.default_rng(0)
  target = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
  mask = np.asarray(ce.make_masks(jax.random.PRNGKey(0), 2, 8, "center", 0.25, 4))
  prediction = rng.normal(size=target.shape).astype(np.float32)
  loss = ce.masked_l2(jnp.asarray(prediction), jnp.asarray(target), jnp.asarray(mask))
  m = mask.astype(bool)[..., 0]
  np.testing.assert_allclose(loss, np.mean((prediction[m] - target[m]) ** 2), rtol=1e-6)
  # Changing the prediction outside the mask changes nothing; its gradient there is 0.
  outside = prediction + 100 * (1 - mask)
  np.testing.assert_allclose(ce.masked_l2(jnp.asarray(outside), jnp.asarray(target),
                                          jnp.asarray(mask)), loss, rtol=1e-6)
  grad = np.asarray(jax.grad(ce.masked_l2)(jnp.asarray(prediction), jnp.asarray(target),
                                           jnp.asarray(mask)))
  assert np.all(grad[~m] == 0) and np.all(grad[m] != 0)


def test_the_encoder_never_sees_the_removed_pixels_and_the_decoder_fills_them():
  config = tiny_config("context_encoder", batch_size=4)
  method = ce.Method(config)
  view = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3))
  params, bs, state = method.init(jax.random.PRNGKey(0), view)
  rngs = step_rngs(jax.random.PRNGKey(2))
  loss, out = method.loss(params, bs, state, method_batch({"v1": view}), rngs, 0)
  mask = ce.make_masks(rngs.augment, 4, 16, "center", 0.25, 4)
  # What is under the mask cannot change the loss's input, only its target.
  changed = view + 5.0 * mask
  _, out2 = method.loss(params, bs, state, method_batch({"v1": changed}), rngs, 0)
  np.testing.assert_allclose(out2.features, out.features, rtol=1e-5, atol=1e-6)
  # Reference loss from the modules applied by hand.
  enc, _ = method.apply_train(method.encoder, params["encoder"], bs["encoder"],
                              view * (1 - mask))
  prediction, _ = method.apply_train(method.decoder(16), params["decoder"], bs["decoder"],
                                     enc.feature_maps[method.last_map])
  assert prediction.shape == (4, 16, 16, 3)
  m = np.asarray(mask, bool)[..., 0]
  ref = np.mean((np.asarray(prediction)[m] - np.asarray(view)[m]) ** 2)
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
