"""Patches cut from images on device: grids with gaps and jitter, per-patch normalisation.

Shared by the patch-based pretext tasks (relative patch location, jigsaw,
CPC). Everything here is a pure JAX function of explicit keys, so a method
that calls it inside the jitted step stays reproducible and device-count
independent.

Grid layout. An S x S image is cut into a g x g grid of cells of side
c = S // g (the last S - g*c rows and columns are unused). Inside each cell a
patch of side p is placed at a random offset. With `gap` the offsets are kept
in [gap // 2, c - p - (gap - gap // 2)], so two horizontally or vertically
adjacent patches are always at least `gap` pixels apart (Doersch et al., 2015,
Sec. 3: gaps and jitter so that low-level cues such as continuing lines and
textures cannot solve the task).
"""

import jax
import jax.numpy as jnp

from sslx import errors


def grid_geometry(image_size: int, grid: int, patch: int, gap: int = 0) -> tuple[int, int]:
  """(cell side, largest jitter) of the layout; ConfigError if the patches cannot fit."""
  cell = image_size // grid
  jitter = cell - patch - gap
  if grid < 1 or patch < 1 or gap < 0 or jitter < 0:
    raise errors.ConfigError(
        f"A {grid}x{grid} grid of {patch} px patches at least {gap} px apart does not fit in "
        f"{image_size} px crops (cells of {cell} px); need crop_size >= {grid} x "
        f"(patch + gap) = {grid * (patch + gap)}.")
  return cell, jitter


def grid_offsets(rng: jax.Array, batch: int, image_size: int, grid: int, patch: int,
                 gap: int = 0, jitter: bool = True) -> jax.Array:
  """Top-left corners [B, g*g, 2] (row, col) of each cell's patch, cells in row-major order.

  jitter=False centres each patch in its cell.
  """
  cell, max_jitter = grid_geometry(image_size, grid, patch, gap)
  rows, cols = jnp.meshgrid(jnp.arange(grid), jnp.arange(grid), indexing="ij")
  base = jnp.stack([rows.ravel(), cols.ravel()], axis=-1) * cell  # [g*g, 2]
  if jitter:
    shift = jax.random.randint(rng, (batch, grid * grid, 2), 0, max_jitter + 1)
  else:
    shift = jnp.full((batch, grid * grid, 2), max_jitter // 2)
  return base[None] + gap // 2 + shift


def crop_patches(images: jax.Array, offsets: jax.Array, patch: int) -> jax.Array:
  """Patches [B, K, p, p, C] of `images` [B, H, W, C] at `offsets` [B, K, 2] (top-left corners)."""

  def one(image, corner):
    return jax.lax.dynamic_slice(image, (corner[0], corner[1], 0), (patch, patch, image.shape[-1]))

  return jax.vmap(jax.vmap(one, in_axes=(None, 0)))(images, offsets)


def normalize_each(patches: jax.Array, eps: float = 1e-5) -> jax.Array:
  """Each patch [..., p, p, C] to zero mean and unit variance per channel over its own pixels.

  Noroozi & Favaro (2016, Sec. 3.2) normalise every tile independently, so that
  tiles cannot be matched by their mean intensity or contrast.
  """
  mean = jnp.mean(patches, axis=(-3, -2), keepdims=True)
  var = jnp.var(patches, axis=(-3, -2), keepdims=True)
  return (patches - mean) * jax.lax.rsqrt(var + eps)


def drop_colors(rng: jax.Array, patches: jax.Array, prob: float,
                noise_fraction: float = 0.01) -> jax.Array:
  """Colour dropping against chromatic aberration (Doersch et al., 2015, Sec. 4.2).

  With probability `prob`, a patch keeps one random colour channel and the
  other two are replaced by Gaussian noise of `noise_fraction` times that
  channel's standard deviation, so the relative shift of the colour channels
  across the lens (a cue to the patch's position in the image) is gone.
  `patches` is [N, p, p, 3]; the decision is made per patch.
  """
  if prob <= 0:
    return patches
  k_apply, k_keep, k_noise = jax.random.split(rng, 3)
  n = patches.shape[0]
  apply = jax.random.bernoulli(k_apply, prob, (n,))
  keep = jax.random.randint(k_keep, (n,), 0, patches.shape[-1])
  keep_mask = jax.nn.one_hot(keep, patches.shape[-1], dtype=patches.dtype)[:, None, None, :]
  kept = jnp.sum(patches * keep_mask, axis=-1, keepdims=True)
  std = jnp.std(kept, axis=(1, 2, 3), keepdims=True)
  noise = noise_fraction * std * jax.random.normal(k_noise, patches.shape, patches.dtype)
  dropped = keep_mask * patches + (1 - keep_mask) * noise
  return jnp.where(apply[:, None, None, None], dropped, patches)
