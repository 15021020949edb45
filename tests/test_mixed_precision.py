"""config.dtype='bfloat16': bf16 compute, float32 parameters, optimizer state and losses."""

import jax
import jax.numpy as jnp
import numpy as np

from sslx.core import mesh as mesh_lib
from sslx import models
from sslx.jobs import pretrain
from conftest import INFO, run_steps, synthetic_batch, tiny_config


def _float_dtypes(tree):
  return {leaf.dtype for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)}


def test_bfloat16_computes_in_bf16_and_keeps_float32_state():
  config = tiny_config(dtype="bfloat16")
  mesh = mesh_lib.create_mesh(1)
  trainer = pretrain.Trainer(config, INFO, mesh)
  state = trainer.init_state(config.seed)
  batch = mesh_lib.to_global(synthetic_batch(config), mesh)
  # The convolutions and matmuls of the step run on bf16 operands...
  jaxpr = str(jax.make_jaxpr(trainer._train_step)(state, batch))  # pylint: disable=protected-access
  convs = [line for line in jaxpr.splitlines() if "conv_general_dilated" in line]
  assert convs and all("bf16" in line for line in convs)
  # ...while parameters, BN statistics, optimizer and method state stay float32,
  new_state, metrics = trainer.train_step(state, batch)
  for tree in (new_state.params, new_state.batch_stats, new_state.opt_state,
               new_state.method_state):
    assert _float_dtypes(tree) == {jnp.dtype(jnp.float32)}
  # and the loss is reduced in float32.
  assert metrics["loss"].dtype == jnp.float32 and np.isfinite(float(metrics["loss"]))


def test_bfloat16_step_tracks_float32():
  """Same data, same init: bf16's losses stay within bf16 rounding of float32's."""
  _, losses32 = run_steps(tiny_config(), 1, num_steps=3)
  _, losses16 = run_steps(tiny_config(dtype="bfloat16"), 1, num_steps=3)
  np.testing.assert_allclose(losses16, losses32, rtol=0.03)


def test_head_hidden_layers_run_in_bf16_and_the_output_layer_in_float32():
  head = models.MLP(hidden_dims=(8,), out_dim=4, dtype=jnp.bfloat16)
  x = jnp.ones((2, 6), jnp.float32)
  variables = head.init(jax.random.PRNGKey(0), x, train=False)
  jaxpr = str(jax.make_jaxpr(lambda v: head.apply(v, x, train=False))(variables))
  dots = [line for line in jaxpr.splitlines() if "dot_general" in line]
  assert len(dots) == 2
  assert "bf16" in dots[0] and "bf16" not in dots[1] and "f32" in dots[1]
  assert head.apply(variables, x, train=False).dtype == jnp.float32
