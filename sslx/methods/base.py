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

from sslx import errors
from sslx import models
# x / ||x|| in float32: losses run at full precision whatever the compute dtype.
from sslx.knn import l2_normalize  # pylint: disable=unused-import

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
    problems = self.config_problems(config)
    if problems:
      raise errors.ConfigError(" ".join(problems))
    self.config = config
    self.dtype = jnp.dtype(config.dtype)
    self.encoder = models.create_encoder(config.model, dtype=self.dtype)
    self.feature_dim = models.feature_dim(config.model)

  @classmethod
  def config_problems(cls, config: ml_collections.ConfigDict) -> list[str]:
    """Everything wrong with the method's part of `config`, without building anything.

    Subclasses add the checks of their `config.<method>` section to these.
    """
    views = sorted(config.views.keys())
    if len(views) != cls.num_views:
      return [f"method {config.method!r} takes {cls.num_views} view(s) per image, but "
              f"config.views defines {len(views)} ({', '.join(views) or 'none'}); start from "
              f"configs/{config.method}.py, which sets the views the method needs."]
    return []

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

  def init_encoder(self, rng, images):
    """(params, batch_stats, zero features [B, D]) for the encoder, D = feature_dim."""
    params, batch_stats = self.init_module(self.encoder, rng, images)
    return params, batch_stats, jnp.zeros((images.shape[0], self.feature_dim), jnp.float32)

  @staticmethod
  def copy_of(tree: PyTree, keys) -> PyTree:
    """A fresh copy of the sub-networks `keys` of `tree` (a momentum network's start)."""
    return jax.tree.map(jnp.copy, {k: tree[k] for k in keys})

