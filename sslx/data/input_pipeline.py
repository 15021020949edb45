"""One tf.data pipeline for every dataset: pretraining views and evaluation.

Pretraining (`make_pretrain_iterator`) yields, forever, batches of `views`
{group: uint8 [local_batch, n, S, S, 3]} (each view group's n crops of each
image at its own size S: random resized crop + horizontal flip, done here on
the host), `label` int32 [local_batch] (-1 when unlabelled) and `index` int32
[local_batch] (the example's id in the split). Photometric augmentation runs
on device elsewhere. The V crops of an image are numbered over the groups in
order (sslx/data/views.py).

The stream is a pure function of the seed. Example number i of a stream
(counting from 0 over all epochs) is example j = i mod N of epoch e = i // N,
and the random numbers of its view v come from the stateless Philox generator
at counter (i * V + v) * 11 of the stream's key: a function of (key, i, v)
only. Since consecutive examples own consecutive counters, one Philox call
draws the numbers of a whole batch, and the crop windows of a batch are
computed with a few vectorised ops and cut and resized by one
`tf.image.crop_and_resize` (images of variable size, such as ImageNet's, are
cropped one at a time with the same numbers and the same op,
sslx/data/crops.py).

npz arrays and image folders are read by index: there is one global stream,
keyed by the seed, whatever the number of processes P. Epoch e is a
permutation of the whole split seeded by (seed, e), and process p reads rows
[p B / P, (p + 1) B / P) of each global batch of B, so P processes read
exactly the batches one process reads. Resuming at `start_step=k` starts
reading at global position k * B: it costs the same anywhere in an epoch.

TFDS record files are read in sequence, one shard per process, each with its
own stream keyed by (seed, process): epoch e is a tf.data shuffle seeded by
(seed, process, e). Resuming builds the stream directly from epoch
e0 = k * B_local // N and skips the remaining examples while they are still
encoded (or cached), before decoding or augmentation. Neither kind replays
earlier epochs.

Evaluation (`make_eval_iterator`) makes one deterministic pass over a split:
shorter side resized to S / eval_crop_fraction, center crop S, padded to
whole batches with `mask` False, and padded with empty batches so that every
process yields `num_eval_batches(...)` batches and no collective deadlocks.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

from absl import logging
import jax
import numpy as np

from sslx.data import crops
from sslx.data import datasets
from sslx.data import views as views_lib
from sslx.data.host_tf import tf
from sslx.errors import ConfigError

# The RNG algorithm is named rather than 'auto_select', which may pick another
# algorithm on another device and so change the stream.
_RNG_ALG = "philox"
# Distinct streams derived from one (seed, process) key.
_PURPOSE_AUGMENT = 0
_PURPOSE_SHUFFLE = 1


def make_pretrain_iterator(
    data_config: Any, views_config: Any, *, global_batch_size: int, seed: int,
    view_groups: list[str] | None = None,
    start_step: int = 0, process_index: int | None = None,
    process_count: int | None = None, split: str | None = None,
    indices: np.ndarray | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Returns an infinite iterator of augmented pretraining batches.

  Fine-tuning uses the same stream on labelled data: `split` names the split
  (default: the dataset's pretraining split) and `indices` a subset of it.

  Args:
    data_config: `config.data`.
    views_config: `config.views` (view groups, sslx/data/views.py) or a list
      of parsed `ViewGroup`s; only the crop and flip fields are used here.
    global_batch_size: batch size over all processes.
    seed: the stream is a pure function of this seed (and the process index).
    view_groups: the method's declared group order (crop numbering); None:
      natural name order.
    start_step: yield the batches an uninterrupted iterator yields from its
      `start_step`-th batch on (for resuming from a checkpoint).
    process_index: this process; default `jax.process_index()`.
    process_count: number of processes; default `jax.process_count()`.
    split: a split name of the dataset (e.g. its labelled train split).
    indices: keep only these examples of the split (sorted indices).

  Yields:
    {'views': {group: uint8 [B, n, S, S, 3]}, 'label': int32 [B], 'index':
    int32 [B]} with B = global_batch_size // process_count, n and S the
    group's `num_crops` and `crop_size` (default data_config.image_size), and
    `index` the example's id in the split: a stable number in [0, N), the same
    image always has the same one (memory banks, exemplar classes).

  Raises:
    ConfigError: invalid batch size, views or image size.
    DatasetNotAvailableError: the dataset cannot be read.
  """
  process_index, process_count = _process(process_index, process_count)
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ConfigError(
        f"batch_size {global_batch_size} must be a positive multiple of the "
        f"number of processes ({process_count}).")
  if start_step < 0:
    raise ConfigError(f"start_step must be >= 0, got {start_step}.")
  local_batch = global_batch_size // process_count
  image_size = _image_size(data_config)
  groups = views_lib.parse_groups(views_config, image_size=image_size, declared=view_groups)
  info = datasets.get_dataset_info(data_config)

  # Python-side seeds (file order) from a SeedSequence, tensor-side seeds by
  # folding into a [seed, process] key; both accept any int seed.
  seed = int(seed) % 2**63
  file_seed = int(np.random.SeedSequence([seed, process_index, 2])
                  .generate_state(1)[0]) % 2**31
  split = split or info.pretrain_split
  # npz arrays and folders are read by index as one global stream that the
  # processes split batch by batch, so every process loads the whole split and
  # the stream's numbers are keyed by the seed alone (process 0's key: one
  # process's stream is that stream). TFDS record files are read as one shard
  # per process, each with its own stream.
  by_index = datasets.reads_by_index(data_config)
  src = datasets.load_split(
      data_config, split, process_index=0 if by_index else process_index,
      process_count=1 if by_index else process_count, shuffle_files_seed=file_seed,
      indices=indices)
  if src.num_examples <= 0:
    raise ConfigError(
        f"Process {process_index} of {process_count} has no examples of "
        f"{info.name} split {split!r}.")
  par = _parallel(data_config)
  to_rgb = _rgb_converter(data_config)
  key = tf.constant([seed, 0 if by_index else process_index], tf.int64)
  shuffle_key = _fold_in(key, _PURPOSE_SHUFFLE)
  sampler = crops.ViewSampler(_fold_in(key, _PURPOSE_AUGMENT), groups)
  if by_index:
    shuffle = int(data_config.shuffle_buffer or 0) > 1
    ds = _random_access_stream(src, start_step * global_batch_size, global_batch_size,
                               process_index, process_count, shuffle_key if shuffle else None)
    decode = src.decode
  else:
    ds, decode = _record_stream(data_config, src, info.name, split, start_step * local_batch,
                                shuffle_key, par)
  if tf.TensorShape(src.image_shape).is_fully_defined():
    # Equal image sizes: decode one by one, then crop whole batches at once.
    if decode is not None:
      ds = ds.map(lambda i, ex: (i, dict(ex, image=decode(ex["image"]))),
                  num_parallel_calls=par, deterministic=True)
    ds = ds.batch(local_batch, drop_remainder=True)

    def augment_batch(position, ex):
      u = sampler.draws(position[0], local_batch)
      cut = sampler.crop(ex["image"], u)
      return {"views": {k: to_rgb(v) for k, v in cut.items()},
              "label": ex["label"], "index": ex["index"]}

    ds = ds.map(augment_batch, num_parallel_calls=par, deterministic=True)
  else:
    # Sizes vary (ImageNet, image folders): crop each image on its own.
    def augment_one(position, ex):
      image = ex["image"] if decode is None else decode(ex["image"])
      cut = sampler.crop(image[None], sampler.draws(position, 1))
      return {"views": {k: to_rgb(v[0]) for k, v in cut.items()},
              "label": ex["label"], "index": ex["index"]}

    ds = ds.map(augment_one, num_parallel_calls=par, deterministic=True)
    ds = ds.batch(local_batch, drop_remainder=True)
  return _finish(ds, data_config).as_numpy_iterator()


def _record_stream(data_config: Any, src: datasets.SplitSource, name: str, split: str,
                   first: int, shuffle_key: tf.Tensor, par: int):
  """(This process's (position, example) stream of record files from `first`, decode or None).

  Epoch e is the shard in a tf.data shuffle seeded by (seed, process, e).
  Resuming builds the stream directly from epoch first // N and skips the
  first % N examples while they are still encoded (or cached), before
  decoding or augmentation.
  """
  n = src.num_examples
  decode = src.decode
  start, stride = src.index_start, src.index_stride
  # The example's id: its position in this process's shard, mapped to the split.
  base = src.dataset.enumerate().map(
      lambda i, ex: {"image": ex["image"], "label": ex["label"],
                     "index": tf.cast(start + i * stride, tf.int32)})
  if decode is not None and _cache_fits(data_config, src, name, split):
    # Cache decoded uint8 images: later epochs skip reading and decoding. The
    # cache belongs to `base`, so every epoch below (a fresh iterator over it
    # inside flat_map) reads the same cache.
    base = base.map(lambda ex: dict(ex, image=decode(ex["image"])),
                    num_parallel_calls=par, deterministic=True).cache()
    decode = None
  buffer = min(int(data_config.shuffle_buffer or 0), n)

  def epoch(e: tf.Tensor) -> tf.data.Dataset:
    # A new shuffle per epoch seeded by (seed, process, e) rather than
    # shuffle(reshuffle_each_iteration=True).repeat(): the order of epoch e
    # must not depend on how many epochs this iterator has already read.
    ds = base
    if buffer > 1:
      epoch_seed = tf.random.stateless_uniform(
          [], seed=_fold_in(shuffle_key, e), minval=0, maxval=2**31 - 1,
          dtype=tf.int64, alg=_RNG_ALG)
      ds = ds.shuffle(buffer, seed=epoch_seed)
    return tf.data.Dataset.zip(tf.data.Dataset.range(e * n, (e + 1) * n), ds)

  return tf.data.Dataset.counter(first // n).flat_map(epoch).skip(first % n), decode


# Decoded images are cached in host memory only up to this share of it: the
# rest is for tf.data's buffers, the framework and the checkpoints' copies.
CACHE_MEMORY_FRACTION = 0.25


def _host_memory_bytes() -> int:
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _cache_fits(data_config: Any, src: datasets.SplitSource, name: str, split: str) -> bool:
  """config.data.cache, unless the decoded split would not fit in memory (then logged)."""
  if not data_config.cache:
    return False
  limit = CACHE_MEMORY_FRACTION * _host_memory_bytes()
  gib = lambda b: f"{b / 2**30:.1f} GiB"
  if src.decoded_bytes is None or src.decoded_bytes > limit:
    size = "of unknown size" if src.decoded_bytes is None else f"about {gib(src.decoded_bytes)}"
    logging.warning(
        "Not caching the decoded images of %s %s in memory: %s, over %d%% of this host's %s. "
        "Each epoch reads and decodes them again. config.data.cache=False says so and "
        "silences this.", name, split, size, round(100 * CACHE_MEMORY_FRACTION),
        gib(_host_memory_bytes()))
    return False
  logging.info("Caching the decoded images of %s %s in memory: about %s of this host's %s.",
               name, split, gib(src.decoded_bytes), gib(_host_memory_bytes()))
  return True


def _random_access_stream(src: datasets.SplitSource, first: int, global_batch: int,
                          process_index: int, process_count: int,
                          shuffle_key: tf.Tensor | None) -> tf.data.Dataset:
  """This process's (position, example) of the global stream from global position `first`.

  Position g of the global stream is example order_e[g - e N] of epoch
  e = g // N, where order_e is a permutation of the whole split's N indices
  seeded by (seed, e) (stored order when shuffle_key is None). Global batch b
  is positions [b B, (b + 1) B); process p takes its rows
  [b B + p B / P, b B + (p + 1) B / P), so P processes together read exactly
  what one process reads, in every epoch every example once, and resuming
  anywhere costs the same (nothing before `first` is read).
  """
  table = {k: tf.constant(v) for k, v in src.table.items()}
  n, local = src.num_examples, global_batch // process_count

  def example(j):
    return {"image": tf.gather(table["image"], j), "label": tf.gather(table["label"], j),
            "index": tf.cast(j, tf.int32)}

  def epoch_from(e, g0):
    order = tf.range(n, dtype=tf.int64)
    if shuffle_key is not None:
      order = tf.random.experimental.stateless_shuffle(order, seed=_fold_in(shuffle_key, e),
                                                       alg=_RNG_ALG)
    positions = tf.data.Dataset.range(g0, (e + 1) * n)
    if process_count > 1:
      positions = positions.filter(lambda g: (g % global_batch) // local == process_index)
    return positions.map(lambda g: (g, example(tf.gather(order, g - e * n))))

  e0 = first // n
  later = tf.data.Dataset.counter(e0 + 1).flat_map(lambda e: epoch_from(e, e * n))
  return epoch_from(tf.constant(e0, tf.int64), tf.constant(first, tf.int64)).concatenate(later)


def num_eval_batches(data_config: Any, split: str, *, batch_size: int,
                     process_count: int | None = None,
                     indices: np.ndarray | None = None) -> int:
  """Batches that `make_eval_iterator` yields, the same on every process."""
  _, process_count = _process(None, process_count)
  src = datasets.load_split(
      data_config, _eval_split(data_config, split), process_index=0,
      process_count=process_count, indices=indices)
  return _num_batches(src.num_examples_total, process_count, batch_size)


def make_eval_iterator(
    data_config: Any, split: str, *, batch_size: int,
    process_index: int | None = None, process_count: int | None = None,
    indices: np.ndarray | None = None) -> _SizedIterator:
  """Returns one deterministic pass over a split, in stored order.

  Each process reads its own shard (`tfds.split_for_jax_process` or
  `Dataset.shard`); together the processes cover the split exactly once.

  Args:
    data_config: `config.data`.
    split: 'train' or 'test' (the dataset's labelled train split or its test
      split).
    batch_size: rows per batch on this process.
    process_index: this process; default `jax.process_index()`.
    process_count: number of processes; default `jax.process_count()`.
    indices: read only these examples of the split (sorted indices into it,
      e.g. a few-label subset from `sslx.data.subsets`).

  Returns:
    An iterator with `len()` = `num_eval_batches(...)` of
    {'image': uint8 [batch_size, S, S, 3], 'label': int32 [batch_size],
    'mask': bool [batch_size]}; padding rows have mask False, label -1 and
    zero pixels.
  """
  process_index, process_count = _process(process_index, process_count)
  if batch_size <= 0:
    raise ConfigError(f"Eval batch_size must be positive, got {batch_size}.")
  image_size = _image_size(data_config)
  fraction = float(data_config.eval_crop_fraction)
  if not 0.0 < fraction <= 1.0:
    raise ConfigError("config.data.eval_crop_fraction must be in (0, 1], got "
                      f"{fraction}.")
  src = datasets.load_split(
      data_config, _eval_split(data_config, split),
      process_index=process_index, process_count=process_count,
      indices=indices)
  num_batches = _num_batches(src.num_examples_total, process_count, batch_size)
  if src.num_examples > num_batches * batch_size:
    raise AssertionError(  # Shards are even, so this cannot happen.
        f"Process {process_index} has {src.num_examples} examples, more than "
        f"{num_batches} batches of {batch_size}.")
  decode = src.decode
  start, stride = src.index_start, src.index_stride
  transform = _eval_transform(image_size, fraction, data_config.get("grey", False))

  def prepare(i, ex):
    image = ex["image"] if decode is None else decode(ex["image"])
    return {"image": transform(image), "label": ex["label"], "mask": tf.constant(True),
            "index": tf.cast(start + i * stride, tf.int32)}

  ds = src.dataset.enumerate().map(prepare, num_parallel_calls=_parallel(data_config),
                                   deterministic=True)
  num_pad = num_batches * batch_size - src.num_examples
  pad = {"image": tf.zeros([image_size, image_size, 3], tf.uint8),
         "label": tf.constant(-1, tf.int32), "mask": tf.constant(False),
         "index": tf.constant(-1, tf.int32)}
  ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(num_pad))
  ds = ds.batch(batch_size, drop_remainder=True)
  return _SizedIterator(_finish(ds, data_config).as_numpy_iterator(),
                        num_batches)


def _eval_transform(image_size: int, crop_fraction: float, grey: bool):
  """uint8 [H, W, C] -> uint8 [S, S, 3]: what evaluation makes of one image (shorter side to
  S / crop_fraction, centre crop S, RGB or grey lightness)."""
  resize_to = int(round(image_size / crop_fraction))
  to_rgb = _rgb_converter({"grey": grey})
  return lambda image: to_rgb(_resize_center_crop(image, resize_to, image_size))


def eval_crops(images: np.ndarray, preprocessing: Any, batch_size: int = 256) -> np.ndarray:
  """uint8 [N, H, W, C] images (C = 1 or 3) -> uint8 [N, S, S, 3], exactly as the evaluation
  pipeline crops them for an encoder with `preprocessing` (`sslx.data.info.Preprocessing`):
  `sslx.load_encoder`'s encoders and every evaluator feed an encoder the same pixels."""
  transform = _eval_transform(preprocessing.image_size, preprocessing.crop_fraction,
                              preprocessing.grey)
  ds = tf.data.Dataset.from_tensor_slices(images).map(transform).batch(batch_size)
  return np.concatenate([np.zeros((0, preprocessing.image_size, preprocessing.image_size, 3),
                                  np.uint8), *ds.as_numpy_iterator()])


class _SizedIterator:
  """An iterator that also knows how many items it yields (`len()`)."""

  def __init__(self, it: Iterator[dict[str, np.ndarray]], length: int):
    self._it = it
    self._length = length

  def __iter__(self) -> _SizedIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._it)

  def __len__(self) -> int:
    return self._length


# ----------------------------------------------------------- augmentation ----


def _fold_in(key: tf.Tensor, data: Any) -> tf.Tensor:
  return tf.random.experimental.stateless_fold_in(
      key, tf.cast(data, tf.int64), alg=_RNG_ALG)


def _resize_center_crop(image: tf.Tensor, resize_to: int,
                        size: int) -> tf.Tensor:
  """Resizes the shorter side to `resize_to`, then center-crops [size, size]."""
  channels = image.shape[-1]
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  short = tf.minimum(h, w)
  scale = resize_to / tf.cast(short, tf.float32)
  new_h = tf.cast(tf.round(tf.cast(h, tf.float32) * scale), tf.int32)
  new_w = tf.cast(tf.round(tf.cast(w, tf.float32) * scale), tf.int32)
  new_h = tf.where(h == short, resize_to, new_h)
  new_w = tf.where(w == short, resize_to, new_w)
  # Skip resampling when the size already matches, so e.g. 28 px digits at
  # fraction 1.0 come out bit-identical.
  image = tf.cond(
      short == resize_to, lambda: image,
      lambda: crops.to_uint8(tf.image.resize(image, [new_h, new_w],
                                             method="bilinear", antialias=True)))
  # Offsets rounded as torchvision's CenterCrop does.
  top = tf.cast(tf.round(tf.cast(new_h - size, tf.float32) / 2), tf.int32)
  left = tf.cast(tf.round(tf.cast(new_w - size, tf.float32) / 2), tf.int32)
  out = tf.slice(image, [top, left, 0], [size, size, -1])
  return tf.ensure_shape(out, [size, size, channels])


def _to_rgb(images: tf.Tensor) -> tf.Tensor:
  """Repeats a grey channel three times so every encoder sees RGB."""
  if images.shape[-1] == 1:
    return tf.tile(images, [1] * (images.shape.rank - 1) + [3])
  return images


def grey_of_same_lightness(images: tf.Tensor) -> tf.Tensor:
  """uint8 sRGB [..., 3] -> the neutral grey with the same CIE lightness L, as uint8 RGB.

  What colorization's encoder sees (sslx.data.lab: L kept, a = b = 0, back to
  sRGB). With a = b = 0 the colour is the grey whose linear value is the
  luminance Y, so no Lab round trip is needed: linearise, Y, re-encode.
  """
  images = tf.convert_to_tensor(images)
  x = tf.cast(images, tf.float32) / 255.0
  linear = tf.where(x > 0.04045, ((x + 0.055) / 1.055) ** 2.4, x / 12.92)
  y = tf.tensordot(linear, tf.constant([0.212671, 0.715160, 0.072169]), 1)[..., None]
  grey = tf.where(y > 0.0031308, 1.055 * tf.maximum(y, 0.0031308) ** (1 / 2.4) - 0.055,
                  12.92 * y)
  grey = tf.cast(tf.round(tf.clip_by_value(grey, 0.0, 1.0) * 255.0), tf.uint8)
  return tf.tile(grey, [1] * (images.shape.rank - 1) + [3])


def _rgb_converter(data_config: Any):
  """`_to_rgb`, or with `data.grey` every colour image as its lightness only."""
  if not data_config.get("grey", False):
    return _to_rgb
  return lambda images: (_to_rgb(images) if images.shape[-1] == 1
                         else grey_of_same_lightness(images))


# ---------------------------------------------------------------- helpers ----


def _process(index: int | None, count: int | None) -> tuple[int, int]:
  index = jax.process_index() if index is None else int(index)
  count = jax.process_count() if count is None else int(count)
  if count < 1 or not 0 <= index < count:
    raise ConfigError(f"process_index {index} must be in [0, process_count) "
                      f"with process_count {count} >= 1.")
  return index, count


def _image_size(data_config: Any) -> int:
  size = data_config.image_size
  if not isinstance(size, (int, np.integer)) or size <= 0:
    raise ConfigError(f"config.data.image_size must be a positive int, got "
                      f"{size!r}.")
  return int(size)


def _eval_split(data_config: Any, split: str) -> str:
  info = datasets.get_dataset_info(data_config)
  if split not in ("train", "test"):
    raise ConfigError(f"Eval split must be 'train' or 'test', got {split!r}.")
  name = info.train_split if split == "train" else info.test_split
  if name is None:
    why = ("is unlabelled" if split == "train"
           else "has no test split")
    raise ConfigError(
        f"Dataset {info.name} {why}, so it has no {split!r} split to evaluate "
        "on. Use a labelled dataset with a test split (e.g. mnist5k, cifar10, "
        "npz with x_test/y_test, folder with test/<class>/), or for pretraining "
        "switch off what needs it (--config.eval.knn=False --config.eval.linear=False "
        "--config.probe.enabled=False).")
  return name


def _num_batches(total: int, process_count: int, batch_size: int) -> int:
  # Even sharding gives every process at most ceil(total / count) examples.
  return -(-(-(-total // process_count)) // batch_size)


def _parallel(data_config: Any) -> int:
  n = data_config.num_parallel_calls
  return tf.data.AUTOTUNE if n is None or n < 0 else max(int(n), 1)


def _finish(ds: tf.data.Dataset, data_config: Any) -> tf.data.Dataset:
  prefetch = data_config.prefetch
  if prefetch:
    ds = ds.prefetch(tf.data.AUTOTUNE if prefetch < 0 else int(prefetch))
  options = tf.data.Options()
  options.deterministic = True
  # No autotuning model. Its thread sleeps between optimisations for up to a
  # minute, and destroying the iterator waits for it to wake: the quick starts
  # sat idle for 16-36 s at exit. Without it, AUTOTUNE parallelism keeps
  # tf.data's starting value (bounded by the host's threads), and the
  # pipeline's rate did not drop (experiments/README.md, "Five minutes: 20 px
  # digits").
  options.autotune.enabled = False
  return ds.with_options(options)
