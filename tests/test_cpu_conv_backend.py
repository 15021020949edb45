"""config.cpu_conv_backend: which XLA:CPU library runs the convolutions.

The choice is an XLA flag, read once when the backend starts, so the other
library is checked in a subprocess. conftest.py applies the default (Eigen)
to this test process, as main.py does for a run.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from sslx import errors
from sslx.core import mesh

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAG = "--xla_cpu_experimental_ynn_fusion_type"

# Big enough that jaxlib's default hands the convolution to YNNPACK (it keeps
# tiny ones, e.g. 2 x 16x16 x 4 channels, in XLA's own kernels either way).
SHAPE = (8, 16, 16, 64)

# Runs the same convolution's forward and both backward passes, then prints
# whether YNNPACK got a convolution and the gradients.
_PROBE = r"""
import json
import jax, jax.numpy as jnp
from jax import lax
x = jax.random.normal(jax.random.key(0), SHAPE)
w = jax.random.normal(jax.random.key(1), (3, 3, SHAPE[-1], SHAPE[-1])) * 0.05
def loss(x, w):
  y = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jnp.sum(jnp.sin(y))
grads = jax.jit(jax.grad(loss, argnums=(0, 1)))
text = grads.lower(x, w).compile().as_text()
dx, dw = grads(x, w)
print(json.dumps({"ynn_convolution": ynn_convolution(text),
                  "dx": jnp.ravel(dx)[:512].tolist(), "dw": jnp.ravel(dw)[:512].tolist()}))
"""


def ynn_convolution(hlo_text: str) -> bool:
  """Whether a YNNPACK fusion in this compiled HLO module computes a convolution."""
  bodies, current = {}, None
  for line in hlo_text.splitlines():
    if line.endswith("{") and not line.startswith(" "):  # a computation's header
      current = line.split()[1] if line.startswith("ENTRY") else line.split()[0]
      bodies[current.lstrip("%")] = []
    elif current and line.startswith(" "):
      bodies[current.lstrip("%")].append(line)
  called_by_ynn = {line.split("calls=")[1].split(",")[0].strip().lstrip("%")
                   for body in bodies.values() for line in body
                   if line.split("=")[0].strip().lstrip("%").startswith("ynn_fusion")}
  return any(" convolution(" in line for name in called_by_ynn for line in bodies.get(name, []))


def _probe(backend: str) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  code = (f"from sslx.core import mesh\nmesh.choose_cpu_conv_backend({{'cpu_conv_backend': {backend!r}}})\n"
          f"SHAPE = {SHAPE!r}\n"
          f"from tests.test_cpu_conv_backend import ynn_convolution\n{_PROBE}")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_default_keeps_convolutions_out_of_ynnpack_and_ynnpack_can_be_chosen():
  eigen, ynnpack = _probe("eigen"), _probe("ynnpack")
  assert not eigen["ynn_convolution"]
  assert ynnpack["ynn_convolution"]
  # Same convolution, other kernels: the gradients agree to float32 rounding.
  np.testing.assert_allclose(eigen["dx"], ynnpack["dx"], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(eigen["dw"], ynnpack["dw"], rtol=1e-4, atol=1e-4)


def test_this_test_process_compiles_convolutions_as_main_py_does():
  x = jnp.ones(SHAPE)
  w = jnp.ones((3, 3, SHAPE[-1], SHAPE[-1]))
  conv = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
  text = jax.jit(conv).lower(x, w).compile().as_text()
  assert " convolution(" in text
  assert not ynn_convolution(text)


@pytest.mark.parametrize("backend, expected", [
    ("eigen", f"--xla_force_host_platform_device_count=2 {FLAG}=-individual_convolution"),
    ("ynnpack", "--xla_force_host_platform_device_count=2"),
])
def test_the_flag_it_sets(monkeypatch, backend, expected):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  mesh.choose_cpu_conv_backend({"cpu_conv_backend": backend})
  assert os.environ["XLA_FLAGS"] == expected


def test_hosts_with_an_accelerator_plugin_are_left_alone(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setattr(mesh, "_accelerator_plugin_installed", lambda: True)
  mesh.choose_cpu_conv_backend({"cpu_conv_backend": "eigen"})
  assert os.environ["XLA_FLAGS"] == ""


def test_a_jaxlib_that_does_not_know_the_flag_does_not_get_it(monkeypatch):
  # XLA aborts on an unknown flag; jaxlib 0.8.0 has no ynn fusion flag.
  import jaxlib.version  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setattr(jaxlib.version, "__version_info__", (0, 8, 0))
  mesh.choose_cpu_conv_backend({"cpu_conv_backend": "eigen"})
  assert os.environ["XLA_FLAGS"] == ""


def test_this_cpu_only_host_has_no_accelerator_plugin():
  assert not mesh._accelerator_plugin_installed()  # pylint: disable=protected-access


def test_a_ynn_setting_of_the_users_own_wins(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", f"{FLAG}=")
  mesh.choose_cpu_conv_backend({"cpu_conv_backend": "eigen"})
  assert os.environ["XLA_FLAGS"] == f"{FLAG}="


def test_an_unknown_backend_names_the_valid_ones(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "")
  with pytest.raises(errors.ConfigError, match=r"cpu_conv_backend='mkl'.*'eigen', 'ynnpack'"):
    mesh.choose_cpu_conv_backend({"cpu_conv_backend": "mkl"})
  assert os.environ["XLA_FLAGS"] == ""
