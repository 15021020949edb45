r"""Host or device: where should the photometric augmentations run?

  python experiments/augment_placement.py --out=/tmp/augment_placement.jsonl
  python experiments/augment_placement.py --config=configs/byol.py:cifar10 \
      --config.data.dataset=npz:../shared/data/cifar10_5k.npz --seconds=20
  python experiments/augment_placement.py --selftest   # correctness, seconds

Without --config it measures the BYOL two-view presets `configs/byol.py`
(mnist5k, 28 px) and `configs/byol.py:cifar10` on ../shared/data/
cifar10_5k.npz (32 px; skipped with a message if the file is absent).

Both placements run the same crop + flip (`make_pretrain_iterator`,
unchanged) and the same photometric work (sslx/data/augment.py's ops, slots of
the random draws and op structure), and deliver normalised float32 views:

  host    tf.data: crop + flip, then the TF photometric ops below and
          normalisation, float32 [B, V, S, S, 3]; pulled to numpy and
          `device_put`.
  device  tf.data: crop + flip, uint8 [B, V, S, S, 3]; then jitted
          `sslx.data.augment.augment_views` on the JAX CPU device,
          `block_until_ready`.

Each CPU budget in --threads runs in a fresh subprocess pinned to that many
cores (sched_setaffinity before TF and JAX start, so XLA's and TF's thread
pools are sized to it) with tf.data `private_threadpool_size` = that number.
Per budget it measures (images = source images, each giving V views):

  end_to_end / host     the host pipeline above
  end_to_end / device   tf.data crop + flip -> jitted augment_views
  host_part / device    tf.data crop + flip alone: the host's share of
                        the work when the photometric ops run on device
  device_part / device  jitted augment_views alone on a resident batch

To inject the photometric map between the crop map and the prefetch without
copying the crop code, `input_pipeline._finish` is wrapped while the iterator
is built (a benchmark hack; nothing in sslx changes).
"""

import contextlib
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import tensorflow as tf

from sslx.data import augment
from sslx.data import datasets
from sslx.data import input_pipeline
from sslx.data import views as views_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file; default: byol.py and byol.py:cifar10.",
    lock_config=True)
_OUT = flags.DEFINE_string("out", None, "Append JSON lines here.")
_SECONDS = flags.DEFINE_float(
    "seconds", 15.0, "Timed seconds per end_to_end measurement (parts: 40%).")
_THREADS = flags.DEFINE_list("threads", ["1", "2"], "CPU budgets (cores).")
_SELFTEST = flags.DEFINE_bool("selftest", False, "Correctness checks only.")
_WORKER = flags.DEFINE_integer("worker_threads", None, "Internal: one budget.")

_CIFAR_NPZ = os.path.normpath(
    os.path.join(_REPO, "..", "shared", "data", "cifar10_5k.npz"))
_ALG = "philox"

# ---------------------------------------------------- TF photometric ops ----
# Slots of the per-image uniforms, as in sslx/data/augment.py: jitter coin,
# 4 jitter factors, 4 order keys, gray coin, blur coin, blur sigma, solarize.
_NUM_U = 13
B, C, S, H = augment.BRIGHTNESS, augment.CONTRAST, augment.SATURATION, augment.HUE


def _per_image(v):
  """[N] -> [N, 1, 1, 1], to broadcast a per-image value over pixels."""
  return tf.reshape(v, [-1, 1, 1, 1])


def _select(cond, y, x):
  """Image i of y where cond[i], else of x. TF1's Select takes a [N]
  condition and copies whole images: ~10x faster on CPU than tf.where's
  broadcasting SelectV2 with a [N, 1, 1, 1] one."""
  return tf.raw_ops.Select(condition=cond, x=y, y=x)


def _maybe(coin, prob, fn, x):
  """fn(x) where coin < prob, x bit for bit elsewhere; prob is static."""
  if prob <= 0:
    return x
  y = fn(x)
  return y if prob >= 1 else _select(coin < prob, y, x)


def tf_hue(x, delta):
  """Per-image hue shift (delta [N], a fraction of the circle), then clip.

  `tf.image.adjust_hue` takes one scalar delta, hence the `map_fn`; a batched
  rgb_to_hsv / hsv_to_rgb round trip and `vectorized_map` measured the same
  within 10% (about 70 us per 32 px image on one core of this CPU).
  """
  return tf.clip_by_value(tf.map_fn(
      lambda a: tf.image.adjust_hue(a[0], a[1]), (x, delta),
      fn_output_signature=tf.float32), 0.0, 1.0)


def tf_jitter(x, u, p):
  """Brightness, contrast, saturation, hue in a random order per image.

  As sslx/data/augment.py: the three blends (with 0, the mean luma, the luma) run
  in 3 slots before and 3 after a single hue step, each slot masked to
  identity on the other side of the image's hue position.
  """
  lo = tf.constant([max(0., 1 - p.brightness), max(0., 1 - p.contrast),
                    max(0., 1 - p.saturation), -p.hue])
  hi = tf.constant([1 + p.brightness, 1 + p.contrast, 1 + p.saturation, p.hue])
  f = lo + (hi - lo) * u[:, 1:5]  # [N, 4]
  order = tf.argsort(u[:, 5:9], axis=1, stable=True)  # uniform permutation
  hue_pos = tf.argmax(tf.cast(order == H, tf.int32), 1, output_type=tf.int32)

  def blend_slot(x, j, before):
    op = tf.where(j < hue_pos, order[:, j], order[:, j + 1])
    # Factor 1 where the slot is on the other side of the hue step: then
    # 1 * x + 0 * other is x exactly, and no select is needed.
    fac = _per_image(tf.where((j < hue_pos) == before,
                              tf.gather(f, op, batch_dims=1), 1.0))
    # Blend with 0 (brightness), mean luma (contrast) or luma (saturation),
    # with the per-image scalars combined before touching pixels.
    luma = tf.image.rgb_to_grayscale(x)
    is_op = lambda o: _per_image(tf.cast(op == o, tf.float32))
    mean = tf.reduce_mean(luma, [1, 2, 3], keepdims=True)
    y = fac * x + ((1 - fac) * is_op(S)) * luma + (1 - fac) * is_op(C) * mean
    return tf.clip_by_value(y, 0.0, 1.0)

  for j in range(3):
    x = blend_slot(x, j, True)
  if p.hue > 0:
    x = tf_hue(x, f[:, H])
  for j in range(3):
    x = blend_slot(x, j, False)
  return x


def tf_blur(x, sigma, k):
  """Separable Gaussian blur, per-image sigma [N], side k, reflect padding."""
  r = k // 2
  t = tf.range(-r, r + 1, dtype=tf.float32)
  w = tf.exp(-t[None] ** 2 / (2 * sigma[:, None] ** 2))
  w /= tf.reduce_sum(w, 1, keepdims=True)  # [N, k]
  for axis in (1, 2):
    n = x.shape[axis]
    pad = [[0, 0]] * 4
    pad[axis] = [r, r]
    xp = tf.pad(x, pad, mode="REFLECT")
    x = tf.add_n([_per_image(w[:, i]) * (xp[:, i:i + n] if axis == 1 else
                                         xp[:, :, i:i + n])
                  for i in range(k)])
  return x


def tf_photometric(x, u, p):
  """float [N, S, S, 3] in [0, 1], uniforms [N, 13], ViewParams -> same."""
  size = min(augment.blur_kernel_size(x.shape[1], p.blur_kernel_fraction),
             2 * min(x.shape[1], x.shape[2]) - 1)
  sigma = p.blur_sigma_min + (p.blur_sigma_max - p.blur_sigma_min) * u[:, 11]
  gray = lambda x: tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 1, 3])
  x = _maybe(u[:, 0], p.color_jitter_prob, lambda x: tf_jitter(x, u, p), x)
  x = _maybe(u[:, 9], p.grayscale_prob, gray, x)
  x = _maybe(u[:, 10], p.blur_prob, lambda x: tf_blur(x, sigma, size), x)
  return _maybe(u[:, 12], p.solarize_prob,
                lambda x: tf.where(x < p.solarize_threshold, x, 1 - x), x)


def host_map(config, info):
  """(step, {'images': uint8 [B, V, S, S, 3]}) -> normalised float32 views.

  Stateless: view i of batch `step` draws from fold_in(fold_in(key, step), i).
  """
  names = views_lib.group_names(config.views)
  params = [augment.ViewParams.from_config(config.views[n], n) for n in names]
  key = tf.constant([config.seed, 7], tf.int64)
  mean, std = tf.constant(info.mean), tf.constant(info.std)
  fold = lambda k, d: tf.random.experimental.stateless_fold_in(
      k, tf.cast(d, tf.int64), alg=_ALG)

  def fn(step, ex):
    # One crop per view group: stack them as views [B, V, S, S, 3].
    images = tf.cast(tf.concat([ex["views"][n] for n in names], 1), tf.float32) / 255.0
    n = tf.shape(images)[0]
    views = []
    for i, p in enumerate(params):
      u = tf.random.stateless_uniform([n, _NUM_U], fold(fold(key, step), i),
                                      alg=_ALG)
      views.append((tf_photometric(images[:, i], u, p) - mean) / std)
    return {"images": tf.stack(views, 1), "label": ex["label"]}

  return fn


# ------------------------------------------------------------- pipelines ----


@contextlib.contextmanager
def _wrapped_finish(threads, extra_map=None):
  """Adds `extra_map` (host placement) and the thread budget to tf.data."""
  orig = input_pipeline._finish  # pylint: disable=protected-access

  def finish(ds, data_config):
    if extra_map is not None:
      ds = tf.data.Dataset.zip(tf.data.Dataset.counter(), ds).map(
          extra_map, num_parallel_calls=input_pipeline._parallel(data_config),  # pylint: disable=protected-access
          deterministic=True)
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    return orig(ds, data_config).with_options(options)

  input_pipeline._finish = finish  # pylint: disable=protected-access
  try:
    yield
  finally:
    input_pipeline._finish = orig  # pylint: disable=protected-access


def make_iterator(config, threads, extra_map=None, raw=False):
  """Batches with 'images' [B, V, S, S, 3]: the one-crop view groups, stacked in name order
  (raw: the pipeline's own {'views': {group: [B, 1, S, S, 3]}, ...})."""
  with _wrapped_finish(threads, extra_map):
    it = input_pipeline.make_pretrain_iterator(
        config.data, config.views, global_batch_size=config.batch_size,
        seed=config.seed)
  if extra_map is not None or raw:
    return it
  names = views_lib.group_names(config.views)
  return ({"images": np.concatenate([b["views"][n] for n in names], 1), "label": b["label"]}
          for b in it)


def device_fn(config, info):
  views = config.views

  @jax.jit
  def fn(key, step, crops):
    return augment.augment_views(jax.random.fold_in(key, step), crops, views,
                                 info.mean, info.std)
  return fn


def _cpu_seconds():
  """(busy CPU seconds of the whole machine, of this process)."""
  with open("/proc/stat") as f:
    ticks = [int(v) for v in f.readline().split()[1:]]
  busy = (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
  own = os.times()
  return busy, own.user + own.system


def time_it(step_fn, seconds, min_warmup_batches=10, warmup_seconds=2.0):
  """Steady-state calls/s of step_fn after warm-up, 4 chunk rates, calls,
  seconds, and the cores other processes kept busy meanwhile (should be ~0:
  other load invalidates the figure)."""
  start, n = time.perf_counter(), 0
  while n < min_warmup_batches or time.perf_counter() - start < warmup_seconds:
    step_fn()
    n += 1
  cpu0 = _cpu_seconds()
  t0 = time.perf_counter()
  stamps = []
  while not stamps or stamps[-1] - t0 < seconds:
    step_fn()
    stamps.append(time.perf_counter())
  total = stamps[-1] - t0
  cpu1 = _cpu_seconds()
  others = ((cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1])) / total
  edges = np.searchsorted(np.array(stamps) - t0, np.linspace(0, total, 5)[1:],
                          side="right")
  counts = np.diff(np.concatenate([[0], edges]))
  return (len(stamps) / total, list(counts / (total / 4)), len(stamps), total,
          max(0.0, others))


# ---------------------------------------------------------------- worker ----


def run_worker(config, threads):
  """All measurements of one config under one CPU budget; JSON lines out."""
  info = datasets.get_dataset_info(config.data)
  bsz, size = config.batch_size, int(config.data.image_size)
  d = jax.devices()[0]
  cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
              if l.startswith("model name")), "?")
  device = (f"{d.platform} ({d.device_kind}); {len(os.sched_getaffinity(0))}"
            f" of {os.cpu_count()} cores, {cpu}")
  key = jax.random.PRNGKey(config.seed)
  aug = device_fn(config, info)
  part = 0.4 * _SECONDS.value

  def emit(what, placement, per_s, chunks, n, secs, others, nbytes=None):
    ips = per_s * bsz
    row = dict(what=what, placement=placement, threads=threads,
               images_per_sec=round(ips, 1), batch_size=bsz, image_size=size,
               dataset=config.data.dataset, device=device,
               views=len(config.views), core_us_per_image=round(
                   threads * 1e6 / ips, 1),
               bytes_per_batch=nbytes, batches=n, seconds=round(secs, 2),
               chunk_images_per_sec=[round(c * bsz) for c in chunks],
               other_cores_busy=round(others, 2))
    print(json.dumps(row), flush=True)

  # (a) host: crop + flip + photometric + normalise in tf.data.
  it = make_iterator(config, threads, host_map(config, info))
  nbytes = {}

  def host_step():
    b = next(it)
    nbytes["host"] = b["images"].nbytes + b["label"].nbytes
    jax.block_until_ready(jax.device_put(b))
  emit("end_to_end", "host", *time_it(host_step, _SECONDS.value),
       nbytes=nbytes["host"])
  del it

  # (b) device: tf.data crop + flip, uint8; jitted augment_views.
  it = make_iterator(config, threads, raw=True)
  step = [0]

  def crop_step():
    b = next(it)
    nbytes["device"] = sum(v.nbytes for v in b["views"].values()) + b["label"].nbytes
  emit("host_part", "device", *time_it(crop_step, part),
       nbytes=nbytes["device"])

  images = jax.device_put(next(it)["views"])

  def aug_step():
    step[0] += 1
    jax.block_until_ready(aug(key, step[0], images))
  emit("device_part", "device", *time_it(aug_step, part))

  def device_step():
    b = jax.device_put(next(it))
    step[0] += 1
    jax.block_until_ready(aug(key, step[0], b["views"]))
  emit("end_to_end", "device", *time_it(device_step, _SECONDS.value),
       nbytes=nbytes["device"])


# -------------------------------------------------------------- selftest ----


def selftest(config):
  """Quick checks on 8 images: prob-0 identity, ranges, ops act, TF == JAX."""
  info = datasets.get_dataset_info(config.data)
  config.unlock()
  config.batch_size = 8
  batch = next(make_iterator(config, 2))["images"]  # uint8 [8, V, S, S, 3]
  x = batch[:, 0].astype(np.float32) / 255.0
  off = dict(color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0,
             solarize_prob=0.0)
  base = config.views[sorted(config.views.keys())[0]].to_dict()

  def compare(name, base=base, seed=3, **over):
    # augment.photometric(rng, ...) draws u = uniform(rng, (N, 13)): feed
    # the same u to the TF ops.
    rng = jax.random.PRNGKey(seed)
    u = jax.random.uniform(rng, (8, _NUM_U), jnp.float32)
    p = augment.ViewParams.from_config({**base, **over})
    got = tf_photometric(tf.constant(x), tf.constant(np.asarray(u)), p).numpy()
    want = np.asarray(augment.photometric(rng, x, p))
    err = float(np.abs(got - want).max())
    changed = float(np.abs(got - x).mean())
    print(f"  {name:<22} range [{got.min():.3f}, {got.max():.3f}]  "
          f"mean|out-in| {changed:.4f}  max|TF-JAX| {err:.2e}")
    assert 0 <= got.min() and got.max() <= 1, name
    assert err < 1e-4, (name, err)
    return changed

  grey = np.array_equal(x, np.repeat(x[..., :1], 3, -1))  # colour ops: no-op
  print(f"selftest on {config.data.dataset}, images {batch.shape}"
        f"{' (grey)' if grey else ''}:")
  assert compare("all prob 0", **off) == 0.0
  for name, over in [("brightness", dict(contrast=0, saturation=0, hue=0)),
                     ("contrast", dict(brightness=0, saturation=0, hue=0)),
                     ("saturation", dict(brightness=0, contrast=0, hue=0)),
                     ("hue", dict(brightness=0, contrast=0, saturation=0))]:
    changed = compare(name, **{**off, "color_jitter_prob": 1.0, **over})
    assert changed > 1e-3 or (grey and name in ("saturation", "hue")), name
  for name, over in [("grayscale", dict(grayscale_prob=1.0)),
                     ("blur", dict(blur_prob=1.0)),
                     ("solarize", dict(solarize_prob=1.0))]:
    changed = compare(name, **{**off, **over})
    assert changed > 1e-3 or (grey and name == "grayscale"), name
  compare("view defaults p=0.5", color_jitter_prob=0.5, grayscale_prob=0.5,
          blur_prob=0.5, solarize_prob=0.5)
  for i, n in enumerate(sorted(config.views.keys())):
    compare(f"config view {n}", base=config.views[n].to_dict(), seed=10 + i)
  # Host pipeline: shape, dtype, normalised range; deterministic.
  outs = [next(make_iterator(config, 2, host_map(config, info)))["images"]
          for _ in range(2)]
  lo = (0 - np.array(info.mean)) / np.array(info.std)
  hi = (1 - np.array(info.mean)) / np.array(info.std)
  y = outs[0]
  assert y.dtype == np.float32 and y.shape == batch.shape, y.shape
  assert np.all(y >= lo - 1e-5) and np.all(y <= hi + 1e-5)
  assert np.array_equal(outs[0], outs[1])
  print(f"  host pipeline          {y.shape} {y.dtype} in [{y.min():.2f}, "
        f"{y.max():.2f}], deterministic: ok")
  print("selftest passed")


# ---------------------------------------------------------------- parent ----


def _jobs():
  """Extra worker argv per config to measure."""
  if _CONFIG.value is not None:
    return [[]]
  cfg = os.path.join(_REPO, "configs", "byol.py")
  batch = "--config.batch_size=256"  # the presets' value, pinned
  jobs = [[f"--config={cfg}", batch]]
  if os.path.exists(_CIFAR_NPZ):
    jobs.append([f"--config={cfg}:cifar10", batch,
                 f"--config.data.dataset=npz:{_CIFAR_NPZ}"])
  else:
    print(f"skipping byol.py:cifar10: {_CIFAR_NPZ} not found", flush=True)
  return jobs


def _table(rows):
  out = ["| dataset | px | placement | what | cores | images/s | "
         "core-us/image | H->D bytes/batch | other load (cores) |",
         "|---" * 9 + "|"]
  for r in rows:
    nb = f"{r['bytes_per_batch']:,}" if r["bytes_per_batch"] else "-"
    out.append(f"| {r['dataset'].split('/')[-1]} | {r['image_size']} | "
               f"{r['placement']} | {r['what']} | {r['threads']} | "
               f"{r['images_per_sec']:,.0f} | {r['core_us_per_image']:,.0f} |"
               f" {nb} | {r['other_cores_busy']:.2f} |")
  return "\n".join(out)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  if _SELFTEST.value:
    jobs = ([(None, _CONFIG.value)] if _CONFIG.value is not None else [])
    if not jobs:
      from configs import byol  # pylint: disable=g-import-not-at-top
      for preset, ds in [("mnist5k", None), ("cifar10", f"npz:{_CIFAR_NPZ}")]:
        if ds and not os.path.exists(_CIFAR_NPZ):
          print(f"skipping cifar10: {_CIFAR_NPZ} not found")
          continue
        c = byol.get_config(preset)
        c.data.dataset = ds or c.data.dataset
        jobs.append((preset, c))
    for _, c in jobs:
      selftest(c)
    return
  if _WORKER.value is not None:
    run_worker(_CONFIG.value, _WORKER.value)
    sys.stdout.flush()
    os._exit(0)  # skip TF/JAX teardown (seconds)
  rows = []
  out = open(_OUT.value, "a") if _OUT.value else None
  for extra in _jobs():
    for threads in map(int, _THREADS.value):
      cpus = set(sorted(os.sched_getaffinity(0))[:threads])
      t0 = time.perf_counter()
      cmd = ([sys.executable, os.path.abspath(__file__)] + sys.argv[1:] +
             extra + [f"--worker_threads={threads}"])
      with subprocess.Popen(
          cmd, stdout=subprocess.PIPE, text=True,
          preexec_fn=lambda c=cpus: os.sched_setaffinity(0, c)) as proc:
        for line in proc.stdout:
          if line.startswith("{"):
            print(line, end="", flush=True)
            rows.append(json.loads(line))
            if out:
              out.write(line)
              out.flush()
      if proc.returncode:
        sys.exit(f"worker failed: {' '.join(cmd)}")
      print(f"worker {extra or ''} threads={threads}: "
            f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
  print()
  print(_table(rows))


if __name__ == "__main__":
  app.run(main)
