"""Relative patch location (Doersch, Gupta & Efros, 2015, arXiv:1505.05192).

A crop is cut into a 3x3 grid of patches; given the centre patch and one of
its eight neighbours, a classifier predicts where the neighbour lies (8
classes). Doing so needs to know what objects and their parts look like
("the ear is above the eye"), which is what the encoder should learn.

Network: one encoder shared by both patches (a Siamese network; the paper's
per-patch fc6), their features concatenated, then an MLP head to the 8
classes (the paper's fc7 and fc8). Loss: cross-entropy of the true position.

Shortcuts the paper guards against, and how sslx does the same
(sslx/data/patches.py):
  * continuing edges and textures across the patch border: patches are kept
    at least `gap` pixels apart (the paper: half a patch) and each is
    jittered inside its cell (the paper: up to 7 px);
  * chromatic aberration (colour channels shift relative to each other with
    the distance to the lens centre, which gives away absolute position):
    colour dropping, keeping one random channel and replacing the other two
    with faint noise (`color_drop_prob`).

sslx trains on all eight pairs of every image (the paper samples one pair
per image): the classes are then exactly balanced in every batch, and the
centre patch, encoded once, serves eight examples.
"""

import jax
import jax.numpy as jnp
import optax

from sslx import models
from sslx.config import validation as config_validation
from sslx.data import patches as patches_lib
from sslx.methods import base

GRID = 3
CENTRE = 4  # row-major index of the centre cell
# Row-major cells of the 8 neighbours; class k is NEIGHBOURS[k]:
#   0 1 2
#   3 . 4
#   5 6 7
NEIGHBOURS = (0, 1, 2, 3, 5, 6, 7, 8)


def pair_labels(batch: int) -> jax.Array:
  """Class of each (centre, neighbour) pair as `pairs` orders them: [0..7] for every image."""
  return jnp.tile(jnp.arange(len(NEIGHBOURS), dtype=jnp.int32), batch)


def pairs(features: jax.Array) -> jax.Array:
  """[B, 9, D] patch features -> [B*8, 2D]: the centre's beside each neighbour's, in class order."""
  b, _, d = features.shape
  centre = jnp.broadcast_to(features[:, CENTRE:CENTRE + 1], (b, len(NEIGHBOURS), d))
  neighbours = features[:, jnp.array(NEIGHBOURS)]
  return jnp.concatenate([centre, neighbours], axis=-1).reshape(b * len(NEIGHBOURS), 2 * d)


class Method(base.SSLMethod):
  """Relative patch location on the generic trainer."""

  view_groups = ("v1",)

  @classmethod
  def config_problems(cls, config):
    c = config.relative_patch
    problems = super().config_problems(config) + config_validation.check_fields(c, {
        "patch_size": config_validation.POSITIVE_INT,
        "gap": config_validation.NON_NEGATIVE_INT,
        "jitter": config_validation.BOOL,
        "color_drop_prob": config_validation.UNIT_INTERVAL,
    }, prefix="relative_patch.")
    crop = config.views.get("v1", {}).get("crop_size") or config.data.image_size
    if not problems and crop // GRID < c.patch_size + c.gap:
      problems.append(
          f"config.relative_patch: a 3x3 grid of patch_size={c.patch_size} px patches "
          f"gap={c.gap} px apart needs crops of at least {GRID * (c.patch_size + c.gap)} px; "
          f"config.views.v1.crop_size is {crop} (set it, or shrink the patches).")
    return problems

  def __init__(self, config, **kwargs):
    super().__init__(config, **kwargs)
    self.head = models.MLP(hidden_dims=tuple(config.relative_patch.head_hidden_dims),
                           out_dim=len(NEIGHBOURS), dtype=self.dtype)

  def init(self, rng, images):
    k_enc, k_head = jax.random.split(rng)
    p = self.config.relative_patch.patch_size
    params, batch_stats = {}, {}
    params["encoder"], batch_stats["encoder"], x = self.init_encoder(k_enc, images[:, :p, :p])
    params["head"], batch_stats["head"] = self.init_module(
        self.head, k_head, jnp.concatenate([x, x], axis=-1))
    return params, batch_stats, {}

  def cut(self, rngs, view):
    """The 9 patches [B, 9, p, p, 3] of each crop, jittered, gapped, maybe colour-dropped."""
    c = self.config.relative_patch
    k_grid = rngs.method("relative_patch/grid")
    k_drop = rngs.method("relative_patch/color_drop")
    b, size = view.shape[0], view.shape[1]
    offsets = patches_lib.grid_offsets(k_grid, b, size, GRID, c.patch_size, c.gap, c.jitter)
    patches = patches_lib.crop_patches(view, offsets, c.patch_size)
    flat = patches.reshape(b * GRID * GRID, *patches.shape[2:])
    flat = patches_lib.drop_colors(k_drop, flat, c.color_drop_prob)
    return flat.reshape(patches.shape)

  def loss(self, params, batch_stats, method_state, batch, rngs, step):
    del step
    view = self.view(batch, "v1")
    b = view.shape[0]
    patches = self.cut(rngs, view)
    flat, bs_enc = self.encode(params["encoder"], batch_stats["encoder"],
                               patches.reshape(-1, *patches.shape[2:]),
                               rngs.modules("encoder/patches"))
    features = flat.reshape(b, GRID * GRID, -1)
    logits, bs_head = self.apply_train(self.head, params["head"], batch_stats["head"],
                                       pairs(features))
    labels = pair_labels(b)
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    # The probe and the monitors read the mean of an image's 9 patch features.
    pooled = jnp.mean(features, axis=1)
    return loss, base.LossOutput(
        batch_stats={"encoder": bs_enc, "head": bs_head}, method_state=method_state,
        features=pooled, embeddings=pooled, metrics={"position_accuracy": accuracy})
