"""Jigsaw puzzles (Noroozi & Favaro, 2016, arXiv:1603.09246).

A crop is cut into a 3x3 grid of cells and one tile is taken at a random
place inside each cell (so tiles do not share edges). The nine tiles are
shuffled by one of a fixed set of P permutations; a network that embeds each
tile with one shared encoder (the paper's "context-free network"), joins the
nine embeddings in their shuffled order and classifies them into P classes,
must work out which permutation was applied, that is, where each tile belongs.

The permutation set (paper Sec. 3.2): chosen greedily from all 9! orders so
that the permutations are far apart in Hamming distance, since puzzles that
differ in one swap teach little and are ambiguous. sslx picks, at each step,
the order whose smallest distance to those already chosen is largest
(ties: the first in lexicographic order), starting from one drawn by
`jigsaw.permutation_seed`. The set is part of the method state, so a
checkpoint carries the exact classes its head was trained on.

Shortcuts: every tile is normalised to zero mean and unit variance on its
own (per channel), so tiles cannot be matched by brightness or contrast; the
random place inside each cell breaks edge continuity (the paper: 64 px tiles
in 75 px cells).
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sslx import models
from sslx.config import validation as config_validation
from sslx.data import patches as patches_lib
from sslx.methods import base

GRID = 3
TILES = GRID * GRID


@functools.lru_cache(maxsize=8)
def permutation_set(num_permutations: int, seed: int) -> np.ndarray:
  """[P, 9] int32: P orders of the tiles, greedily far apart in Hamming distance (see above)."""
  every = np.array(list(itertools.permutations(range(TILES))), np.int8)  # [9!, 9], lexicographic
  # One contiguous row of 9! per tile position: the distance to an order is then 9
  # vectorised compares (0.5 s for P = 1,000, where summing over the [9!, 9] array's
  # short rows took 11 s of every jigsaw run's start).
  columns = np.ascontiguousarray(every.T)

  def distance_to(order):
    d = np.zeros(len(every), np.int8)
    for position, tile in enumerate(order):
      d += columns[position] != tile
    return d

  first = np.random.default_rng(seed).integers(len(every))
  chosen = [first]
  nearest = distance_to(every[first])  # distance of each order to the chosen set
  for _ in range(num_permutations - 1):
    pick = int(np.argmax(nearest))
    chosen.append(pick)
    np.minimum(nearest, distance_to(every[pick]), out=nearest)
  return every[chosen].astype(np.int32)


def shuffle_tiles(tiles: jax.Array, permutations: jax.Array, labels: jax.Array) -> jax.Array:
  """Position i of image b gets tile permutations[labels[b], i]; tiles [B, 9, ...]."""
  order = permutations[labels]  # [B, 9]
  return jnp.take_along_axis(tiles, order.reshape(order.shape + (1,) * (tiles.ndim - 2)), axis=1)


class Method(base.SSLMethod):
  """Jigsaw puzzles on the generic trainer."""

  view_groups = ("v1",)

  @classmethod
  def config_problems(cls, config):
    c = config.jigsaw
    problems = super().config_problems(config) + config_validation.check_fields(c, {
        "num_permutations": config_validation.POSITIVE_INT,
        "permutation_seed": config_validation.NON_NEGATIVE_INT,
        "tile_size": config_validation.POSITIVE_INT,
    }, prefix="jigsaw.")
    if problems:
      return problems
    if not 2 <= c.num_permutations <= 1000:
      problems.append(f"config.jigsaw.num_permutations={c.num_permutations}; it must be in "
                      "[2, 1000] (the paper uses 100; 1000 is its largest set).")
    crop = config.views.get("v1", {}).get("crop_size") or config.data.image_size
    if crop // GRID < c.tile_size:
      problems.append(f"config.jigsaw.tile_size={c.tile_size} does not fit in the cells of a "
                      f"3x3 grid on {crop} px crops ({crop // GRID} px); set "
                      f"config.views.v1.crop_size >= {GRID * c.tile_size}.")
    return problems

  def __init__(self, config, **kwargs):
    super().__init__(config, **kwargs)
    self.head = models.MLP(hidden_dims=tuple(config.jigsaw.head_hidden_dims),
                           out_dim=config.jigsaw.num_permutations, dtype=self.dtype)

  def init(self, rng, images):
    k_enc, k_head = jax.random.split(rng)
    c = self.config.jigsaw
    params, batch_stats = {}, {}
    params["encoder"], batch_stats["encoder"], x = self.init_encoder(
        k_enc, images[:, :c.tile_size, :c.tile_size])
    params["head"], batch_stats["head"] = self.init_module(
        self.head, k_head, jnp.tile(x, (1, TILES)))
    perms = permutation_set(c.num_permutations, c.permutation_seed)
    return params, batch_stats, {"permutations": jnp.asarray(perms)}

  def loss(self, params, batch_stats, method_state, batch, rngs, step):
    del step
    c = self.config.jigsaw
    view = self.view(batch, "v1")
    b, size = view.shape[0], view.shape[1]
    offsets = patches_lib.grid_offsets(rngs.method("jigsaw/placement"), b, size, GRID,
                                       c.tile_size)
    tiles = patches_lib.normalize_each(patches_lib.crop_patches(view, offsets, c.tile_size))
    labels = jax.random.randint(rngs.method("jigsaw/permutation"), (b,), 0, c.num_permutations)
    shuffled = shuffle_tiles(tiles, method_state["permutations"], labels)
    flat, bs_enc = self.encode(params["encoder"], batch_stats["encoder"],
                               shuffled.reshape(b * TILES, *tiles.shape[2:]),
                               rngs.modules("encoder/tiles"))
    features = flat.reshape(b, TILES, -1)
    logits, bs_head = self.apply_train(self.head, params["head"], batch_stats["head"],
                                       features.reshape(b, -1))
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    pooled = jnp.mean(features, axis=1)  # order-free: the probe's view of the image
    return loss, base.LossOutput(
        batch_stats={"encoder": bs_enc, "head": bs_head}, method_state=method_state,
        features=pooled, embeddings=pooled, metrics={"permutation_accuracy": accuracy})
