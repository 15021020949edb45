r"""Times one 3x3 convolution's forward and both backward passes, written three ways in XLA.

  python experiments/conv_forms.py --batch=128 --size=32 --channels=64

The CPU profile (RESULTS.md, "Where the CPU step's time goes") puts 75% of
the BYOL ResNet-18 step in XLA:CPU's convolution kernels. This asks whether
the same convolution written as other XLA operations runs faster there:
`conv` is `lax.conv_general_dilated` (what `nn.Conv` emits); `concat_matmul`
concatenates the nine shifted slices and does one matmul; `patches_matmul`
uses `lax.conv_general_dilated_patches` and a matmul. Each form's output is
checked against `conv` before it is timed. Prints one JSON line per form.
"""

import json
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from jax import lax

_BATCH = flags.DEFINE_integer("batch", 128, "Images per batch.")
_SIZE = flags.DEFINE_integer("size", 32, "Height and width of the feature map.")
_CHANNELS = flags.DEFINE_integer("channels", 64, "Input and output channels.")
_SECONDS = flags.DEFINE_float("seconds", 3.0, "How long to time each form.")

_NHWC = ("NHWC", "HWIO", "NHWC")


def conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=_NHWC)


def concat_matmul(x, w):
  size = x.shape[1]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  slices = [padded[:, i:i + size, j:j + size, :] for i in range(3) for j in range(3)]
  return jnp.concatenate(slices, -1) @ w.reshape(-1, w.shape[-1])


def patches_matmul(x, w):
  patches = lax.conv_general_dilated_patches(x, (3, 3), (1, 1), "SAME", dimension_numbers=_NHWC)
  # The patches' feature axis is input-channel major, then (kh, kw).
  return patches @ jnp.transpose(w, (2, 0, 1, 3)).reshape(-1, w.shape[-1])


def main(argv):
  del argv
  b, s, c = _BATCH.value, _SIZE.value, _CHANNELS.value
  x = jax.random.normal(jax.random.key(0), (b, s, s, c))
  w = jax.random.normal(jax.random.key(1), (3, 3, c, c)) * 0.05
  reference = jax.jit(conv)(x, w)
  for form in (conv, concat_matmul, patches_matmul):
    error = float(jnp.max(jnp.abs(jax.jit(form)(x, w) - reference)))
    assert error < 1e-3, f"{form.__name__} differs from conv by {error}"
    grads = jax.jit(jax.grad(lambda x, w, f=form: jnp.sum(f(x, w) ** 2), argnums=(0, 1)))
    jax.block_until_ready(grads(x, w))  # compile
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < _SECONDS.value:
      jax.block_until_ready(grads(x, w))
      calls += 1
    ms = (time.perf_counter() - start) / calls * 1e3
    print(json.dumps({"form": form.__name__, "batch": b, "size": s, "channels": c,
                      "fwd_bwd_ms": round(ms, 1), "max_abs_diff_vs_conv": error,
                      "device": jax.devices()[0].device_kind}), flush=True)


if __name__ == "__main__":
  app.run(main)
