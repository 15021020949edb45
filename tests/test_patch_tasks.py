"""Relative patch location and jigsaw: patch geometry, labels, permutations, losses vs numpy."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslx import errors
from sslx.data import patches
from sslx.methods import jigsaw, relative_patch
from conftest import method_batch, step_rngs, tiny_config


def test_grid_patches_keep_the_gap_and_stay_in_their_cells():
  size, grid, patch, gap = 30, 3, 7, 2
  offsets = np.asarray(patches.grid_offsets(jax.random.PRNGKey(0), 500, size, grid, patch, gap))
  cell = size // grid
  rows, cols = np.divmod(np.arange(9), 3)
  # Each patch lies inside its own cell...
  assert np.all(offsets[..., 0] >= rows * cell) and np.all(offsets[..., 1] >= cols * cell)
  assert np.all(offsets[..., 0] + patch <= rows * cell + cell)
  assert np.all(offsets[..., 1] + patch <= cols * cell + cell)
  # ...and horizontal / vertical neighbours are at least `gap` px apart: never overlapping.
  for a in range(9):
    for b in range(9):
      if rows[b] == rows[a] and cols[b] == cols[a] + 1:
        assert (offsets[:, b, 1] - (offsets[:, a, 1] + patch)).min() >= gap
      if cols[b] == cols[a] and rows[b] == rows[a] + 1:
        assert (offsets[:, b, 0] - (offsets[:, a, 0] + patch)).min() >= gap
  # The jitter is used: every allowed offset within a cell occurs.
  assert len(np.unique(offsets[:, 0, 0])) == cell - patch - gap + 1
  with pytest.raises(errors.ConfigError, match=r"crop_size >= 3 x \(patch \+ gap\) = 27"):
    patches.grid_geometry(20, 3, 7, 2)


def test_crop_patches_cut_exactly_the_pixels_at_the_offsets():
  images = np.arange(2 * 12 * 12 * 3, dtype=np.float32).reshape(2, 12, 12, 3)
  offsets = np.array([[[0, 0], [5, 7]], [[3, 1], [8, 8]]])
  out = np.asarray(patches.crop_patches(jnp.asarray(images), jnp.asarray(offsets), 4))
  for b in range(2):
    for k in range(2):
      r, c = offsets[b, k]
      np.testing.assert_array_equal(out[b, k], images[b, r:r + 4, c:c + 4])


def test_relative_patch_labels_name_the_neighbours_grid_position():
  # Features that encode each patch's cell: the pair (centre, neighbour) of class k
  # must hold cell 4 and cell NEIGHBOURS[k], i.e. row-major positions around the centre.
  features = jnp.broadcast_to(jnp.arange(9.0)[None, :, None], (2, 9, 1))
  pairs = np.asarray(relative_patch.pairs(features))
  labels = np.asarray(relative_patch.pair_labels(2))
  positions = {0: (-1, -1), 1: (-1, 0), 2: (-1, 1), 3: (0, -1), 4: (0, 1), 5: (1, -1),
               6: (1, 0), 7: (1, 1)}  # (row, col) offset of class k from the centre
  for (centre, neighbour), label in zip(pairs, labels):
    assert centre == 4
    assert divmod(int(neighbour), 3) == (1 + positions[label][0], 1 + positions[label][1])
  # Every class exactly once per image: balanced in every batch.
  np.testing.assert_array_equal(np.bincount(labels, minlength=8), [2] * 8)


def test_relative_patch_loss_is_the_cross_entropy_of_the_pair_classifier():
  config = tiny_config("relative_patch", batch_size=4)
  config.views.v1.crop_size = 27
  method = relative_patch.Method(config)
  view = jax.random.normal(jax.random.PRNGKey(1), (4, 27, 27, 3))
  params, bs, state = method.init(jax.random.PRNGKey(0), view)
  rngs = step_rngs(jax.random.PRNGKey(2))
  loss, out = method.loss(params, bs, state, method_batch({"v1": view}), rngs, 0)
  cut = method.cut(rngs, view)
  h, _ = method.encode(params["encoder"], bs["encoder"], cut.reshape(-1, 7, 7, 3))
  logits, _ = method.apply_train(method.head, params["head"], bs["head"],
                                 relative_patch.pairs(h.reshape(4, 9, -1)))
  logits = np.asarray(logits, np.float64)
  labels = np.tile(np.arange(8), 4)
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  np.testing.assert_allclose(loss, -log_p[np.arange(32), labels].mean(), rtol=1e-5)
  assert out.features.shape == (4, method.feature_dim)


def test_colour_dropping_keeps_one_channel_and_replaces_the_others_by_faint_noise():
  x = jax.random.uniform(jax.random.PRNGKey(0), (64, 5, 5, 3))
  out = np.asarray(patches.drop_colors(jax.random.PRNGKey(1), x, prob=1.0))
  x = np.asarray(x)
  for i in range(64):
    kept = [c for c in range(3) if np.array_equal(out[i, ..., c], x[i, ..., c])]
    assert len(kept) == 1
    others = [c for c in range(3) if c != kept[0]]
    assert np.abs(out[i, ..., others]).max() < 0.1 * x[i, ..., kept[0]].std() + 1e-6
  np.testing.assert_array_equal(patches.drop_colors(jax.random.PRNGKey(1), x, prob=0.0), x)


def _min_distance(perms):
  d = (perms[:, None] != perms[None]).sum(-1)
  np.fill_diagonal(d, 10)
  return d.min()


def test_jigsaw_permutations_are_distinct_and_greedily_far_apart():
  perms = jigsaw.permutation_set(100, 0)
  assert perms.shape == (100, 9)
  assert all(sorted(p) == list(range(9)) for p in perms)
  assert len({tuple(p) for p in perms}) == 100
  assert _min_distance(perms) == 6  # measured; a random set of 100 has pairs 2 apart
  random_set = np.array([np.random.default_rng(s).permutation(9) for s in range(100)])
  assert _min_distance(random_set) < 6
  # Greedy max-min, checked by brute force for the first picks: each new
  # permutation is as far from the chosen ones as any permutation can be.
  every = np.array(list(itertools.permutations(range(9))))
  for n in range(1, 4):
    best = np.min([(every != p).sum(1) for p in perms[:n]], axis=0).max()
    assert np.min([(perms[n] != p).sum() for p in perms[:n]]) == best
  assert _min_distance(jigsaw.permutation_set(64, 0)) == 7
  # The digit and ImageNet presets' 1,000 (the README's method table quotes 5).
  thousand = jigsaw.permutation_set(1000, 0)
  assert len({tuple(p) for p in thousand}) == 1000 and _min_distance(thousand) == 5


def test_unpermuting_with_the_label_recovers_the_tile_order():
  perms = jnp.asarray(jigsaw.permutation_set(10, 1))
  tiles = jnp.arange(3 * 9 * 2, dtype=jnp.float32).reshape(3, 9, 2)
  labels = jnp.array([0, 7, 3])
  shuffled = np.asarray(jigsaw.shuffle_tiles(tiles, perms, labels))
  for b, label in enumerate(np.asarray(labels)):
    p = np.asarray(perms[label])
    np.testing.assert_array_equal(shuffled[b], np.asarray(tiles[b])[p])  # position i: tile p[i]
    restored = np.empty_like(shuffled[b])
    restored[p] = shuffled[b]
    np.testing.assert_array_equal(restored, tiles[b])


def test_tiles_are_normalised_each_on_its_own():
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 9, 6, 6, 3)) * 5 + 3
  out = np.asarray(patches.normalize_each(x))
  np.testing.assert_allclose(out.mean(axis=(2, 3)), 0, atol=1e-5)
  np.testing.assert_allclose(out.std(axis=(2, 3)), 1, atol=1e-3)


def test_jigsaw_loss_is_the_cross_entropy_of_the_permutation_class_and_state_holds_the_set():
  config = tiny_config("jigsaw", batch_size=4)
  config.views.v1.crop_size = 21
  config.jigsaw.update(num_permutations=10, tile_size=6)
  method = jigsaw.Method(config)
  view = jax.random.normal(jax.random.PRNGKey(1), (4, 21, 21, 3))
  params, bs, state = method.init(jax.random.PRNGKey(0), view)
  np.testing.assert_array_equal(state["permutations"], jigsaw.permutation_set(10, 0))
  rngs = step_rngs(jax.random.PRNGKey(2))
  loss, out = method.loss(params, bs, state, method_batch({"v1": view}), rngs, 0)
  # Reference: the same tiles and labels, then a numpy cross-entropy.
  k_place, k_label = rngs.method("jigsaw/placement"), rngs.method("jigsaw/permutation")
  offsets = patches.grid_offsets(k_place, 4, 21, 3, 6)
  tiles = patches.normalize_each(patches.crop_patches(view, offsets, 6))
  labels = np.asarray(jax.random.randint(k_label, (4,), 0, 10))
  shuffled = jigsaw.shuffle_tiles(tiles, state["permutations"], jnp.asarray(labels))
  h, _ = method.encode(params["encoder"], bs["encoder"], shuffled.reshape(36, 6, 6, 3))
  logits, _ = method.apply_train(method.head, params["head"], bs["head"], h.reshape(4, -1))
  logits = np.asarray(logits, np.float64)
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  np.testing.assert_allclose(loss, -log_p[np.arange(4), labels].mean(), rtol=1e-5)
  assert out.method_state["permutations"] is state["permutations"]
