"""The contract between the generic trainer and a self-supervised method.

A method owns its networks (always including an encoder under the key
'encoder', the part that transfers), its loss, and any state that is not
trained by gradient descent (an EMA target, a queue of keys). The trainer owns
everything else: data, augmentation, optimizer, sharding, checkpoints, the
online probe and logging.

All methods are pure functions of explicit arguments, so the trainer can jit
them over a device mesh and a resumed run can reproduce them exactly.
"""

import abc
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections

from sslx import models

PyTree = Any


@flax.struct.dataclass
class LossOutput:
  """What `SSLMethod.loss` returns beside the scalar loss."""
  batch_stats: PyTree  # online BatchNorm statistics after the forward passes
  method_state: PyTree  # method state after the forward passes (e.g. target BN stats)
  features: jax.Array  # online encoder features of the first view [B, D], for the probe
  embeddings: jax.Array  # online output embedding of the first view [B, E], for monitoring
  metrics: dict[str, jax.Array]


class SSLMethod(abc.ABC):
  """Base class; subclasses are stateless apart from their (static) config."""

  num_views: int = 2

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.dtype = jnp.dtype(config.dtype)
    self.encoder = models.create_encoder(config.model, dtype=self.dtype)

  @abc.abstractmethod
  def init(self, rng: jax.Array, images: jax.Array) -> tuple[PyTree, PyTree, PyTree]:
    """Returns (params, batch_stats, method_state) for a batch like `images` [B, H, W, 3]."""

  @abc.abstractmethod
  def loss(self, params: PyTree, batch_stats: PyTree, method_state: PyTree,
           views: tuple[jax.Array, ...], rng: jax.Array,
           step: jax.Array) -> tuple[jax.Array, LossOutput]:
    """Scalar loss over the global batch, differentiated w.r.t. `params` only."""

  def post_step(self, params: PyTree, method_state: PyTree, step: jax.Array) -> PyTree:
    """Updates non-gradient state after the optimizer step (`params` are the new ones).

    `step` is the index of the update just applied (0 for the first).
    """
    del params, step
    return method_state

  def encoder_variables(self, params: PyTree, batch_stats: PyTree) -> PyTree:
    """The transferable encoder's variables, as `self.encoder.apply` takes them."""
    return {"params": params["encoder"], "batch_stats": batch_stats["encoder"]}

  # Helpers shared by methods.
  def apply_train(self, module, params, batch_stats, x):
    """Applies a module in training mode; returns (output, new batch_stats)."""
    out, updates = module.apply({"params": params, "batch_stats": batch_stats}, x,
                                train=True, mutable=["batch_stats"])
    return out, updates["batch_stats"]

  @staticmethod
  def init_module(module, rng, x):
    variables = module.init(rng, x, train=False)
    return variables["params"], variables.get("batch_stats", {})
