"""Test setup: 8 CPU devices (JAX_NUM_CPU_DEVICES), and fast compilation.

XLA reads these flags when the backend starts, so they are set before anything
imports jax. Tests that do not build a mesh run on device 0 as usual.

Test models are tiny, so XLA's compile time dominates a test's run time;
backend optimisation level 0 compiles about 5x faster (measured on
tests/test_byol.py: 80 s -> 15 s) at the cost of slower execution, which tiny
models do not notice. XLA:CPU's older loop-fusion code generator (fusion
emitters off) compiles faster again (measured with an empty compilation cache,
`python -m pytest -p no:xdist tests/test_main.py::test_main_trains_checkpoints_evaluates_and_resumes`:
227 s -> 192 s). Real runs (main.py, experiments/) keep the defaults;
the main.py processes that tests start get the same flags (subprocess_env).
"""

import os

# Compilation flags of every test process and of the processes tests start.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")  # jax reads it when it is imported
for _flag in FAST_COMPILE_FLAGS.split():
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Many tests (and the main.py processes they start, which inherit this
# environment) compile the same tiny train steps: XLA's persistent cache turns
# the repeats into a file read (measured: a 6-step in-process run 31 s -> 20 s).
# The cache is keyed by the program, the flags and the jax version.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

from sslx.core import mesh  # pylint: disable=g-import-not-at-top,wrong-import-position

# The convolution library main.py chooses (importing jax does not start a backend).
mesh.choose_cpu_conv_backend({})

jax.config.update("jax_threefry_partitionable", True)


# --------------------------------------------------------------------------
# Shared tiny configs and helpers (import them with `from conftest import ...`).
# --------------------------------------------------------------------------

import subprocess  # pylint: disable=g-import-not-at-top,wrong-import-position
import sys  # pylint: disable=g-import-not-at-top,wrong-import-position

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from sslx import data as _data  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env() -> dict[str, str]:
  """The environment of a `python main.py` (or script) process a test starts: this one's, on
  one CPU backend whose device count main.py sets itself, compiled as tests compile."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=FAST_COMPILE_FLAGS)
  env.pop("JAX_NUM_CPU_DEVICES", None)
  return env

# A dataset description for trainer tests that feed synthetic batches.
INFO = _data.DatasetInfo(name="synthetic", num_classes=10, num_train_examples=64,
                         pretrain_split="train", train_split="train", test_split="test",
                         mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))

# main.py flags that shrink the BYOL quick start to a few seconds.
TINY_FLAGS = ["--config.model.name=resnet10", "--config.model.width=0.125",
              "--config.byol.projector_hidden_dim=32", "--config.byol.projector_dim=16",
              "--config.byol.predictor_hidden_dim=32", "--config.batch_size=32",
              "--config.optimizer.warmup_epochs=0", "--config.eval.batch_size=256",
              "--config.log_every_steps=2", "--config.checkpoint_every_steps=2",
              # The few-label table's runs and pictures, shrunk: 2 draws, 3 scratch steps.
              "--config.eval.few_label_draws=2", "--config.eval.scratch.steps=3",
              "--config.eval.scale_with_run=False",  # the full evaluation's paths, in miniature
              "--config.plots.tsne_max_points=200"]


# Flags of the transfer jobs' tiny runs through main.py.
TINY_EVAL = ["--config.eval.batch_size=256", "--config.batch_size=64",
             "--config.log_every_steps=5", "--config.cpu_devices=2"]


def tiny_config(config_name: str = "byol", arg: str | None = None, **overrides):
  """A method's quick-start config shrunk for tests: ResNet-10 at width 1/8, 16 px, batch 16.

  `arg` is the config's argument (e.g. 'mnist5k,v3' for MoCo v3); keyword
  arguments override top-level fields.
  """
  import importlib  # pylint: disable=g-import-not-at-top
  module = importlib.import_module(f"configs.{config_name}")
  c = module.get_config(arg) if arg else module.get_config()
  c.model.update(name="resnet10", width=0.125)
  c.data.image_size = 16
  c.batch_size = 16
  c.train_steps = 4
  c.optimizer.warmup_epochs = 0.0
  if config_name == "byol":
    c.byol.update(projector_hidden_dim=32, projector_dim=16, predictor_hidden_dim=32)
    for v in c.views.values():  # exercise every photometric op
      v.blur_prob = 0.5
  elif config_name == "simclr":
    c.simclr.update(projector_hidden_dims=(32,), projector_dim=16, temperature=0.5)
  elif config_name == "moco":
    c.moco.update(dim=16, projector_hidden_dims=(32,), predictor_hidden_dims=(32,),
                  queue_size=32, temperature=0.2, momentum=0.9, bn_groups=1)
  c.update(overrides)
  return c


def synthetic_batch(config, seed=0):
  """A host batch as the pipeline yields it: {'views': {group: uint8 [B, n, S, S, 3]}, ...}."""
  rng = np.random.default_rng(seed)
  size = config.data.image_size
  views = {}
  for name, group in sorted(config.views.items()):
    side = group.get("crop_size") or size
    views[name] = rng.integers(0, 256, (config.batch_size, group.get("num_crops", 1), side, side,
                                        3), dtype=np.uint8)
  return {"views": views,
          "label": rng.integers(0, 10, (config.batch_size,), dtype=np.int32),
          "index": rng.permutation(config.batch_size).astype(np.int32)}


def method_batch(groups: dict, labels=None):
  """The batch a method's loss takes, from {group: float [B, S, S, 3] or [B, n, S, S, 3]}."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  views = {k: (v[:, None] if v.ndim == 4 else v) for k, v in groups.items()}
  n = next(iter(views.values())).shape[0]
  return {"views": views,
          "label": jnp.zeros((n,), jnp.int32) if labels is None else labels,
          "index": jnp.arange(n, dtype=jnp.int32)}


def step_rngs(key):
  """The StepRngs of a step whose key is `key` (for calling a method's loss)."""
  from sslx.core import rngs  # pylint: disable=g-import-not-at-top
  return rngs.StepRngs(key=rngs.as_typed(key))


def run_steps(config, num_devices, num_steps=2):
  """`num_steps` train steps of the pretraining Trainer on synthetic batches; (state, losses)."""
  import jax as _jax  # pylint: disable=g-import-not-at-top
  from sslx.core import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from sslx.jobs import pretrain  # pylint: disable=g-import-not-at-top
  mesh_ = mesh_lib.create_mesh(num_devices)
  trainer = pretrain.Trainer(config, INFO, mesh_)
  state = trainer.init_state(config.seed)
  losses = []
  for i in range(num_steps):
    state, metrics = trainer.train_step(state, mesh_lib.to_global(synthetic_batch(config, i),
                                                                  mesh_))
    losses.append(float(metrics["loss"]))
  return _jax.device_get(state), losses


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on now (the coordinator of a multi-process test)."""
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_main(workdir, tfds_dir, *flags, config_file="configs/byol.py", tiny=True, timeout=600):
  """`python main.py --config=config_file --workdir=...` in a subprocess, on 1 CPU backend."""
  cmd = [sys.executable, "main.py", f"--config={config_file}", f"--workdir={workdir}",
         f"--config.data.data_dir={tfds_dir}", *(TINY_FLAGS if tiny else []), *flags]
  return subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                        timeout=timeout)


def main_config(tfds_dir, *flags, config_file="configs/byol.py", tiny=True):
  """The config `run_main` would run, for the same job in this process: main.py's own flag
  parsing (ml_collections' config_flags) of the same arguments. main.py's
  config.cpu_devices=N (default 1) becomes num_devices=N: N of this process's 8 devices."""
  from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  argv = ["main.py", f"--config={os.path.join(REPO, config_file)}",
          f"--config.data.data_dir={tfds_dir}", *(TINY_FLAGS if tiny else []), *flags]
  values = absl_flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=values, lock_config=True,
                                  sys_argv=argv)  # the overrides are read from sys_argv
  values(argv)
  config = values.config
  if config.num_devices is None:
    assert config.cpu_devices >= 1, "main_config: give cpu_devices >= 1 (0 depends on the host)"
    config.num_devices = config.cpu_devices
  return config


def preempt_after(monkeypatch, reporter, step):
  """A real SIGTERM to this process once `reporter.report` has logged `step`, as a scheduler
  sends it. `reporter` is the class whose `report(self, step, metrics)` the loop calls
  (progress.Progress). The loop decides once per step, after the step, whether to stop:
  a signal sent while step k is logged stops the run after step k + 1."""
  import signal  # pylint: disable=g-import-not-at-top
  report = reporter.report

  def report_then_signal(self, done, metrics):
    scalars = report(self, done, metrics)
    if done == step:
      os.kill(os.getpid(), signal.SIGTERM)
    return scalars
  monkeypatch.setattr(reporter, "report", report_then_signal)


import contextlib  # pylint: disable=g-import-not-at-top,wrong-import-position
import fcntl  # pylint: disable=g-import-not-at-top,wrong-import-position

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@contextlib.contextmanager
def shared_by_workers(tmp_path_factory, name: str):
  """This session's directory `name`, the same for all its xdist workers, held under a lock.

  A costly setup that several workers' tests need (a pretraining, multi-process
  runs) is done once: the first worker to take the lock finds the directory
  without its "done" file, fills it and writes "done"; the others wait, then reuse it.
  """
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):  # not set under -p no:xdist or -n 0
    root = root.parent  # this session's directory, shared by its xdist workers
  with open(root / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    (root / name).mkdir(exist_ok=True)
    yield root / name


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory) -> str:
  """The TFDS data_dir of the session's tests, their main.py processes and both xdist workers:
  the embedded datasets are prepared once (sslx locks a data_dir while it prepares one)."""
  with shared_by_workers(tmp_path_factory, "tfds") as root:
    return str(root)


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory, tfds_dir):
  """One tiny pretraining (2 steps, no evaluation), shared by the session's tests and workers."""
  with shared_by_workers(tmp_path_factory, "shared_pretrain") as root:
    workdir = root / "run"
    if not (root / "done").exists():
      from sslx.jobs import pretrain  # pylint: disable=g-import-not-at-top
      pretrain.run(main_config(tfds_dir, "--config.train_steps=2", "--config.cpu_devices=2",
                               "--config.eval.knn=False", "--config.eval.linear=False"),
                   str(workdir))
      (root / "done").touch()
  return str(workdir)
