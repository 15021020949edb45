"""Tests for sslx/data/augment.py.

Expected values come from numpy / colorsys references written from
the formulas in the module docstring, never from the module itself.
"""

import colorsys
import functools
import itertools

import chex
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from sslx.data import augment
from sslx.data import views as views_lib
from sslx.config import defaults as config_defaults
from sslx import errors

_LUMA = np.array([0.2989, 0.587, 0.114])
_ALL_OFF = dict(color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0,
                solarize_prob=0.0)
_MEAN = (0.5, 0.4, 0.3)
_STD = (0.25, 0.2, 0.3)


def _image(seed=0, shape=(6, 7, 3)):
  return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _batch(seed=0, n=16, size=12):
  return _image(seed, (n, size, size, 3))


def _view(**overrides):
  return config_defaults.view(**{**_ALL_OFF, **overrides})


@functools.lru_cache(maxsize=None)
def _jitted_photometric(params):
  return jax.jit(lambda k, x: augment.photometric(k, x, params))


def _photometric(key, images, **overrides):
  # One compiled function per distinct view, shared by the tests.
  params = augment.ViewParams.from_config(_view(**overrides))
  return np.asarray(_jitted_photometric(params)(key, jnp.asarray(images)))


# ---------------------------------------------------------------------------
# numpy references.
# ---------------------------------------------------------------------------


def ref_brightness(x, f):
  return np.clip(x * f, 0, 1)


def ref_contrast(x, f):
  m = (x @ _LUMA).mean()
  return np.clip(f * x + (1 - f) * m, 0, 1)


def ref_saturation(x, f):
  gray = (x @ _LUMA)[..., None]
  return np.clip(f * x + (1 - f) * gray, 0, 1)


def ref_hue(x, delta):
  out = np.empty_like(x)
  for idx in np.ndindex(x.shape[:-1]):
    h, s, v = colorsys.rgb_to_hsv(*x[idx])
    out[idx] = colorsys.hsv_to_rgb((h + delta) % 1.0, s, v)
  return np.clip(out, 0, 1)


def ref_grayscale(x):
  return np.repeat((x @ _LUMA)[..., None], 3, axis=-1)


def ref_blur(x, sigma, size):
  r = size // 2
  t = np.arange(-r, r + 1)
  k = np.exp(-t**2 / (2 * sigma**2))
  k /= k.sum()
  k2 = np.outer(k, k)
  padded = np.pad(x, ((r, r), (r, r), (0, 0)), mode="reflect")
  out = np.zeros_like(x, dtype=np.float64)
  h, w = x.shape[:2]
  for i in range(h):
    for j in range(w):
      patch = padded[i:i + size, j:j + size]
      out[i, j] = np.einsum("ab,abc->c", k2, patch)
  return out


def ref_solarize(x, threshold):
  return np.where(x < threshold, x, 1 - x)


_REF_OPS = {augment.BRIGHTNESS: ref_brightness, augment.CONTRAST: ref_contrast,
            augment.SATURATION: ref_saturation, augment.HUE: ref_hue}


# ---------------------------------------------------------------------------
# Single ops against the references.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fn,ref,factor", [
    (augment.adjust_brightness, ref_brightness, 1.35),
    (augment.adjust_brightness, ref_brightness, 0.6),
    (augment.adjust_contrast, ref_contrast, 1.4),
    (augment.adjust_contrast, ref_contrast, 0.3),
    (augment.adjust_saturation, ref_saturation, 1.2),
    (augment.adjust_saturation, ref_saturation, 0.0),
    (augment.adjust_hue, ref_hue, 0.1),
    (augment.adjust_hue, ref_hue, -0.37),
])
def test_colour_ops_match_reference(fn, ref, factor):
  x = _image()
  chex.assert_trees_all_close(np.asarray(fn(jnp.asarray(x), factor)),
                              ref(x.astype(np.float64), factor), atol=1e-5)


def test_grayscale_matches_reference():
  x = _image()
  chex.assert_trees_all_close(np.asarray(augment.to_grayscale(jnp.asarray(x))),
                              ref_grayscale(x.astype(np.float64)), atol=1e-6)


def test_solarize_matches_reference():
  x = _image()
  chex.assert_trees_all_close(np.asarray(augment.solarize(jnp.asarray(x), 0.4)),
                              ref_solarize(x, 0.4))


@pytest.mark.parametrize("height,fraction,size", [
    (224, 0.1, 23), (32, 0.1, 3), (28, 0.1, 3), (96, 0.1, 9), (8, 0.1, 3),
    (16, 0.25, 5)])
def test_blur_kernel_size(height, fraction, size):
  assert augment.blur_kernel_size(height, fraction) == size


@pytest.mark.parametrize("sigma,size", [(0.7, 3), (1.3, 5), (2.0, 7)])
def test_blur_matches_reference(sigma, size):
  x = _image(1, (9, 8, 3))
  got = augment.gaussian_blur(jnp.asarray(x), sigma, size)
  chex.assert_trees_all_close(np.asarray(got), ref_blur(x, sigma, size),
                              atol=1e-6)


def test_blur_in_pipeline_matches_reference():
  # sigma_min == sigma_max pins the random sigma; 0.25 * 16 px -> 5 taps.
  x = _batch(2, n=2, size=16)
  got = _photometric(jax.random.key(0), x, blur_prob=1.0, blur_sigma_min=1.5,
                     blur_sigma_max=1.5, blur_kernel_fraction=0.25)
  want = np.stack([ref_blur(im, 1.5, 5) for im in x])
  chex.assert_trees_all_close(got, want, atol=1e-6)


def _ref_jitter(x, order, factors):
  out = x.astype(np.float64)
  for op in order:
    out = _REF_OPS[op](out, factors[op])
  return out


@pytest.fixture(scope="module")
def jitted_color_jitter():
  return jax.jit(augment.color_jitter)


def test_color_jitter_all_orders_match_reference(jitted_color_jitter):
  x = _image(3)
  factors = np.array([1.3, 0.7, 1.6, 0.15], np.float32)
  for order in itertools.permutations(range(4)):
    want = _ref_jitter(x, order, factors)
    got = jitted_color_jitter(jnp.asarray(x), np.array(order), factors)
    chex.assert_trees_all_close(np.asarray(got), want, atol=1e-5)


def test_color_jitter_vmapped_batch_matches_reference():
  # The real path is jit(vmap(...)) with a different order per image; XLA
  # compiles that differently from the single-image case above.
  rng = np.random.default_rng(9)
  x = _batch(9, n=16, size=6)
  orders = np.stack([rng.permutation(4) for _ in range(16)]).astype(np.int32)
  factors = np.concatenate([rng.uniform(0.5, 1.5, (16, 3)),
                            rng.uniform(-0.3, 0.3, (16, 1))],
                           axis=1).astype(np.float32)
  got = np.asarray(jax.jit(jax.vmap(augment.color_jitter))(x, orders, factors))
  want = np.stack([_ref_jitter(*a) for a in zip(x, orders, factors)])
  chex.assert_trees_all_close(got, want, atol=1e-5)


def test_photometric_jitter_matches_reference():
  # Row b of uniform(key, (B, _NUM_UNIFORMS)) drives image b (documented);
  # sample_jitter turns it into the order and factors the reference uses.
  x = _batch(10, n=8, size=6)
  key = jax.random.key(4)
  got = _photometric(key, x, color_jitter_prob=1.0)
  params = augment.ViewParams.from_config(_view(color_jitter_prob=1.0))
  u = jax.random.uniform(key, (8, augment._NUM_UNIFORMS))
  orders, factors = jax.vmap(lambda r: augment.sample_jitter(r, params))(u)
  want = np.stack([_ref_jitter(*a) for a in zip(x, np.asarray(orders),
                                                   np.asarray(factors))])
  chex.assert_trees_all_close(got, want, atol=1e-5)


def test_order_changes_the_result(jitted_color_jitter):
  # Brightness 1.6 saturates bright pixels before or after contrast 0.5
  # pulls them towards the mean, so the two orders must disagree.
  x = _image(4)
  factors = np.array([1.6, 0.5, 1.0, 0.0], np.float32)
  a = jitted_color_jitter(jnp.asarray(x), np.array([0, 1, 2, 3]), factors)
  b = jitted_color_jitter(jnp.asarray(x), np.array([1, 0, 2, 3]), factors)
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-2


def test_sampled_orders_are_permutations_that_vary_per_image():
  params = augment.ViewParams.from_config(config_defaults.view())
  u = jax.random.uniform(jax.random.key(0), (2000, augment._NUM_UNIFORMS))
  orders, factors = jax.vmap(lambda r: augment.sample_jitter(r, params))(u)
  orders = np.asarray(orders)
  np.testing.assert_array_equal(np.sort(orders, axis=1),
                                np.tile(np.arange(4), (2000, 1)))
  assert len({tuple(o) for o in orders}) == 24  # every order occurs
  factors = np.asarray(factors)
  for i, (lo, hi) in enumerate([(0.6, 1.4), (0.6, 1.4), (0.8, 1.2),
                                (-0.1, 0.1)]):
    assert lo <= factors[:, i].min() and factors[:, i].max() <= hi
    assert factors[:, i].max() - factors[:, i].min() > 0.9 * (hi - lo)


# ---------------------------------------------------------------------------
# The random pipeline.
# ---------------------------------------------------------------------------


def test_all_probabilities_zero_is_identity():
  x = _batch()
  got = _photometric(jax.random.key(0), x)
  np.testing.assert_array_equal(got, x)
  views = config_defaults.base_config().views
  for v in views.values():
    v.update(_ALL_OFF)
  u8 = (x * 255).astype(np.uint8)
  images = jnp.asarray(np.stack([u8, u8[::-1]], axis=1))
  outs = _views_as_tuple(augment.augment_views)(jax.random.key(1), images, views, _MEAN, _STD)
  for i, out in enumerate(outs):
    want = augment.normalize(jnp.asarray(images[:, i], jnp.float32) / 255.0,
                             _MEAN, _STD)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(want))


def test_probability_zero_ops_are_not_traced():
  x = jnp.asarray(_batch())
  key = jax.random.key(0)
  params = augment.ViewParams.from_config(_view())
  assert not jax.make_jaxpr(
      lambda k, y: augment.photometric(k, y, params))(key, x).eqns
  # BYOL's view 1 without blur: no Gaussian weights (exp) in the graph.
  no_blur = augment.ViewParams.from_config(config_defaults.view(blur_prob=0.0))
  with_blur = augment.ViewParams.from_config(config_defaults.view())
  trace = lambda p: str(jax.make_jaxpr(
      lambda k, y: augment.photometric(k, y, p))(key, x))
  assert " exp " not in trace(no_blur) and " exp " in trace(with_blur)


def test_normalize():
  x = _batch()
  chex.assert_trees_all_close(
      np.asarray(augment.normalize(jnp.asarray(x), _MEAN, _STD)),
      (x - np.array(_MEAN)) / np.array(_STD), atol=1e-6)


@pytest.mark.parametrize("overrides", [
    dict(color_jitter_prob=1.0),
    dict(grayscale_prob=1.0),
    # sigma near the default minimum of 0.1 is a near-identity kernel.
    dict(blur_prob=1.0, blur_sigma_min=1.0),
    dict(solarize_prob=1.0),
])
def test_probability_one_changes_every_image(overrides):
  x = _batch(5)
  got = _photometric(jax.random.key(0), x, **overrides)
  diff = np.abs(got - x).reshape(len(x), -1).max(axis=1)
  assert (diff > 1e-3).all(), diff


def test_partial_probability_selects_whole_images():
  # Each image is either bit-identical to its input or exactly solarized.
  x = _batch(6, n=64)
  got = _photometric(jax.random.key(3), x, solarize_prob=0.5)
  solarized = ref_solarize(x, 0.5)
  kept = (got == x).reshape(64, -1).all(axis=1)
  flipped = (got == solarized).reshape(64, -1).all(axis=1)
  assert (kept | flipped).all()
  assert 10 < kept.sum() < 54


def test_uint8_and_unit_float_crops_give_the_same_views():
  # The pipeline hands uint8 crops to the device; floats in [0, 1] are accepted too. Scaling
  # either twice (or not at all) would change every view, not only its range.
  f = _jitted_augment_views(jnp.float32)
  images = _uint8_views(4)
  from_uint8 = f(jax.random.key(2), jnp.asarray(images))
  from_float = f(jax.random.key(2), jnp.asarray(images, jnp.float32) / 255.0)
  for a, b in zip(from_uint8, from_float):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
  # ...and they are the normalised images: undoing the normalisation lands in [0, 1].
  unnormalised = np.asarray(from_uint8[0]) * np.asarray(_STD) + np.asarray(_MEAN)
  assert unnormalised.min() > -1e-5 and unnormalised.max() < 1 + 1e-5
  assert unnormalised.max() > 0.5  # not collapsed to 0 by a double scaling


def test_grey_stays_grey():
  grey = np.repeat(_batch(8)[..., :1], 3, axis=-1)
  got = _photometric(jax.random.key(0), grey, color_jitter_prob=1.0,
                     grayscale_prob=0.5, blur_prob=0.5, solarize_prob=0.5)
  chex.assert_trees_all_close(got[..., 1:], got[..., :2], atol=1e-6)


def test_bad_config_raises():
  with pytest.raises(errors.ConfigError):
    augment.ViewParams.from_config(config_defaults.view(blur_prob=1.5))
  with pytest.raises(errors.ConfigError):
    augment.ViewParams.from_config(config_defaults.view(hue=0.7))
  views = config_defaults.base_config().views
  with pytest.raises(errors.ConfigError):  # 3 crops of images, groups of 1
    augment.augment_views(jax.random.key(0),
                          {"v1": jnp.zeros((2, 3, 8, 8, 3), jnp.uint8),
                           "v2": jnp.zeros((2, 1, 8, 8, 3), jnp.uint8)}, views, _MEAN, _STD)
  with pytest.raises(errors.ConfigError, match="groups"):  # a group the config lacks
    augment.augment_views(jax.random.key(0), {"v3": jnp.zeros((2, 1, 8, 8, 3), jnp.uint8)},
                          views, _MEAN, _STD)


def _views_as_tuple(fn):
  """augment_views on [B, V, S, S, 3] crops of groups v1..vV of one crop each -> V arrays."""
  def wrapped(rng, images, views_config, mean, std, dtype=jnp.float32):
    crops = {f"v{i + 1}": images[:, i:i + 1] for i in range(images.shape[1])}
    out = fn(rng, crops, views_config, mean, std, dtype)
    return tuple(out[f"v{i + 1}"][:, 0] for i in range(images.shape[1]))
  return wrapped


# ---------------------------------------------------------------------------
# augment_views: shapes, views, keys, sharding.
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _jitted_augment_views(dtype, cheap=False):
  views = config_defaults.base_config().views
  if cheap:  # a small graph, where only shapes and dtypes matter
    for v in views.values():
      v.update({**_ALL_OFF, "solarize_prob": 0.5})
  return jax.jit(functools.partial(_views_as_tuple(augment.augment_views), views_config=views,
                                   mean=_MEAN, std=_STD, dtype=dtype))


def _uint8_views(seed=0, n=16, size=12):
  x = np.random.default_rng(seed).integers(0, 256, (n, 1, size, size, 3),
                                           dtype=np.uint8)
  return np.repeat(x, 2, axis=1)  # the same crop in both views


@pytest.mark.parametrize("dtype,cheap", [(jnp.float32, False),
                                         (jnp.bfloat16, True)])
def test_augment_views_shapes_and_dtypes(dtype, cheap):
  outs = _jitted_augment_views(dtype, cheap)(jax.random.key(0), _uint8_views())
  assert len(outs) == 2
  chex.assert_shape(outs, (16, 12, 12, 3))
  chex.assert_type(outs, dtype)


def test_byol_views_differ_and_keys_matter():
  f = _jitted_augment_views(jnp.float32)
  images = _uint8_views(1)
  a1, a2 = f(jax.random.key(0), images)
  b1, b2 = f(jax.random.key(0), images)
  c1, _ = f(jax.random.key(1), images)
  # Same input in both views: only the augmentation can make them differ.
  assert np.abs(np.asarray(a1) - np.asarray(a2)).max() > 0.1
  np.testing.assert_array_equal(np.asarray(a1), np.asarray(b1))
  np.testing.assert_array_equal(np.asarray(a2), np.asarray(b2))
  assert np.abs(np.asarray(a1) - np.asarray(c1)).max() > 0.1


def test_sharded_batch_matches_unsharded():
  devices = np.array(jax.devices())
  assert len(devices) == 8, "conftest.py should provide 8 CPU devices"
  mesh = Mesh(devices, ("data",))
  images = _uint8_views(2, n=32)
  f = _jitted_augment_views(jnp.float32)
  rng = jax.random.key(5)
  want = f(rng, jnp.asarray(images))
  sharded = jax.device_put(images, NamedSharding(mesh, P("data")))
  got = f(rng, sharded)
  assert len(got[0].sharding.device_set) == 8
  # Bitwise: augment.py fixes the one reduction order XLA would otherwise
  # choose per shard shape.
  for g, w in zip(got, want):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_multi_crop_groups_number_their_crops_in_order():
  """Groups of several crops and sizes: crop v of the whole list uses fold_in(rng, v)."""
  groups = config_defaults.base_config().views
  groups.v1.update(num_crops=2)
  groups.v2.update(num_crops=3, crop_size=8)
  parsed = views_lib.parse_groups(groups, image_size=12, declared=("v1", "v2"))
  assert [(g.name, g.num_crops, g.crop_size) for g in parsed] == [("v1", 2, 12), ("v2", 3, 8)]
  rng = np.random.default_rng(3)
  crops = {"v1": rng.integers(0, 256, (4, 2, 12, 12, 3), dtype=np.uint8),
           "v2": rng.integers(0, 256, (4, 3, 8, 8, 3), dtype=np.uint8)}
  key = jax.random.key(7)
  out = jax.jit(lambda k, c: augment.augment_views(k, c, parsed, _MEAN, _STD))(key, crops)
  chex.assert_shape(out["v1"], (4, 2, 12, 12, 3))
  chex.assert_shape(out["v2"], (4, 3, 8, 8, 3))
  for name, first in (("v1", 0), ("v2", 2)):
    p = augment.ViewParams.from_config(groups[name])
    for j in range(crops[name].shape[1]):
      want = augment.normalize(augment.photometric(jax.random.fold_in(key, first + j),
                                                   crops[name][:, j], p), _MEAN, _STD)
      np.testing.assert_allclose(np.asarray(out[name][:, j]), np.asarray(want), atol=1e-5)
