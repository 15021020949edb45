r"""Times one 3x3 convolution's forward, input-gradient and weight-gradient passes apart.

  python experiments/conv_passes.py --batch=128 --size=32 --channels=64 --cpu_conv_backend=eigen
  python experiments/conv_passes.py --batch=128 --size=32 --channels=64 --cpu_conv_backend=ynnpack

`--cpu_conv_backend` is main.py's `config.cpu_conv_backend` (set the same way,
before JAX starts): 'eigen' runs XLA:CPU's convolutions with Eigen, 'ynnpack'
with YNNPACK, jaxlib 0.10's default. The weight gradient is where the two
differ most (experiments/RESULTS.md, "Which library runs XLA:CPU's
convolutions"). Prints one JSON line per pass: milliseconds and GFLOP/s
(2 x batch x size^2 x 9 x channels^2 FLOPs per pass).
"""

import json
import time

from absl import app
from absl import flags

from sslx.core import mesh

_BATCH = flags.DEFINE_integer("batch", 128, "Images per batch.")
_SIZE = flags.DEFINE_integer("size", 32, "Height and width of the feature map.")
_CHANNELS = flags.DEFINE_integer("channels", 64, "Input and output channels.")
_BACKEND = flags.DEFINE_enum("cpu_conv_backend", "eigen", list(mesh.CPU_CONV_BACKENDS),
                             "The library XLA:CPU runs the convolutions with.")
_SECONDS = flags.DEFINE_float("seconds", 3.0, "How long to time each pass.")


def main(argv):
  del argv
  mesh.choose_cpu_conv_backend({"cpu_conv_backend": _BACKEND.value})
  import jax  # pylint: disable=g-import-not-at-top  (after the flag is set)
  from jax import lax  # pylint: disable=g-import-not-at-top

  def conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))

  b, s, c = _BATCH.value, _SIZE.value, _CHANNELS.value
  x = jax.random.normal(jax.random.key(0), (b, s, s, c))
  w = jax.random.normal(jax.random.key(1), (3, 3, c, c)) * 0.05
  g = jax.random.normal(jax.random.key(2), (b, s, s, c))
  passes = {
      "forward": (jax.jit(conv), (x, w)),
      "input_grad": (jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0]), (x, w, g)),
      "weight_grad": (jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0]), (x, w, g)),
  }
  gflop = 2 * b * s * s * 9 * c * c / 1e9
  for name, (fn, args) in passes.items():
    jax.block_until_ready(fn(*args))  # compile
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < _SECONDS.value:
      jax.block_until_ready(fn(*args))
      calls += 1
    ms = (time.perf_counter() - start) / calls * 1e3
    print(json.dumps({"pass": name, "cpu_conv_backend": _BACKEND.value, "batch": b, "size": s,
                      "channels": c, "ms": round(ms, 1), "gflop_per_s": round(gflop / ms * 1e3, 1),
                      "device": jax.devices()[0].device_kind}), flush=True)


if __name__ == "__main__":
  app.run(main)
