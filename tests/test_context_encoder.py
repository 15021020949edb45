"""Context encoder: masks cover the configured fraction; the L2 loss sees removed pixels only;
the preset's decoder reads the pooled features only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx.methods import context_encoder as ce
from sslx.models import decoder as decoder_lib
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


def _preset_mask(config, rngs):
  """The [4, 16, 16, 1] masks the mnist5k preset draws in a step: a square at a random place."""
  assert config.context_encoder.mask == "random_block"  # the mnist5k preset's
  mask = ce.make_masks(rngs.method("context_encoder/masks"), 4, 16, "random_block", 0.25, 4)
  assert len({np.asarray(m).tobytes() for m in mask}) > 1  # a square placed per image
  return mask


def _preset_decoder(config, method, enc):
  """The decoder the mnist5k preset trains and its input: the pooled features, through a
  dense layer to a map of the last feature map's shape."""
  c = config.context_encoder
  assert c.decoder_input == "pooled"  # the mnist5k preset's
  _, grid, _, width = enc.feature_maps[method.last_map].shape
  decoder = decoder_lib.CodeDecoder(channels=tuple(c.decoder_channels), out_channels=3,
                                    output_size=16, grid=grid, width=width)
  return decoder, enc.pooled


def test_the_encoder_never_sees_the_removed_pixels_and_the_decoder_fills_them():
  config = tiny_config("context_encoder", batch_size=4)
  method = ce.Method(config)
  view = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3))
  params, bs, state = method.init(jax.random.PRNGKey(0), view)
  rngs = step_rngs(jax.random.PRNGKey(2))
  loss, out = method.loss(params, bs, state, method_batch({"v1": view}), rngs, 0)
  mask = _preset_mask(config, rngs)
  # What is under the mask cannot change the loss's input, only its target.
  changed = view + 5.0 * mask
  _, out2 = method.loss(params, bs, state, method_batch({"v1": changed}), rngs, 0)
  np.testing.assert_allclose(out2.features, out.features, rtol=1e-5, atol=1e-6)
  # Reference loss from the modules applied by hand.
  enc, _ = method.apply_train(method.encoder, params["encoder"], bs["encoder"],
                              view * (1 - mask))
  decoder, code = _preset_decoder(config, method, enc)
  prediction, _ = method.apply_train(decoder, params["decoder"], bs["decoder"], code)
  assert prediction.shape == (4, 16, 16, 3)
  m = np.asarray(mask, bool)[..., 0]
  ref = np.mean((np.asarray(prediction)[m] - np.asarray(view)[m]) ** 2)
  np.testing.assert_allclose(loss, ref, rtol=1e-5)


def test_adversarial_losses_against_numpy():
  rng = np.random.default_rng(3)
  real, fake = rng.normal(size=6).astype(np.float32), rng.normal(size=6).astype(np.float32)
  d_loss, g_loss = ce.adversarial_losses(jnp.asarray(real), jnp.asarray(fake), jnp.asarray(fake))
  sigmoid = lambda z: 1 / (1 + np.exp(-z.astype(np.float64)))
  # Goodfellow et al. 2014: D maximises log D(x) + log(1 - D(G(z))); G minimises -log D(G(z)).
  np.testing.assert_allclose(
      d_loss, -np.mean(np.log(sigmoid(real))) - np.mean(np.log(1 - sigmoid(fake))), rtol=1e-5)
  np.testing.assert_allclose(g_loss, -np.mean(np.log(sigmoid(fake))), rtol=1e-5)


def test_the_adversarial_term_moves_each_player_by_its_own_loss_only():
  w = 0.25  # large, so that a leak of either term would show
  config = tiny_config("context_encoder", batch_size=4)
  config.context_encoder.update(adversarial_weight=w, discriminator_channels=(8, 16))
  method = ce.Method(config)
  assert method.param_groups()["discriminator"].learning_rate_multiplier == 0.1
  assert method.param_group(("discriminator", "conv0", "kernel")) == "discriminator"
  assert method.param_group(("encoder", "stem", "kernel")) is None
  view = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3))
  params, bs, state = method.init(jax.random.PRNGKey(0), view)
  assert set(params) == {"encoder", "decoder", "discriminator"}
  rngs = step_rngs(jax.random.PRNGKey(2))
  mask = _preset_mask(config, rngs)

  def by_hand(p):
    """(L2, D's loss, G's loss) with every module applied by hand, no stop_gradient."""
    enc, _ = method.apply_train(method.encoder, p["encoder"], bs["encoder"], view * (1 - mask))
    decoder, code = _preset_decoder(config, method, enc)
    prediction, _ = method.apply_train(decoder, p["decoder"], bs["decoder"], code)
    d = lambda x: method.discriminator.apply({"params": p["discriminator"]}, x)
    real, fake = d(view * mask), d(prediction * mask)
    l2 = ce.masked_l2(prediction, view, mask)
    d_loss = jnp.mean(jax.nn.softplus(-real)) + jnp.mean(jax.nn.softplus(fake))
    return l2, d_loss, jnp.mean(jax.nn.softplus(-fake))

  loss_fn = lambda p: method.loss(p, bs, state, method_batch({"v1": view}), rngs, 0)[0]
  loss, out = method.loss(params, bs, state, method_batch({"v1": view}), rngs, 0)
  l2, d_loss, g_loss = by_hand(params)
  np.testing.assert_allclose(loss, (1 - w) * l2 + w * g_loss + d_loss, rtol=1e-5)
  np.testing.assert_allclose(out.metrics["generator_loss"], g_loss, rtol=1e-5)
  grads = jax.grad(loss_fn)(params)
  # The discriminator: the gradient of its own loss alone (the generator's
  # term does not reach it) ...
  d_grads = jax.grad(lambda p: by_hand(p)[1])(params)["discriminator"]
  chex_close = lambda a, b: jax.tree.map(
      lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-4, atol=1e-6), a, b)
  chex_close(grads["discriminator"], d_grads)
  # ... and the encoder and decoder: L2 plus the generator's term alone (the
  # discriminator's loss does not reach them through the prediction).
  g_grads = jax.grad(lambda p: (1 - w) * by_hand(p)[0] + w * by_hand(p)[2])(params)
  chex_close({k: grads[k] for k in ("encoder", "decoder")},
             {k: g_grads[k] for k in ("encoder", "decoder")})
  full = jax.grad(lambda p: sum(by_hand(p)))(params)  # a leak would look like this
  assert not np.allclose(full["discriminator"]["logit"]["kernel"],
                         grads["discriminator"]["logit"]["kernel"], rtol=1e-3)


def test_without_the_adversarial_term_there_is_no_discriminator():
  method = ce.Method(tiny_config("context_encoder", batch_size=4))
  params, _, _ = method.init(jax.random.PRNGKey(0), jnp.zeros((4, 16, 16, 3)))
  assert set(params) == {"encoder", "decoder"} and method.param_groups() == {}


def test_the_code_decoder_is_a_dense_layer_and_relu_then_the_conv_decoder():
  decoder = decoder_lib.CodeDecoder(channels=(8, 4), out_channels=3, output_size=12, grid=3,
                                    width=5)
  code = jax.random.normal(jax.random.PRNGKey(0), (2, 7))
  variables = decoder.init(jax.random.PRNGKey(1), code, train=False)
  dense = variables["params"]["expand"]
  assert dense["kernel"].shape == (7, 3 * 3 * 5)
  # numpy: relu(code W + b), reshaped row-major to a 3 x 3 map of 5 channels.
  grid = np.maximum(np.asarray(code, np.float64) @ np.asarray(dense["kernel"], np.float64)
                    + np.asarray(dense["bias"], np.float64), 0).reshape(2, 3, 3, 5)
  conv = decoder_lib.ConvDecoder(channels=(8, 4), out_channels=3, output_size=12)
  ref = conv.apply({"params": variables["params"]["decoder"],
                    "batch_stats": variables["batch_stats"]["decoder"]},
                   jnp.asarray(grid, jnp.float32), train=False)
  out = decoder.apply(variables, code, train=False)
  assert out.shape == (2, 12, 12, 3)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("decoder_input", ["pooled", "feature_map"])
def test_the_decoder_reads_what_decoder_input_names_and_nothing_else(decoder_input):
  config = tiny_config("context_encoder", batch_size=4)
  config.context_encoder.decoder_input = decoder_input
  method = ce.Method(config)
  view = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3))
  params, bs, _ = method.init(jax.random.PRNGKey(0), view)
  out = method.encoder.apply({"params": params["encoder"], "batch_stats": bs["encoder"]}, view,
                             train=False)
  last = method.last_map

  def predict(o):
    decoder, x = method.decoder_for(o, 16)
    return np.asarray(decoder.apply({"params": params["decoder"], "batch_stats": bs["decoder"]},
                                    x, train=False))

  maps = dict(out.feature_maps)
  maps[last] = maps[last] + jax.random.normal(jax.random.PRNGKey(2), maps[last].shape)
  other_map = out.replace(feature_maps=maps)
  other_pooled = out.replace(pooled=out.pooled + 1.0)
  moved_by_map = not np.allclose(predict(other_map), predict(out), atol=1e-4)
  moved_by_pooled = not np.allclose(predict(other_pooled), predict(out), atol=1e-4)
  assert (moved_by_map, moved_by_pooled) == ((False, True) if decoder_input == "pooled"
                                             else (True, False))
