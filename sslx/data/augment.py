"""On-device photometric augmentations for self-supervised pretraining.

The host tf.data pipeline decodes, random-resized-crops and flips; it delivers
`{group: uint8[B, n, S, S, 3]}` (the crops of each view group, sslx/data/views.py).
Inside the jitted train step, `augment_views` turns them into normalised float
views, each group with its own parameters. Colour ops run
here rather than on the host because host CPUs are the bottleneck on
accelerators, and because a JAX key (`fold_in(key, step)`) then drives all the
randomness, so a resumed run reproduces the same augmentations.

Per image, independently, in this order (BYOL, Grill et al. 2020, Appendix B;
SimCLR, Chen et al. 2020, Appendix A):

1. colour jitter with prob `color_jitter_prob`: brightness, contrast,
   saturation and hue in a random order drawn per image (as torchvision's
   `ColorJitter` and SimCLR's `color_jitter_rand` do), clipping to [0, 1] after
   each op. Conventions are torchvision's (`transforms.functional`), which
   SimCLR-v2 (`impl='simclrv2'`) and the BYOL paper's text follow:
   brightness multiplies by f ~ U[max(0, 1-b), 1+b]; contrast blends with the
   mean of the image's grayscale, f ~ U[max(0, 1-c), 1+c]; saturation blends
   with the grayscale image, f ~ U[max(0, 1-s), 1+s]; hue shifts the HSV hue by
   d ~ U[-h, h] of the full circle (torchvision `adjust_hue`, TF
   `random_hue(max_delta=h)` as used by SimCLR-v2).
2. grayscale with prob `grayscale_prob` (ITU-R 601 luma, 3 equal channels).
3. Gaussian blur with prob `blur_prob`, sigma ~ U[sigma_min, sigma_max].
4. solarize with prob `solarize_prob`: x -> x if x < threshold else 1 - x.

Each op is computed for every image and chosen with `jnp.where`, so an image
whose coin says "no" keeps bit-identical values. Probabilities are static
(config), so an op with probability 0 is left out of the trace entirely.

Randomness: crop v (numbered over all groups in order) uses `fold_in(rng, v)`;
image b of a crop uses row b of
`uniform(view_key, (B, 13))`. Both are defined by the key and the index alone,
not by how the batch is sharded, so results do not depend on the device count.
"""

import dataclasses
from typing import Any, Sequence, Union

import dm_pix as pix
import jax
import jax.numpy as jnp
import ml_collections

from sslx import errors
from sslx.data import views

# Op ids of the colour jitter; `order` arrays hold a permutation of these.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3

# Math is done in float32 whatever the output dtype: bfloat16 has 8 bits of
# mantissa, too coarse to chain four colour ops and a blur without banding.
_COMPUTE_DTYPE = jnp.float32

ArrayLike = Union[jax.Array, Sequence[float], float]


@dataclasses.dataclass(frozen=True)
class ViewParams:
  """The photometric fields of one view, validated, as Python numbers.

  Plain floats keep every probability static at trace time, which is what
  lets probability-0 ops vanish from the compiled graph.
  """
  color_jitter_prob: float
  brightness: float
  contrast: float
  saturation: float
  hue: float
  grayscale_prob: float
  blur_prob: float
  blur_sigma_min: float
  blur_sigma_max: float
  blur_kernel_fraction: float
  solarize_prob: float
  solarize_threshold: float

  @classmethod
  def from_config(cls, cfg: Any, name: str = "view") -> "ViewParams":
    """Reads and checks the photometric fields of a view group ConfigDict."""
    problems = views.group_problems({name: cfg})
    if problems:
      raise errors.ConfigError(" ".join(problems))
    return cls(**{f.name: float(cfg[f.name]) for f in dataclasses.fields(cls)})

  @classmethod
  def from_group(cls, group: views.ViewGroup) -> "ViewParams":
    return cls(**group.photometric)


# ----------------------------------------------------------------------------
# Deterministic ops on one float image [H, W, 3] in [0, 1].
# ----------------------------------------------------------------------------


def _luma(image: jax.Array) -> jax.Array:
  """ITU-R 601 luma, [H, W, 1]: dm-pix uses exactly 0.2989, 0.587, 0.114."""
  return pix.rgb_to_grayscale(image)


def _mean_fixed_order(x: jax.Array) -> jax.Array:
  """Mean of all elements, summed in a fixed pairwise tree.

  `jnp.mean` lets XLA choose the reduction order, and it chooses differently
  for a batch of 32 and a shard of 4 (measured: 1-ulp differences in the
  contrast op between a sharded and an unsharded run on CPU). Adding halves
  elementwise fixes the order, so results are bitwise identical whatever the
  batch sharding. log2(H * W) elementwise adds: cheap.
  """
  flat = x.reshape(-1)
  n = flat.shape[0]
  width = 1 << max(0, (n - 1).bit_length())
  flat = jnp.pad(flat, (0, width - n))  # + 0.0 is exact
  while flat.shape[0] > 1:
    half = flat.shape[0] // 2
    flat = flat[:half] + flat[half:]
  return flat[0] / n


def _blend(image: jax.Array, factor: jax.Array, other: jax.Array) -> jax.Array:
  """torchvision's `_blend`: f * image + (1 - f) * other, clipped to [0, 1]."""
  factor = jnp.asarray(factor, image.dtype)
  return jnp.clip(factor * image + (1 - factor) * other, 0.0, 1.0)


def adjust_brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
  """Multiplies by `factor` (torchvision / SimCLR-v2; pix's is additive)."""
  return _blend(image, factor, jnp.zeros((), image.dtype))


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
  """Blends with the mean grayscale level (torchvision; `pix.adjust_contrast`
  is TF's, which blends each channel with its own mean)."""
  return _blend(image, factor, _mean_fixed_order(_luma(image)))


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
  """Blends with the grayscale image (torchvision; pix scales HSV saturation,
  which is a different op)."""
  return _blend(image, factor, _luma(image))


def adjust_hue(image: jax.Array, delta: jax.Array) -> jax.Array:
  """Rotates HSV hue by `delta` of the full circle, then clips.

  `pix.adjust_hue` computes `(h + delta) % 1` in HSV, the torchvision
  `adjust_hue` / TF `adjust_hue` convention; grey pixels (s = 0) come back
  exactly unchanged.
  """
  return jnp.clip(pix.adjust_hue(image, delta), 0.0, 1.0)


def _cheap_jitter_op(image: jax.Array, op: jax.Array,
                     factors: jax.Array) -> jax.Array:
  """Brightness, contrast or saturation, picked by a traced op id.

  All three are `_blend` with a different second operand (0, mean luma, luma),
  so choosing the operand costs one luma instead of running all three ops and
  selecting, which is what a traced `lax.switch` becomes under vmap.
  """
  luma = _luma(image)
  other = jnp.where(op == BRIGHTNESS, jnp.zeros((), image.dtype),
                    jnp.where(op == CONTRAST, _mean_fixed_order(luma), luma))
  return _blend(image, factors[op], other)


def color_jitter(image: jax.Array, order: jax.Array, factors: jax.Array,
                 *, use_hue: bool = True) -> jax.Array:
  """Applies the four jitter ops in `order`, clipping after each.

  Args:
    image: float [H, W, 3] in [0, 1].
    order: int [4], a permutation of BRIGHTNESS, CONTRAST, SATURATION, HUE.
    factors: float [4] indexed by op id: brightness, contrast and saturation
      factors, then the hue shift (a fraction of the circle).
    use_hue: static; False leaves the hue op out of the graph (hue strength 0),
      which keeps the result bit-exact where an HSV round trip would not.

  Returns:
    The jittered image, float [H, W, 3] in [0, 1].
  """
  # The hue op (an HSV round trip) costs several times a blend. A traced
  # order under vmap cannot branch: `lax.switch` at each of 4 steps becomes
  # "run all four ops and select", hue 4 times (measured 13x slower on CPU).
  # Instead: run the three cheap ops in their order, each either before or
  # after a single hue step (6 cheap slots, each masked to identity where it
  # belongs to the other side). The slots are two 3-step loops rather than
  # unrolled, which cut XLA compile time from 5 s to 3 s on CPU.
  order = jnp.asarray(order, jnp.int32)
  factors = jnp.asarray(factors, image.dtype)
  hue_pos = jnp.argmax(order == HUE)
  slot = jnp.arange(3)
  cheap = jnp.where(slot < hue_pos, order[:3], order[1:])

  def before_hue(j, x):
    return jnp.where(j < hue_pos, _cheap_jitter_op(x, cheap[j], factors), x)

  def after_hue(j, x):
    return jnp.where(j >= hue_pos, _cheap_jitter_op(x, cheap[j], factors), x)

  x = jax.lax.fori_loop(0, 3, before_hue, image)
  if use_hue:
    x = adjust_hue(x, factors[HUE])
  return jax.lax.fori_loop(0, 3, after_hue, x)


def to_grayscale(image: jax.Array) -> jax.Array:
  """ITU-R 601 luma broadcast to 3 equal channels."""
  return pix.rgb_to_grayscale(image, keep_dims=True)


def blur_kernel_size(height: int, fraction: float) -> int:
  """Odd kernel side of about `fraction * height`, at least 3.

  BYOL's rule: radius = int(fraction * height / 2), side = 2 * radius + 1
  (23 for 224 px, 3 for 28 or 32 px). The radius is capped at height - 1
  because reflect padding cannot reach further; a 1-px image gets side 1.
  """
  radius = max(1, int(fraction * height / 2))
  radius = min(radius, height - 1)
  return 2 * radius + 1


def gaussian_kernel(sigma: jax.Array, kernel_size: int) -> jax.Array:
  """Normalised 1-D Gaussian weights, float [kernel_size], centred."""
  radius = kernel_size // 2
  t = jnp.arange(-radius, radius + 1, dtype=_COMPUTE_DTYPE)
  sigma = jnp.asarray(sigma, _COMPUTE_DTYPE)
  w = jnp.exp(-t**2 / (2 * sigma**2))
  return w / jnp.sum(w)


def gaussian_blur(image: jax.Array, sigma: jax.Array,
                  kernel_size: int) -> jax.Array:
  """Separable Gaussian blur with reflect padding.

  Reflect padding (numpy 'reflect': d c b | a b c d | c b a, as torchvision's
  GaussianBlur) keeps flat regions flat up to the border; the zero padding of
  `pix.gaussian_blur` ('SAME', as in BYOL's TF code) darkens a frame of
  kernel_size // 2 pixels, a large share of a 32 px image.

  We also do not call `pix.gaussian_blur` on the padded image: sigma is drawn
  per image, and vmapping its depthwise conv over a batched kernel turns it
  into a convolution with 3 * B feature groups, which measured 81 ms for 256
  images of 32 px on a 2-core CPU. A sum of kernel_size shifted slices per
  axis is the same arithmetic and fuses into one elementwise loop.

  Args:
    image: float [H, W, C].
    sigma: the standard deviation in pixels (may be traced).
    kernel_size: static odd kernel side, e.g. from `blur_kernel_size`; at most
      2 * min(H, W) - 1 (the reach of reflect padding).

  Returns:
    The blurred image, same shape and dtype.
  """
  radius = kernel_size // 2
  if radius == 0:
    return image
  w = gaussian_kernel(sigma, kernel_size).astype(image.dtype)
  x = image
  for axis in (0, 1):
    n = x.shape[axis]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (radius, radius)
    padded = jnp.pad(x, pad, mode="reflect")
    x = sum(w[t] * jax.lax.slice_in_dim(padded, t, t + n, axis=axis)
            for t in range(kernel_size))
  return x


def solarize(image: jax.Array, threshold: float) -> jax.Array:
  """x if x < threshold else 1 - x (`pix.solarize` is exactly this)."""
  return pix.solarize(image, threshold)


# ----------------------------------------------------------------------------
# Random pipeline.
# ----------------------------------------------------------------------------


# Slots of the per-image uniform draws. Fixed, so each op's randomness stays
# put when another op of the config is switched on or off.
_U_JITTER_COIN = 0
_U_JITTER_FACTORS = slice(1, 5)  # brightness, contrast, saturation, hue
_U_JITTER_ORDER = slice(5, 9)
_U_GRAY_COIN = 9
_U_BLUR_COIN = 10
_U_BLUR_SIGMA = 11
_U_SOLARIZE_COIN = 12
_NUM_UNIFORMS = 13


def sample_jitter(u: jax.Array, p: ViewParams) -> tuple[jax.Array, jax.Array]:
  """One image's jitter order (int [4]) and factors (float [4]).

  Args:
    u: float [_NUM_UNIFORMS], the image's U[0, 1) draws.
    p: the view's parameters.

  Returns:
    (order, factors) as `color_jitter` takes them.
  """
  lo = jnp.array([max(0.0, 1.0 - p.brightness), max(0.0, 1.0 - p.contrast),
                  max(0.0, 1.0 - p.saturation), -p.hue], _COMPUTE_DTYPE)
  hi = jnp.array([1.0 + p.brightness, 1.0 + p.contrast, 1.0 + p.saturation,
                  p.hue], _COMPUTE_DTYPE)
  # A zero strength gives lo == hi, so the factor is exactly 1 (or 0 for
  # hue): the op is an exact identity on [0, 1] images.
  factors = lo + (hi - lo) * u[_U_JITTER_FACTORS]
  # Ranking 4 iid uniforms gives a uniform permutation (ties have
  # probability ~1e-7 and argsort breaks them deterministically).
  # `jax.random.permutation` would be a second threefry call site, which
  # costs about a second of XLA compile time on CPU.
  order = jnp.argsort(u[_U_JITTER_ORDER]).astype(jnp.int32)
  return order, factors


def _maybe(coin: jax.Array, prob: float, fn, image: jax.Array) -> jax.Array:
  """fn(image) where coin < prob, else image bit for bit.

  `prob` is static: 0 and 1 need no select, and 0 not even the op.
  """
  if prob <= 0.0:
    return image
  out = fn(image)
  if prob >= 1.0:
    return out
  return jnp.where(coin < prob, out, image)


def _photometric_one(u: jax.Array, image: jax.Array,
                     p: ViewParams) -> jax.Array:
  """The full photometric chain for one image [H, W, 3] in [0, 1].

  `u` holds the image's _NUM_UNIFORMS draws from U[0, 1).
  """

  def jitter(x):
    order, factors = sample_jitter(u, p)
    return color_jitter(x, order, factors, use_hue=p.hue > 0)

  def blur(x):
    sigma = p.blur_sigma_min + (p.blur_sigma_max -
                                p.blur_sigma_min) * u[_U_BLUR_SIGMA]
    size = blur_kernel_size(x.shape[0], p.blur_kernel_fraction)
    size = min(size, 2 * min(x.shape[0], x.shape[1]) - 1)
    return gaussian_blur(x, sigma, size)

  x = _maybe(u[_U_JITTER_COIN], p.color_jitter_prob, jitter, image)
  x = _maybe(u[_U_GRAY_COIN], p.grayscale_prob, to_grayscale, x)
  x = _maybe(u[_U_BLUR_COIN], p.blur_prob, blur, x)
  x = _maybe(u[_U_SOLARIZE_COIN], p.solarize_prob,
             lambda y: solarize(y, p.solarize_threshold), x)
  return x


def to_float01(images: jax.Array) -> jax.Array:
  """uint8 (or any integer) [0, 255] -> float32 [0, 1]; floats pass through."""
  if jnp.issubdtype(images.dtype, jnp.integer):
    return images.astype(_COMPUTE_DTYPE) / 255.0
  return images.astype(_COMPUTE_DTYPE)


def photometric(rng: jax.Array, images: jax.Array,
                view_config: Union[ml_collections.ConfigDict, ViewParams]
                ) -> jax.Array:
  """Random photometric augmentation of a batch, independently per image.

  Args:
    rng: a JAX key for this batch and view.
    images: float [B, H, W, 3] in [0, 1] (uint8 is scaled by 1/255).
    view_config: a view ConfigDict (see `config_defaults.view`) or ViewParams.

  Returns:
    float32 [B, H, W, 3] in [0, 1]. With every probability 0 this is `images`
    itself (as float32), bit for bit, and nothing else is traced.
  """
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"photometric wants [B, H, W, 3] images, got shape "
                     f"{images.shape}.")
  p = (view_config if isinstance(view_config, ViewParams)
       else ViewParams.from_config(view_config))
  images = to_float01(images)
  if max(p.color_jitter_prob, p.grayscale_prob, p.blur_prob,
         p.solarize_prob) <= 0:
    return images
  # All of a batch's randomness in one draw: row b is image b's, whatever
  # the sharding (threefry values depend on the key and the index only, and
  # with jax_threefry_partitionable each device computes just its rows).
  # One call site also keeps compile time down (each threefry site costs
  # about a second of XLA compile on CPU).
  u = jax.random.uniform(rng, (images.shape[0], _NUM_UNIFORMS), _COMPUTE_DTYPE)
  return jax.vmap(lambda ui, x: _photometric_one(ui, x, p))(u, images)


def normalize(images: jax.Array, mean: ArrayLike, std: ArrayLike,
              dtype: Any = jnp.float32) -> jax.Array:
  """(x - mean) / std per channel, computed in float32, returned as `dtype`.

  `mean` and `std` are in [0, 1] units (e.g. ImageNet's 0.485, 0.456, 0.406),
  as scalars or one value per channel.
  """
  mean = jnp.asarray(mean, _COMPUTE_DTYPE)
  std = jnp.asarray(std, _COMPUTE_DTYPE)
  return ((images.astype(_COMPUTE_DTYPE) - mean) / std).astype(dtype)


def augment_views(rng: jax.Array, crops: dict[str, jax.Array],
                  groups: Union[ml_collections.ConfigDict, Sequence[views.ViewGroup]],
                  mean: ArrayLike, std: ArrayLike, dtype: Any = jnp.float32
                  ) -> dict[str, jax.Array]:
  """Turns the host's uint8 crops into normalised, photometrically augmented views.

  Args:
    rng: a JAX key, typically from `fold_in(key, step)` so that a resumed run
      repeats its augmentations.
    crops: {group name: uint8 [B, n, S, S, 3]} from the host pipeline (floats
      in [0, 1] are accepted too); n and S may differ between groups.
    groups: the view groups (sslx.data.views.ViewGroup, in crop-numbering
      order), or the `config.views` ConfigDict (natural name order).
    mean: per-channel mean in [0, 1] units.
    std: per-channel standard deviation in [0, 1] units.
    dtype: output dtype (e.g. jnp.float32, jnp.bfloat16 or 'bfloat16').

  Returns:
    {group name: [B, n, S, S, 3] of `dtype`}. Crop number v (counting over
    the groups in order) uses the key `fold_in(rng, v)`, so a group of one
    crop is augmented exactly as a single view was.
  """
  if not isinstance(groups, (list, tuple)):
    some = next(iter(crops.values()), None)
    size = some.shape[2] if some is not None and some.ndim == 5 else 1
    groups = views.parse_groups(groups, image_size=size)
  names = [g.name for g in groups]
  if sorted(crops) != sorted(names):
    raise errors.ConfigError(
        f"augment_views got crops of the groups {sorted(crops)}, but the view groups are "
        f"{names}.")
  out, first = {}, 0
  for group in groups:
    images = crops[group.name]
    if images.ndim != 5 or images.shape[1] != group.num_crops:
      raise errors.ConfigError(
          f"augment_views got crops of shape {images.shape} for view group {group.name!r}; "
          f"expected [B, {group.num_crops}, S, S, 3].")
    p = ViewParams.from_group(group)
    out[group.name] = jnp.stack(
        [normalize(photometric(jax.random.fold_in(rng, first + j), images[:, j], p), mean, std,
                   dtype) for j in range(group.num_crops)], axis=1)
    first += group.num_crops
  return out
