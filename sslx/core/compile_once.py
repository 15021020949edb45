"""Compile time: functions that run once per job, and XLA's persistent cache.

XLA:CPU spends most of an initialiser's compilation optimising the threefry
random-number code of every parameter, then runs the result once: 5.3 s to
compile and run the quick start's ResNet-10 `init` on a 2-core CPU, 1.4 s
without the backend's optimisations (experiments/init_compile.py;
experiments/README.md, "Where a quick start's minutes go"). The values differ from the optimised program's only
in float32 rounding (a relative 2.4e-7 at most, measured), so a seed still
fixes the run.
Accelerators compile these programs fast already and are left alone.
"""

import os
from typing import Any, Callable

import jax

# The XLA debug option that sets LLVM's and XLA:CPU's backend passes; 0 runs none.
_UNOPTIMIZED = {"xla_backend_optimization_level": 0}


def jit(fn: Callable[..., Any], **jit_kwargs) -> Callable[..., Any]:
  """Like `jax.jit(fn, **jit_kwargs)`, compiled without backend optimisations on CPU.

  The options go to jax.jit itself (`compiler_options`), so its own cache, keyed by
  the argument shapes, and the persistent compilation cache serve these programs too.
  """
  if jax.default_backend() != "cpu":
    return jax.jit(fn, **jit_kwargs)
  return jax.jit(fn, compiler_options=_UNOPTIMIZED, **jit_kwargs)


def enable_persistent_cache(config) -> str | None:
  """Turns on XLA's persistent compilation cache in `config.compilation_cache_dir`.

  A job compiles the same programs as the last run of the same config (its
  train step) and as every other method's run on the same data (feature
  extraction, the logistic-regression fits, the from-scratch baseline's step):
  with the cache, a rerun reads them from disk instead of compiling them
  again (MaxText keeps one the same way). Entries are keyed by the program, the
  compiler flags and the jax version, so a stale entry is never used.
  `JAX_COMPILATION_CACHE_DIR` in the environment wins; '' turns the cache off.
  Returns the directory in use (None: off). Call before the first compilation.
  """
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]  # jax reads it itself
  directory = config.get("compilation_cache_dir", "")
  if not directory:
    return None
  directory = os.path.expanduser(directory)
  jax.config.update("jax_compilation_cache_dir", directory)
  # Every program, not only those over jax's default of 1 s to compile: a job's
  # evaluation compiles dozens of small ones (features, kNN, each probe's fit),
  # together several seconds of a smoke run (experiments/smoke_runs.py).
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  return directory
