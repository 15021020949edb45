r"""Compile time of an initialiser with and without XLA:CPU's backend optimisations.

  python experiments/init_compile.py --config=configs/byol.py

Initialises the config's encoder (`models.init_variables`' program) once with
`jax.jit` and once with `sslx.core.compile_once.jit`, each in a fresh
compilation cache, and prints the seconds to compile and run each and the
largest difference between their parameters (the same seed).
"""

import json
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from sslx import models
from sslx.core import compile_once
from sslx.core import mesh

_CONFIG = config_flags.DEFINE_config_file("config", None, "A pretraining config.", lock_config=True)


def main(argv):
  del argv
  config = _CONFIG.value
  mesh.split_cpu_into_devices(config)  # as main.py, before JAX starts its backends
  mesh.choose_cpu_conv_backend(config)
  encoder = models.create_encoder(config.model)
  size = config.data.image_size
  images = jnp.zeros((1, size, size, 3))
  key = jax.random.PRNGKey(config.seed)
  init = lambda k: encoder.init(k, images, train=False)
  out, seconds = {}, {}
  for name, make in (("optimised", jax.jit), ("unoptimised", compile_once.jit)):
    jax.clear_caches()
    start = time.perf_counter()
    out[name] = jax.block_until_ready(make(init)(key))
    seconds[name] = round(time.perf_counter() - start, 2)
  diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
             for a, b in zip(jax.tree.leaves(out["optimised"]), jax.tree.leaves(out["unoptimised"])))
  print(json.dumps({"command": " ".join(sys.argv[1:]), "model": config.model.name,
                    "width": config.model.width, "image_size": size,
                    "compile_and_run_s": seconds, "max_abs_difference": diff}))


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
