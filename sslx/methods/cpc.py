"""Contrastive predictive coding on image patches (van den Oord, Li & Vinyals, 2018,
arXiv:1807.03748, Sec. 3.2; Henaff et al., 2019, arXiv:1905.09272, "CPC v2").

Each crop is cut into a G x G grid of overlapping patches (the papers: 64 px
patches every 32 px of a 256 px crop, a 7 x 7 grid). The encoder embeds each
patch on its own, z[i, j] = f(patch[i, j]) (its pooled features). A masked
context network reads the grid top-down: c[i, j] depends only on z[u, v]
with u <= i (every column of those rows). From c[i, j] a linear predictor
W_k per offset k = 1..K predicts the patch k rows below, z[i + k, j]. The
loss is InfoNCE: the true z[i + k, j] must score above every other patch
of the global batch (other positions of the same image and all patches of
the other images):
    L = - mean over (image, i, j, k) of log softmax_over_all_patches(s(W_k c[i, j], z))[true],
with s the cosine similarity over a temperature (`cpc.temperature`). The
papers score with the raw dot product; with a BatchNorm ResNet's unbounded
features that gave losses of 30+ at initialisation here, and normalised
scores are the form every later contrastive method settled on.

Context network: `context_layers` convolutions whose 3-wide kernels see only
the current and earlier rows (the input is padded two rows on top and the
kernel spans three rows ending at the current one), with ReLU and residual
connections; CPC v2 uses a PixelCNN, this is its row-causal core.
Gradients reach the encoder through both the context and the targets z (as
in both papers).

Directions (`cpc.directions`): CPC v1 reads the grid top-down only; CPC v2
(Sec. 4.1, "BU") also predicts from below. Each direction named gets its
own context network and predictors, which read the grid turned so that
their direction is top-down: 'bottom_up' sees it upside down (its c[i, j]
depends only on rows >= i and predicts the patch k rows above),
'left_right' transposed (columns <= j, predicting k columns to the right),
'right_left' transposed and flipped. The loss is the mean over directions
and offsets.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from sslx import errors
from sslx.config import validation as config_validation
from sslx.data import patches as patches_lib
from sslx.methods import base


# Each direction: the grid [B, G, G, D] turned so that it reads top-down.
DIRECTIONS = {
    "top_down": lambda z: z,
    "bottom_up": lambda z: z[:, ::-1],
    "left_right": lambda z: jnp.swapaxes(z, 1, 2),
    "right_left": lambda z: jnp.swapaxes(z, 1, 2)[:, ::-1],
}


def parameter_names(direction: str) -> tuple[str, str]:
  """A direction's context network and predictors in params. Top-down keeps the
  names it had before there were directions, so earlier checkpoints load."""
  if direction == "top_down":
    return "context", "predictors"
  return f"context_{direction}", f"predictors_{direction}"


def grid_size(image_size: int, patch: int, stride: int) -> int:
  return (image_size - patch) // stride + 1


def patch_grid(images: jax.Array, patch: int, stride: int) -> jax.Array:
  """All overlapping patches [B, G, G, p, p, C], top-left corners every `stride` px."""
  b, size = images.shape[0], images.shape[1]
  g = grid_size(size, patch, stride)
  rows, cols = jnp.meshgrid(jnp.arange(g), jnp.arange(g), indexing="ij")
  corners = jnp.stack([rows.ravel(), cols.ravel()], -1) * stride
  out = patches_lib.crop_patches(images, jnp.broadcast_to(corners, (b, g * g, 2)), patch)
  return out.reshape(b, g, g, *out.shape[2:])


class RowCausalContext(nn.Module):
  """[B, G, G, D] -> [B, G, G, width]; output row i depends on input rows <= i only."""

  width: int
  layers: int = 2
  kernel_rows: int = 3

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    x = nn.Dense(self.width, name="input")(z)
    for i in range(self.layers):
      # Pad kernel_rows - 1 rows above and none below: the kernel's last row
      # is the output's own row, so nothing below it is ever read.
      padded = jnp.pad(x, ((0, 0), (self.kernel_rows - 1, 0), (1, 1), (0, 0)))
      h = nn.Conv(self.width, (self.kernel_rows, 3), padding="VALID", name=f"conv{i}")(
          nn.relu(padded))
      x = x + h
    return x


def info_nce(predictions: jax.Array, targets: jax.Array, k: int, temperature: float):
  """InfoNCE of predictions c -> z for offset k rows.

  predictions: [B, G, G, D], the prediction made at (i, j) for (i + k, j);
  targets: [B, G, G, D], every patch's z (all are candidates). Returns (mean
  loss, top-1 accuracy) over the (B, G - k, G) predictions with a target.
  """
  b, g, _, d = targets.shape
  queries = base.l2_normalize(predictions[:, :g - k].reshape(-1, d))  # rows with a target
  candidates = base.l2_normalize(targets.reshape(-1, d))  # [B*G*G, D]
  logits = queries @ candidates.T / temperature
  # The true target of query (b, i, j) is candidate (b, i + k, j).
  bi, ii, jj = jnp.meshgrid(jnp.arange(b), jnp.arange(g - k), jnp.arange(g), indexing="ij")
  labels = ((bi * g + ii + k) * g + jj).ravel()
  loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
  return loss, jnp.mean(jnp.argmax(logits, -1) == labels)


class Method(base.SSLMethod):
  """CPC (v2-style, row-causal context, InfoNCE over the global batch's patches)."""

  view_groups = ("v1",)

  @classmethod
  def config_problems(cls, config):
    c = config.cpc
    problems = super().config_problems(config) + config_validation.check_fields(c, {
        "patch_size": config_validation.POSITIVE_INT,
        "patch_stride": config_validation.POSITIVE_INT,
        "prediction_steps": config_validation.POSITIVE_INT,
        "context_dim": config_validation.POSITIVE_INT,
        "context_layers": config_validation.POSITIVE_INT,
        "temperature": config_validation.POSITIVE,
        "directions": (lambda v: isinstance(v, (tuple, list)) and len(v) > 0
                       and len(set(v)) == len(v) and all(d in DIRECTIONS for d in v),
                       "a non-empty tuple of distinct directions from "
                       + ", ".join(map(repr, DIRECTIONS))),
    }, prefix="cpc.")
    if problems:
      return problems
    crop = config.views.get("v1", {}).get("crop_size") or config.data.image_size
    g = grid_size(crop, c.patch_size, c.patch_stride)
    if g <= c.prediction_steps:
      problems.append(
          f"config.cpc: {c.patch_size} px patches every {c.patch_stride} px of {crop} px crops "
          f"make a {max(g, 0)}x{max(g, 0)} grid, which has no row "
          f"prediction_steps={c.prediction_steps} rows below another; use larger crops, "
          "smaller patches or fewer prediction steps.")
    return problems

  def __init__(self, config, **kwargs):
    super().__init__(config, **kwargs)
    c = config.cpc
    self.context = RowCausalContext(width=c.context_dim, layers=c.context_layers)
    self.predictors = nn.DenseGeneral((c.prediction_steps, self.feature_dim), use_bias=False)
    self.directions = tuple(c.get("directions") or ("top_down",))

  def init(self, rng, images):
    k_enc, k_ctx, k_pred = jax.random.split(rng, 3)
    c = self.config.cpc
    p = c.patch_size
    params, batch_stats = {}, {}
    params["encoder"], batch_stats["encoder"], x = self.init_encoder(k_enc, images[:, :p, :p])
    grid = jnp.zeros((x.shape[0], 2, 2, self.feature_dim), jnp.float32)
    ctx = jnp.zeros((x.shape[0], c.context_dim), jnp.float32)
    for i, direction in enumerate(self.directions):
      # The first direction draws from the keys top-down alone always drew from.
      key_ctx, key_pred = ((k_ctx, k_pred) if i == 0 else
                           jax.random.split(jax.random.fold_in(k_ctx, i)))
      context_name, predictors_name = parameter_names(direction)
      params[context_name] = self.context.init(key_ctx, grid)["params"]
      params[predictors_name] = self.predictors.init(key_pred, ctx)["params"]
      batch_stats[context_name] = batch_stats[predictors_name] = {}
    return params, batch_stats, {}

  def embed_grid(self, params, batch_stats, view, rngs: dict | None = None):
    """z [B, G, G, D] of every patch, and the encoder's new batch_stats."""
    c = self.config.cpc
    grid = patch_grid(view, c.patch_size, c.patch_stride)
    b, g = grid.shape[0], grid.shape[1]
    flat, bs = self.encode(params["encoder"], batch_stats["encoder"],
                           grid.reshape(b * g * g, *grid.shape[3:]), rngs)
    return flat.reshape(b, g, g, -1), bs

  def loss(self, params, batch_stats, method_state, batch, rngs, step):
    del step
    c = self.config.cpc
    z, bs_enc = self.embed_grid(params, batch_stats, self.view(batch, "v1"),
                                rngs.modules("encoder/patches"))
    g = z.shape[1]
    if g <= c.prediction_steps:
      raise errors.ConfigError(f"config.cpc: a {g}x{g} patch grid is too small for "
                               f"prediction_steps={c.prediction_steps}.")
    losses, accuracies = [], []
    for direction in self.directions:
      # E.g. bottom-up is top-down on the grid upside down: row i of the
      # flipped grid is row G-1-i, and "k rows below" there is k rows above.
      # InfoNCE's candidates are the same patches in another order.
      grid = DIRECTIONS[direction](z)
      context_name, predictors_name = parameter_names(direction)
      context = self.context.apply({"params": params[context_name]}, grid)
      predictions = self.predictors.apply({"params": params[predictors_name]},
                                          context)  # [B, G, G, K, D]
      for k in range(1, c.prediction_steps + 1):
        loss, accuracy = info_nce(predictions[..., k - 1, :], grid, k, c.temperature)
        losses.append(loss)
        accuracies.append(accuracy)
    pooled = jnp.mean(z, axis=(1, 2))
    return jnp.mean(jnp.stack(losses)), base.LossOutput(
        batch_stats={"encoder": bs_enc, **{name: {} for direction in self.directions
                                           for name in parameter_names(direction)}},
        method_state=method_state, features=pooled, embeddings=pooled,
        metrics={"cpc_accuracy": jnp.mean(jnp.stack(accuracies))})
