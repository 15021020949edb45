r"""The pretraining input pipeline on a JPEG folder of ImageNet-sized images.

  python experiments/jpeg_folder.py make --dir=/tmp/sslx_jpegs --images=3000
  python experiments/jpeg_folder.py decode --dir=/tmp/sslx_jpegs
  python experiments/jpeg_folder.py resume --dir=/tmp/sslx_jpegs
  python experiments/benchmark.py --config=configs/byol.py:imagenet \
      --config.data.dataset=folder:/tmp/sslx_jpegs --config.batch_size=64 --what=input --cores=1

`make` writes a folder of JPEGs (quality 90, sides 300-500 px, in 10 class
folders) made of smooth random colour fields with fine grain, which compress
about as much as ImageNet's photographs (about 110 kB each); nothing of it is kept in the repo. `decode` measures, per image,
on one core: a full `tf.io.decode_jpeg` (what the pipeline does now) and the
fused `tf.image.decode_and_crop_jpeg` of BYOL's two random-resized-crop
windows (areas 0.08-1), which decodes only the rows and blocks a window
covers. `resume` times the first batch of `make_pretrain_iterator` at step 0
and at 90% of the first epoch, then the first example at 90% of an epoch of ImageNet's 1,281,167 file paths,
read by index (folders, npz) and by skipping a buffer-shuffled stream (TFDS).
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
import numpy as np

_DIR = flags.DEFINE_string("dir", "/tmp/sslx_jpegs", "The folder.")
_IMAGES = flags.DEFINE_integer("images", 3000, "make: how many JPEGs.")
_BATCH = flags.DEFINE_integer("batch", 64, "resume: global batch size.")
_SAMPLE = flags.DEFINE_integer("sample", 300, "decode: images timed.")


def make(directory: str, count: int) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for i in range(count):
    h, w = rng.integers(300, 501, 2)
    # A coarse random field, bilinearly upsampled: smooth like a photograph.
    coarse = rng.integers(0, 256, (h // 16 + 2, w // 16 + 2, 3), np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((int(w), int(h)), Image.BILINEAR))
    # Plus fine grain, so that the files are about ImageNet's size (~110 kB).
    grain = rng.normal(0, 20, smooth.shape)
    image = Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8))
    path = os.path.join(directory, "train", f"c{i % 10}", f"{i:06d}.jpg")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, quality=90)
  sizes = [os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(directory) for f in fs]
  print(f"{len(sizes)} JPEGs in {directory}, mean {np.mean(sizes) / 1e3:.0f} kB")


def decode(directory: str, sample: int) -> None:
  """Core-microseconds per image: full decode vs fused decode-and-crop of two views."""
  os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.threading.set_inter_op_parallelism_threads(1)
  tf.config.threading.set_intra_op_parallelism_threads(1)
  paths = sorted(os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs)[:sample]
  blobs = [tf.constant(open(p, "rb").read()) for p in paths]
  rng = np.random.default_rng(0)

  def window(h, w):  # torchvision's RandomResizedCrop window, first attempt that fits
    for _ in range(10):
      area = h * w * rng.uniform(0.08, 1.0)
      aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
      cw, ch = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
      if 0 < cw <= w and 0 < ch <= h:
        return [int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw]
    return [0, 0, h, w]

  shapes = [tf.image.extract_jpeg_shape(b).numpy() for b in blobs]
  windows = [[window(int(s[0]), int(s[1])) for _ in range(2)] for s in shapes]
  full = tf.function(lambda b: tf.io.decode_jpeg(b, channels=3))
  fused = tf.function(lambda b, win: tf.image.decode_and_crop_jpeg(b, win, channels=3))
  results = {}
  for name, run in (
      ("full decode", lambda i: full(blobs[i])),
      ("decode_and_crop_jpeg x 2 views", lambda i: [fused(blobs[i], tf.constant(w))
                                                    for w in windows[i]])):
    for i in range(min(20, len(blobs))):  # warm-up (tracing)
      run(i)
    start = time.process_time()
    for i in range(len(blobs)):
      run(i)
    results[name] = (time.process_time() - start) / len(blobs) * 1e6
    print(f"{name}: {results[name]:.0f} core-us per image ({len(blobs)} images, 1 core)")
  mean_area = np.mean([w[2] * w[3] / (s[0] * s[1]) for ws, s in zip(windows, shapes) for w in ws])
  print(f"mean window area {mean_area:.2f} of the image; fused / full = "
        f"{results['decode_and_crop_jpeg x 2 views'] / results['full decode']:.2f}")


def resume(directory: str, batch: int) -> None:
  """Seconds to the first batch at step 0 and at 90% of the first epoch."""
  from configs import byol  # pylint: disable=g-import-not-at-top
  from sslx import data  # pylint: disable=g-import-not-at-top
  config = byol.get_config("imagenet")
  config.data.update(dataset=f"folder:{directory}")
  n = data.get_dataset_info(config.data).num_train_examples
  for step in (0, int(0.9 * n) // batch):
    start = time.perf_counter()
    it = data.make_pretrain_iterator(config.data, config.views, global_batch_size=batch,
                                     seed=0, start_step=step, process_index=0, process_count=1)
    next(it)
    print(f"start_step={step} ({step * batch / n:.0%} of an epoch of {n}): "
          f"first batch after {time.perf_counter() - start:.2f} s", flush=True)
    del it


def resume_at_imagenet_scale(directory: str, n: int = 1_281_167, buffer: int = 50_000) -> None:
  """Both stream builders on ImageNet's count of file paths (the folder's JPEGs, cycled).

  Times the first decoded example at 90% of the epoch: reading by index
  (what folders and npz files use) against a buffer shuffle that skips the
  first 90% of the records (what TFDS record files still use).
  """
  from sslx.data import datasets  # pylint: disable=g-import-not-at-top
  from sslx.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from sslx.data.host_tf import tf  # pylint: disable=g-import-not-at-top
  files = sorted(os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs)
  paths = np.asarray(files)[np.arange(n) % len(files)]
  table = {"image": paths, "label": np.zeros(n, np.int32)}
  src = datasets.SplitSource(tf.data.Dataset.from_tensor_slices(table), n, n, None,
                             (None, None, 3), table=table)
  key = tf.constant([0, 0], tf.int64)
  first = int(0.9 * n)
  decode = lambda ex: tf.io.decode_jpeg(tf.io.read_file(ex["image"]), channels=3)
  for name, build in (
      ("by index", lambda: input_pipeline._random_access_stream(  # pylint: disable=protected-access
          src, first, global_batch=64, process_index=0, process_count=1, shuffle_key=key)),
      (f"shuffle({buffer}).skip", lambda: tf.data.Dataset.zip(
          tf.data.Dataset.range(n), src.dataset.shuffle(buffer, seed=0)).skip(first))):
    start = time.perf_counter()
    _, example = next(iter(build().map(lambda i, ex: (i, decode(ex)))))
    print(f"{name}: first decoded example at 90% of a {n:,}-image epoch after "
          f"{time.perf_counter() - start:.2f} s ({example.shape})", flush=True)


def main(argv):
  if len(argv) != 2 or argv[1] not in ("make", "decode", "resume"):
    raise app.UsageError("one of: make, decode, resume")
  if argv[1] == "make":
    make(_DIR.value, _IMAGES.value)
  elif argv[1] == "decode":
    decode(_DIR.value, _SAMPLE.value)
  else:
    resume(_DIR.value, _BATCH.value)
    resume_at_imagenet_scale(_DIR.value)


if __name__ == "__main__":
  app.run(main)
