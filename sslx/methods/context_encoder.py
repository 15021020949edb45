"""Context encoders: inpainting (Pathak, Krahenbuhl, Donahue, Darrell & Efros, 2016, arXiv:1604.07379).

A region of the image is removed and an encoder-decoder fills it in from the
context around it. Predicting what is missing needs an understanding of the
scene beyond local texture, which is what the encoder should learn.

Masks (`context_encoder.mask`), each covering `mask_fraction` of the image
(the paper: a quarter):
  * 'center': the central square (the paper's "central region");
  * 'random_block': one square of that area at a random position;
  * 'random_blocks': each cell of a grid of `block_size` px cells dropped
    with probability `mask_fraction` (the paper's "random block" masks,
    several blocks per image; the covered fraction is right on average).
Removed pixels are set to 0 after normalisation, the dataset's mean colour
(the paper fills them with the mean).

Loss: the L2 reconstruction error over the removed pixels only, normalised by
their number (paper eq. 1; the decoder's output elsewhere is not trained).

The paper's joint loss (its Sec. 3.2) adds an adversarial term for sharper
inpainting: L = (1 - w) L_rec + w L_adv with w = `adversarial_weight` (the
paper: 0.001 against 0.999). A discriminator (sslx/models/discriminator.py)
scores the removed region, real pixels against predicted ones, without the
context around them (the paper found a discriminator that sees the context
tells real from fake by the seam alone). The generator's term is the
non-saturating -log D(fake). Both players train in the trainer's one step:
  * the discriminator minimises -log D(real) - log(1 - D(fake)), with the
    prediction held fixed (stop_gradient), so this term moves only it;
  * the generator's term is computed with the discriminator's parameters
    held fixed, so it moves only the encoder and decoder.
The discriminator has its own optimizer group at `discriminator_lr_multiplier`
times the rate (the paper trains the context encoder at 10x the
discriminator's rate: 0.1). At w = 0 no discriminator is built: the L2
variant, with exactly the L2 loss.

What the decoder reads (`context_encoder.decoder_input`):
  * 'feature_map': the encoder's last feature map, position by position;
  * 'pooled': only the encoder's pooled representation, the vector every
    evaluator reads, expanded by a dense layer to a map of the last feature
    map's shape (sslx/models/decoder.py, `CodeDecoder`). The paper's encoder
    passes its whole-image code through a fully connected bottleneck (its
    Sec. 3.1, a channel-wise fully connected layer; its released code, a
    4,000-d code) so that the prediction at one place can draw on the whole
    image; decoding from the pooled vector does that, and makes that vector
    describe the whole digit.
The encoder is the transferable backbone; the decoder (sslx/models/decoder.py)
is dropped at transfer time.
"""

import jax
import jax.numpy as jnp

from sslx.config import validation as config_validation
from sslx.methods import base
from sslx.models import decoder as decoder_lib
from sslx.models import discriminator as discriminator_lib

MASKS = ("center", "random_block", "random_blocks")
DECODER_INPUTS = ("feature_map", "pooled")


def square_side(size: int, fraction: float) -> int:
  """Side of the square covering `fraction` of a size x size image (at least 1 px)."""
  return max(1, int(round(size * fraction ** 0.5)))


def make_masks(rng: jax.Array, batch: int, size: int, kind: str, fraction: float,
               block_size: int) -> jax.Array:
  """Masks [B, S, S, 1], 1.0 where pixels are removed."""
  rows = jnp.arange(size)[:, None]
  cols = jnp.arange(size)[None, :]
  if kind in ("center", "random_block"):
    side = square_side(size, fraction)
    if kind == "center":
      top = jnp.full((batch, 2), (size - side) // 2)
    else:
      top = jax.random.randint(rng, (batch, 2), 0, size - side + 1)
    inside = ((rows[None] >= top[:, 0, None, None]) & (rows[None] < top[:, 0, None, None] + side)
              & (cols[None] >= top[:, 1, None, None]) & (cols[None] < top[:, 1, None, None] + side))
    return inside[..., None].astype(jnp.float32)
  cells = -(-size // block_size)
  dropped = jax.random.bernoulli(rng, fraction, (batch, cells, cells)).astype(jnp.float32)
  full = jnp.repeat(jnp.repeat(dropped, block_size, axis=1), block_size, axis=2)
  return full[:, :size, :size, None]


def masked_l2(prediction: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean over removed pixels (mask 1) and channels of the squared error; 0 if none removed."""
  squared = jnp.square(prediction - target) * mask
  count = jnp.sum(mask) * target.shape[-1]
  return jnp.sum(squared) / jnp.maximum(count, 1.0)


def adversarial_losses(real_logits: jax.Array, fake_logits: jax.Array,
                       fake_logits_fixed_discriminator: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(discriminator loss, generator loss), means over the batch, from logits (> 0: real).

  `fake_logits` score a prediction the discriminator must not move (its
  gradient is stopped by the caller); `fake_logits_fixed_discriminator` score
  it through a discriminator held fixed. -log sigmoid(z) = softplus(-z).
  """
  d_loss = jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
  g_loss = jnp.mean(jax.nn.softplus(-fake_logits_fixed_discriminator))
  return d_loss, g_loss


class Method(base.SSLMethod):
  """Context encoder (L2 inpainting) on the generic trainer."""

  view_groups = ("v1",)

  @classmethod
  def config_problems(cls, config):
    return super().config_problems(config) + config_validation.check_fields(
        config.context_encoder, {
            "mask": config_validation.one_of(*MASKS),
            "mask_fraction": config_validation.OPEN_UNIT_INTERVAL,
            "block_size": config_validation.POSITIVE_INT,
            "decoder_input": config_validation.one_of(*DECODER_INPUTS),
            "adversarial_weight": config_validation.UNIT_INTERVAL,
            "discriminator_lr_multiplier": config_validation.POSITIVE,
        }, prefix="context_encoder.")

  def __init__(self, config, **kwargs):
    super().__init__(config, **kwargs)
    self.last_map = self.backbone.feature_map_names[-1]
    self.adversarial_weight = float(config.context_encoder.adversarial_weight)
    self.discriminator = discriminator_lib.ConvDiscriminator(
        channels=tuple(config.context_encoder.discriminator_channels))

  def decoder_for(self, out, size: int):
    """(the decoder, what it reads) for encoder output `out` of size x size images."""
    c = self.config.context_encoder
    feature_map = out.feature_maps[self.last_map]
    if c.decoder_input == "feature_map":
      return decoder_lib.ConvDecoder(channels=tuple(c.decoder_channels), out_channels=3,
                                     output_size=size, dtype=self.dtype), feature_map
    _, grid, _, width = feature_map.shape
    return decoder_lib.CodeDecoder(channels=tuple(c.decoder_channels), out_channels=3,
                                   output_size=size, grid=grid, width=width,
                                   dtype=self.dtype), out.pooled

  def init(self, rng, images):
    k_main, k_disc = jax.random.split(rng)
    params, batch_stats = self.init_encoder_and_decoder(
        k_main, images, lambda out: self.decoder_for(out, images.shape[1]))
    if self.adversarial_weight > 0:
      params["discriminator"], _ = self.init_module(self.discriminator, k_disc, images)
    return params, batch_stats, {}

  def param_groups(self):
    if self.adversarial_weight == 0:
      return {}
    return {"discriminator": base.ParamGroup(
        self.config.context_encoder.discriminator_lr_multiplier)}

  def param_group(self, path):
    return "discriminator" if path[0] == "discriminator" else None

  def adversarial_terms(self, disc_params, real, fake):
    """(discriminator loss, generator loss, discriminator accuracy) on real and predicted regions."""
    def score(p, x):
      return self.discriminator.apply({"params": p}, x)
    both = score(disc_params, jnp.concatenate([real, jax.lax.stop_gradient(fake)]))
    real_logits, fake_logits = jnp.split(both, 2)
    fixed = score(jax.lax.stop_gradient(disc_params), fake)
    d_loss, g_loss = adversarial_losses(real_logits, fake_logits, fixed)
    accuracy = 0.5 * (jnp.mean(real_logits > 0) + jnp.mean(fake_logits < 0))
    return d_loss, g_loss, accuracy

  def loss(self, params, batch_stats, method_state, batch, rngs, step):
    del step
    c = self.config.context_encoder
    view = self.view(batch, "v1")
    b, size = view.shape[0], view.shape[1]
    mask = make_masks(rngs.method("context_encoder/masks"), b, size, c.mask, c.mask_fraction,
                      c.block_size)
    context = view * (1.0 - mask).astype(view.dtype)
    out, bs_enc = self.apply_train(self.encoder, params["encoder"], batch_stats["encoder"],
                                   context, rngs.modules("encoder"))
    decoder, decoder_input = self.decoder_for(out, size)
    prediction, bs_dec = self.apply_train(decoder, params["decoder"], batch_stats["decoder"],
                                          decoder_input)
    target = view.astype(jnp.float32)
    loss = masked_l2(prediction, target, mask)
    metrics = {"masked_fraction": jnp.mean(mask)}
    if self.adversarial_weight > 0:
      # The discriminator sees the removed region only, the rest zeroed.
      d_loss, g_loss, accuracy = self.adversarial_terms(
          params["discriminator"], target * mask, prediction * mask)
      w = self.adversarial_weight
      metrics.update(reconstruction_loss=loss, generator_loss=g_loss,
                     discriminator_loss=d_loss, discriminator_accuracy=accuracy)
      loss = (1.0 - w) * loss + w * g_loss + d_loss
    return loss, base.LossOutput(
        batch_stats={"encoder": bs_enc, "decoder": bs_dec}, method_state=method_state,
        features=out.pooled, embeddings=out.pooled, metrics=metrics)
