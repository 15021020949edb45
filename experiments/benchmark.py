r"""Throughput of the train step, the input pipeline, and both together.

  python experiments/benchmark.py --config=configs/byol.py
  python experiments/benchmark.py --config=configs/byol.py:cifar10 --config.batch_size=256
  python experiments/benchmark.py --config=configs/byol.py:imagenet --config.batch_size=256 \
      --config.dtype=bfloat16 --what=step            # synthetic batches, no ImageNet needed
  python experiments/benchmark.py --config=configs/byol.py:cifar10 --what=input --cores=1
  python experiments/benchmark.py --config=configs/byol.py:cifar10 --config.batch_size=256 \
      --what=step,torch --config.cpu_conv_backend=ynnpack     # against PyTorch eager

It takes the same `--config` and `--config.x=y` overrides as main.py and
measures, after warm-up, for --seconds each:

  step        the jitted train step (augmentation on device, loss, update)
              on one synthetic uint8 batch kept on device: images/s, compile
              time, model FLOPs per image from XLA's cost analysis, MFU where
              the device's peak is known, peak device memory (host RSS on CPU).
  input       the tf.data pipeline alone (decode, crop, flip, batch) on this
              host's cores: two-view batches/s as images/s.
  end_to_end  pipeline -> device -> step, as main.py runs it; the slower of
              `step` and `input` is named the bottleneck.
  torch       a plain PyTorch eager BYOL step, the same network and batch
              (experiments/torch_byol_step.py, NCHW, as many threads as
              cores), in this process after sslx's step, so both see the same
              machine; the `step` row then gets `vs_torch`, its rate over
              PyTorch's. Only for BYOL's ResNet-18 CIFAR network at 32 px
              (`configs/byol.py:cifar10`); needs `pip install -e ".[torch]"`.

Images are source images (each gives the method's views). One JSON line per
measurement goes to stdout (and --out), then a Markdown table. `--cores=N`
pins the process to N cores before TensorFlow and XLA start, so their thread
pools are sized to N (1 vs 2 cores: the pipeline's scaling). `--profile=DIR`
traces one step after the `step` measurement and prints a `profile` line: the
share of the step's operation time taken by each kind of XLA operation
(convolution fusions, transposes, all-reduces, elementwise fusions, ...).
"""

import os
import sys

# Pin before TensorFlow / XLA create their thread pools (they size them then).
for _arg in sys.argv:
  if _arg.startswith("--cores="):
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:int(_arg.split("=")[1])]))
  if _arg.startswith("--profile=") and "xla_cpu_enable_xprof_traceme" not in os.environ.get(
      "XLA_FLAGS", ""):  # XLA:CPU names each operation in the trace only with this flag
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_enable_xprof_traceme=true"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import collections  # pylint: disable=g-import-not-at-top,wrong-import-position
import glob
import gzip
import json
import re
import resource
import time

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
from ml_collections import config_flags

from sslx.config import defaults as config_defaults
from sslx import data
from sslx import errors
from sslx.core import mesh as mesh_lib
from sslx.jobs import pretrain

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, as for main.py.",
                                          lock_config=True)
_WHAT = flags.DEFINE_list("what", ["step", "input", "end_to_end"], "Measurements to make.")
_SECONDS = flags.DEFINE_float("seconds", 15.0, "Measuring time per measurement (after warm-up).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps/batches before measuring.")
_CORES = flags.DEFINE_integer("cores", None, "Pin to this many cores (parsed before imports).")
_OUT = flags.DEFINE_string("out", None, "Append the JSON lines to this file.")
_PROFILE = flags.DEFINE_string(
    "profile", None, "With --what=step: trace one more step into this directory (TensorBoard / "
    "Perfetto) and print where its time goes, by XLA operation kind.")
flags.mark_flags_as_required(["config"])

# Dense peak FLOP/s per JAX device, by device_kind substring and compute dtype.
# NVIDIA H100/H200 SXM datasheet: 989 TFLOP/s bf16, 495 TF32 (float32 matmuls
# run as TF32 by default in XLA on GPU). TPU: per chip as JAX sees it (v3:
# 2 devices per chip, 123 TFLOP/s bf16 per chip; v4: 275; v5e: 197).
PEAK_FLOPS = {
    ("H100", "bfloat16"): 989e12, ("H100", "float32"): 495e12,
    ("H200", "bfloat16"): 989e12, ("H200", "float32"): 495e12,
    ("TPU v3", "bfloat16"): 61.5e12, ("TPU v4", "bfloat16"): 275e12,
    ("TPU v5 lite", "bfloat16"): 197e12, ("TPU v5e", "bfloat16"): 197e12,
}


def peak_flops(device, dtype: str) -> float | None:
  for (kind, peak_dtype), value in PEAK_FLOPS.items():
    if kind in device.device_kind and peak_dtype == dtype:
      return value
  return None


def dataset_info(config) -> data.DatasetInfo:
  """The config's dataset, or a stand-in of its size when it is not on disk (step only)."""
  try:
    return data.get_dataset_info(config.data)
  except (errors.DatasetNotAvailableError, ImportError) as e:
    # ImportError: no TensorFlow (an accelerator image with JAX only), which
    # the step measurement does not need; `input` and `end_to_end` do.
    logging.warning("%s; using a synthetic stand-in for the step measurement.", e)
    name = config.data.dataset
    return data.DatasetInfo(
        name=name, num_classes=1000 if "imagenet" in name else 10,
        num_train_examples=config_defaults.NUM_TRAIN_EXAMPLES.get(name, 50_000),
        pretrain_split="train", train_split="train", test_split=None,
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _timed(fn, seconds: float, warmup: int) -> tuple[int, float]:
  """Calls fn() (which blocks on its result) warmup times, then for `seconds`; (calls, time)."""
  for _ in range(warmup):
    fn()
  calls, start = 0, time.perf_counter()
  while True:
    fn()
    calls += 1
    elapsed = time.perf_counter() - start
    if elapsed >= seconds:
      return calls, elapsed


def _flops(lowered, compiled) -> float | None:
  """Model FLOPs of one step of the whole (global-batch) program, or None.

  From the lowered program, before the backend rewrites it, where JAX gives
  that analysis (jax 0.10 does on CPU; jax 0.11.2 on an H200 gave none).
  Otherwise from the compiled program, except on GPU: XLA:GPU's compiled cost
  analysis leaves out convolutions and matmuls that run as library calls
  (cuDNN, cuBLAS), and counted a ResNet-50 BYOL image at 1.2 GFLOPs instead of
  64. FLOPs do not depend on the device: the same command on CPU gives them.
  """
  def count(analysis):
    if isinstance(analysis, (list, tuple)):
      analysis = analysis[0] if analysis else None
    return float(analysis["flops"]) if analysis and analysis.get("flops") else None

  flops = count(lowered.cost_analysis())
  if flops is None and jax.devices()[0].platform != "gpu":
    flops = count(compiled.cost_analysis())  # per device under SPMD
    flops = flops * jax.device_count() if flops else None
  return flops


def _peak_memory() -> tuple[str, int]:
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return "device_peak_bytes", int(stats["peak_bytes_in_use"])
  return "host_peak_rss_bytes", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# Host-side wrappers in the trace, not operations of the step.
_NOT_OPERATIONS = re.compile(r"^\$|\s|^(PjitFunction|Rendezvous|ThunkExecutor)")


def _kind(name: str) -> str:
  """`transpose_copy_fusion.3` -> `transpose_copy_fusion`; cuDNN's kernels by pass."""
  library_pass = re.search(r"(fprop|dgrad|wgrad)", name)
  if library_pass and ("xmma" in name or "cudnn" in name):
    return f"cuDNN conv {library_pass.group(1)}"
  return re.sub(r"([._]\d+)+$", "", name)


def _operation_events(events: list) -> list:
  """The trace's executed operations: device kernels where there is a device line.

  On GPU the trace's device process has one line per CUDA stream (the
  kernels, which do not nest) beside lines of XLA ops and modules that span
  them; on TPU its `XLA Ops` line holds the operations. On CPU everything runs
  in the host process, whose wrappers (`$`-prefixed Python, names with spaces,
  PjRt execution spans) are not operations.
  """
  processes = {e["pid"]: e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "process_name"}
  threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  devices = {pid for pid, name in processes.items() if name.startswith("/device:")}
  complete = [e for e in events if e.get("ph") == "X"]
  if devices:
    lines = {key for key, name in threads.items() if key[0] in devices}
    streams = {key for key in lines if threads[key].startswith("Stream")}
    chosen = streams or {key for key in lines if threads[key] == "XLA Ops"}
    return [e for e in complete if (e["pid"], e.get("tid")) in chosen]
  return [e for e in complete if not _NOT_OPERATIONS.search(e.get("name", ""))]


def profile_step(run_step, directory: str, top: int = 12) -> dict:
  """Traces one call of run_step() and sums the trace's operation time by kind.

  XLA names each executed operation `<kind>.<id>` (`ynn_fusion.12`,
  `transpose_copy_fusion.3`, `all-reduce.7`; GPU kernels are named likewise
  or after their library call). Summing over ids gives where the step's time
  goes. With several devices, streams or threads operations overlap, so the
  total is device-time, not wall time; `step_ms` is the traced call's wall time.
  """
  before = set(glob.glob(os.path.join(directory, "**", "*.trace.json.gz"), recursive=True))
  with jax.profiler.trace(directory, create_perfetto_trace=True):
    start = time.perf_counter()
    run_step()
    step_ms = (time.perf_counter() - start) * 1e3
  traces = set(glob.glob(os.path.join(directory, "**", "*.trace.json.gz"), recursive=True))
  new = sorted(traces - before)
  if not new:
    return {"error": f"no Perfetto trace written under {directory}"}
  with gzip.open(new[-1]) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  by_kind, counts = collections.Counter(), collections.Counter()
  for event in _operation_events(events):
    kind = _kind(event["name"])
    by_kind[kind] += event.get("dur", 0)
    counts[kind] += 1
  total = sum(by_kind.values())
  return {"trace": new[-1], "step_ms": round(step_ms, 1), "op_time_ms": round(total / 1e3, 1),
          "top": [{"kind": kind, "share": round(t / total, 3), "ms": round(t / 1e3, 1),
                   "count": counts[kind]} for kind, t in by_kind.most_common(top)]}


def _check_torch_comparable(config) -> None:
  shape = (config.method, config.model.name, config.model.stem, config.data.image_size)
  if shape != ("byol", "resnet18", "cifar", 32):
    raise app.UsageError(
        f"--what=torch compares against BYOL's ResNet-18 with the CIFAR stem at 32 px "
        f"(configs/byol.py:cifar10); this config is {shape}.")


def _torch_step(batch_size: int):
  """experiments/torch_byol_step.py's step, on as many threads as this process has cores."""
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import torch_byol_step  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  return torch_byol_step.make_step(batch_size)


def main(argv):
  del argv
  config = _CONFIG.value
  mesh_lib.split_cpu_into_devices(config)  # the CPU device split main.py uses
  mesh_lib.choose_cpu_conv_backend(config)  # and its convolution library
  unknown = set(_WHAT.value) - {"step", "input", "end_to_end", "torch"}
  if unknown:
    raise app.UsageError(
        f"--what: unknown {sorted(unknown)}; valid: step, input, end_to_end, torch")
  if "torch" in _WHAT.value:
    _check_torch_comparable(config)
  mesh = mesh_lib.create_mesh(config.num_devices)
  devices = mesh.devices.size
  mesh_lib.check_batch_size(config.batch_size, devices)
  if not {"input", "end_to_end"} & set(_WHAT.value):
    # The step and the PyTorch step read no data: never wait on a download.
    with config.unlocked():
      config.data.download = False
  info = dataset_info(config)
  device = jax.devices()[0]
  base = dict(command=" ".join(sys.argv[1:]), method=config.method,
              model=f"{config.model.name} x{config.model.width} ({config.model.stem} stem)",
              image_size=config.data.image_size, batch_size=config.batch_size,
              dtype=config.dtype, device=f"{devices} x {device.device_kind}",
              cores=len(os.sched_getaffinity(0)))
  if device.platform == "cpu":  # what XLA_FLAGS made of config.cpu_conv_backend
    base["xla_flags"] = os.environ.get("XLA_FLAGS", "")
  rows, rates = [], {}

  trainer = state = batch = lowered = compiled = None
  if {"step", "end_to_end"} & set(_WHAT.value):
    trainer = pretrain.Trainer(config, info, mesh)
    state = trainer.init_state(config.seed)
    rng = np.random.default_rng(0)
    local = config.batch_size // jax.process_count()
    batch = mesh_lib.to_global({
        "views": {g.name: rng.integers(0, 256, (local, g.num_crops, g.crop_size, g.crop_size, 3),
                                       dtype=np.uint8) for g in trainer.view_groups},
        "label": rng.integers(0, 10, (local,), dtype=np.int32),
        "index": np.arange(local, dtype=np.int32)}, mesh)
    start = time.perf_counter()
    lowered = trainer.train_step.lower(state, batch)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start

  def write(record):  # one JSON line to stdout and --out
    print(json.dumps(record), flush=True)
    if _OUT.value:
      with open(_OUT.value, "a") as f:
        f.write(json.dumps(record) + "\n")

  def emit(what, calls, elapsed, **extra):
    images_per_sec = calls * config.batch_size / elapsed
    rates[what] = images_per_sec
    row = dict(what=what, images_per_sec=round(images_per_sec, 1), **base, **extra)
    rows.append(row)
    write(row)

  if "step" in _WHAT.value:
    holder = {"state": state}

    def step():
      holder["state"], metrics = compiled(holder["state"], batch)
      jax.block_until_ready(metrics["loss"])
    calls, elapsed = _timed(step, _SECONDS.value, _WARMUP.value)
    flops_step = _flops(lowered, compiled)  # the global batch's
    flops_image = flops_step / config.batch_size if flops_step else None
    step_s = elapsed / calls
    peak = peak_flops(device, config.dtype)
    mfu = flops_step / devices / step_s / peak if flops_step and peak else None
    memory_key, memory = _peak_memory()
    emit("step", calls, elapsed, compile_s=round(compile_s, 2), step_ms=round(step_s * 1e3, 2),
         gflops_per_image=round(flops_image / 1e9, 3) if flops_image else None,
         mfu=round(mfu, 4) if mfu else None, **{memory_key: memory})
    if _PROFILE.value:
      row = dict(what="profile", **base, **profile_step(step, _PROFILE.value))
      print(json.dumps(row), flush=True)
      for entry in row.get("top", []):
        print(f"  {entry['share']:6.1%} {entry['ms']:10.1f} ms  x{entry['count']:<5d} {entry['kind']}")
    state = holder["state"]

  if "input" in _WHAT.value:
    it = data.make_pretrain_iterator(config.data, config.views,
                                     global_batch_size=config.batch_size, seed=config.seed)
    calls, elapsed = _timed(lambda: next(it), _SECONDS.value, _WARMUP.value)
    emit("input", calls, elapsed)

  if "end_to_end" in _WHAT.value:
    it = data.make_pretrain_iterator(config.data, config.views,
                                     global_batch_size=config.batch_size, seed=config.seed)
    holder = {"state": state}

    def train():
      holder["state"], metrics = compiled(holder["state"], mesh_lib.to_global(next(it), mesh))
      jax.block_until_ready(metrics["loss"])
    calls, elapsed = _timed(train, _SECONDS.value, _WARMUP.value)
    extra = {}
    if "step" in rates and "input" in rates:
      extra["bottleneck"] = "input" if rates["input"] < rates["step"] else "step"
    emit("end_to_end", calls, elapsed, **extra)

  if "torch" in _WHAT.value:
    torch_step = _torch_step(config.batch_size)
    calls, elapsed = _timed(torch_step, _SECONDS.value, _WARMUP.value)
    import torch  # pylint: disable=g-import-not-at-top
    emit("torch", calls, elapsed, torch=torch.__version__, threads=torch.get_num_threads())
    if "step" in rates:
      step_row = next(r for r in rows if r["what"] == "step")
      step_row["vs_torch"] = round(rates["step"] / rates["torch"], 3)
      write(dict(what="vs_torch", ratio=step_row["vs_torch"], **base))

  columns = ["what", "images_per_sec", "batch_size", "model", "image_size", "dtype", "device",
             "cores", "compile_s", "gflops_per_image", "mfu", "bottleneck", "vs_torch"]
  print("\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
  for row in rows:
    print("| " + " | ".join("" if row.get(c) is None else str(row.get(c)) for c in columns) + " |")


if __name__ == "__main__":
  app.run(main)
