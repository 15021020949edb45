"""Colorful image colorization (Zhang, Isola & Efros, 2016, arXiv:1603.08511).

The encoder sees only the lightness L of an image (CIE Lab, sslx/data/lab.py;
given to it as the grey RGB image of that L, normalised like any image, so
its input statistics match evaluation's); a decoder (sslx/models/decoder.py)
predicts, at every pixel, a distribution over Q quantised ab colours. Knowing
that grass is green and skies blue needs knowing what grass and sky are.

Colour classes (Sec. 2.1): the ab plane cut into a grid of `bin_size` (the
paper: 10) from -110 to 110; only bins whose centre is in the sRGB gamut
for some lightness are kept (`gamut_bins`, sampling L in steps of 1): 225
bins at size 10. The paper keeps 313 at that size; it does not give its
gamut test, and counting every cell that any in-gamut colour falls into
gives 262 here, so its set is wider still. Targets are soft: each pixel's true ab spreads
over its 5 nearest bins with a Gaussian of sigma 5 (the paper's soft-encoding).

Class rebalancing (Sec. 2.2): desaturated colours dominate natural images,
so each pixel's cross-entropy is weighted by w(q*) of its most likely bin,
    w proportional to ((1 - lambda) p_smooth + lambda / Q)^-1,  E_p[w] = 1,
lambda = 0.5, p_smooth the empirical ab distribution smoothed with a
Gaussian of sigma 5. The paper counts p on ImageNet once; sslx counts it on
the training batches as they come (state `ab_counts`, checkpointed), so the
weights follow the data the method is given, starting uniform.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sslx.config import validation as config_validation
from sslx.data import lab as lab_lib
from sslx.methods import base
from sslx.models import decoder as decoder_lib

AB_RANGE = 110.0
SOFT_NEIGHBOURS = 5
SOFT_SIGMA = 5.0
PRIOR_SIGMA = 5.0


@functools.lru_cache(maxsize=4)
def gamut_bins(bin_size: float) -> np.ndarray:
  """[Q, 2] centres of the ab bins in the sRGB gamut for at least one L in 0..100."""
  edges = np.arange(-AB_RANGE, AB_RANGE + 1e-6, bin_size)
  a, b = np.meshgrid(edges, edges, indexing="ij")
  centres = np.stack([a.ravel(), b.ravel()], axis=-1)
  lightness = np.arange(0.0, 100.0 + 1e-6, 1.0)
  lab = np.concatenate([np.broadcast_to(lightness[:, None, None], (len(lightness), len(centres), 1)),
                        np.broadcast_to(centres[None], (len(lightness), len(centres), 2))], -1)
  rgb = np.asarray(lab_lib.lab_to_rgb(jnp.asarray(lab), clip=False))
  inside = np.all((rgb >= -1e-6) & (rgb <= 1 + 1e-6), axis=-1).any(axis=0)
  return centres[inside].astype(np.float32)


def soft_encode(ab: jax.Array, bins: jax.Array) -> jax.Array:
  """[..., 2] ab -> [..., Q] targets: Gaussian weights (sigma 5) on the 5 nearest bins, sum 1."""
  d2 = jnp.sum(jnp.square(ab[..., None, :] - bins), axis=-1)  # [..., Q]
  neg_d2, nearest = jax.lax.top_k(-d2, SOFT_NEIGHBOURS)
  weights = jax.nn.softmax(neg_d2 / (2 * SOFT_SIGMA ** 2), axis=-1)
  return jnp.sum(jax.nn.one_hot(nearest, bins.shape[0]) * weights[..., None], axis=-2)


def rebalancing_weights(counts: jax.Array, bins: jax.Array, mix: float = 0.5) -> jax.Array:
  """[Q] w = ((1 - mix) p_smooth + mix / Q)^-1, scaled so that sum_q p_smooth w = 1."""
  p = counts / jnp.sum(counts)
  d2 = jnp.sum(jnp.square(bins[:, None] - bins[None]), axis=-1)
  kernel = jnp.exp(-d2 / (2 * PRIOR_SIGMA ** 2))
  smooth = kernel @ p
  smooth = smooth / jnp.sum(smooth)
  w = 1.0 / ((1 - mix) * smooth + mix / bins.shape[0])
  return w / jnp.sum(smooth * w)


def rebalanced_cross_entropy(logits: jax.Array, targets: jax.Array,
                             weights: jax.Array) -> jax.Array:
  """Mean over pixels of -w(argmax target) * sum_q target_q log softmax(logits)_q."""
  log_p = jax.nn.log_softmax(logits, axis=-1)
  pixel_weight = weights[jnp.argmax(targets, axis=-1)]
  return jnp.mean(-pixel_weight * jnp.sum(targets * log_p, axis=-1))


class Method(base.SSLMethod):
  """Colorization (classification over ab bins with rebalancing) on the generic trainer."""

  view_groups = ("v1",)
  grey_encoder_input = True  # the encoder sees the grey of each image's lightness

  @classmethod
  def config_problems(cls, config):
    return super().config_problems(config) + config_validation.check_fields(
        config.colorization, {
            "bin_size": config_validation.POSITIVE,
            "rebalance_mix": config_validation.UNIT_INTERVAL,
            "rebalance": config_validation.BOOL,
        }, prefix="colorization.")

  def __init__(self, config, **kwargs):
    super().__init__(config, **kwargs)
    self.bins = jnp.asarray(gamut_bins(float(config.colorization.bin_size)))
    self.last_map = self.backbone.feature_map_names[-1]
    self.mean = jnp.asarray(self.dataset.mean if self.dataset else (0.5,) * 3, jnp.float32)
    self.std = jnp.asarray(self.dataset.std if self.dataset else (0.25,) * 3, jnp.float32)

  def decoder(self, size: int) -> decoder_lib.ConvDecoder:
    return decoder_lib.ConvDecoder(channels=tuple(self.config.colorization.decoder_channels),
                                   out_channels=self.bins.shape[0], output_size=size,
                                   dtype=self.dtype)

  def init(self, rng, images):
    params, batch_stats = self.init_encoder_and_decoder(
        rng, images, lambda out: (self.decoder(images.shape[1]), out.feature_maps[self.last_map]))
    return params, batch_stats, {"ab_counts": jnp.ones((self.bins.shape[0],), jnp.float32)}

  def split_lab(self, view):
    """Normalised RGB view -> (the encoder's grey input, normalised; ab [B, S, S, 2])."""
    rgb = jnp.clip(view.astype(jnp.float32) * self.std + self.mean, 0.0, 1.0)
    lab = lab_lib.rgb_to_lab(rgb)
    grey = lab_lib.lab_to_rgb(jnp.concatenate([lab[..., :1], jnp.zeros_like(lab[..., 1:])], -1))
    return ((grey - self.mean) / self.std).astype(view.dtype), lab[..., 1:]

  def loss(self, params, batch_stats, method_state, batch, rngs, step):
    del step
    c = self.config.colorization
    view = self.view(batch, "v1")
    grey, ab = self.split_lab(view)
    out, bs_enc = self.apply_train(self.encoder, params["encoder"], batch_stats["encoder"], grey,
                                   rngs.modules("encoder"))
    logits, bs_dec = self.apply_train(self.decoder(view.shape[1]), params["decoder"],
                                      batch_stats["decoder"], out.feature_maps[self.last_map])
    targets = soft_encode(ab, self.bins)
    counts = method_state["ab_counts"] + jnp.sum(targets, axis=(0, 1, 2))
    if c.rebalance:
      weights = rebalancing_weights(counts, self.bins, c.rebalance_mix)
    else:
      weights = jnp.ones_like(counts)
    loss = rebalanced_cross_entropy(logits, targets, jax.lax.stop_gradient(weights))
    hit = jnp.argmax(logits, -1) == jnp.argmax(targets, -1)
    return loss, base.LossOutput(
        batch_stats={"encoder": bs_enc, "decoder": bs_dec},
        method_state={"ab_counts": counts}, features=out.pooled, embeddings=out.pooled,
        metrics={"color_bin_accuracy": jnp.mean(hit)})
