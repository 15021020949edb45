"""The contract between the generic trainer and a self-supervised method.

A method owns its networks (always including an encoder under the key
'encoder', the part that transfers), its loss, and any state that is not
trained by gradient descent (an EMA target, a queue of keys, a memory bank).
The trainer owns everything else: data, augmentation, optimizer, sharding,
checkpoints, the online probe and logging.

What a method declares and receives:
  * `view_groups`: the names of the view groups it trains on, in order
    (config.views.<name>: crop size, number of crops, augmentation; see
    sslx/data/views.py). The trainer checks the config has exactly these.
  * `loss(params, batch_stats, method_state, batch, rngs, step)`, where
    `batch` is {'views': {group: float [B, n, S, S, 3], normalised and
    augmented}, 'label': int32 [B] (-1: unlabelled), 'index': int32 [B] (the
    example's id in the dataset, for memory banks)}, and `rngs` is the step's
    `sslx.core.rngs.StepRngs`: `rngs.method(name)` is a key for each of the
    method's own sampling streams (MoCo's shuffle, masks, permutations), and
    `rngs.modules(name)` the dropout / drop-path keys of one forward pass,
    which `encode` and `apply_train` hand to the modules.
  * `grey_encoder_input`: True where the encoder sees grey lightness images
    (colorization); its checkpoint then says so, and every evaluator feeds it
    grey images.
  * `dataset`: the pretraining data's `DatasetInfo`, given by the trainer
    (None in unit tests that need none), for what is sized by the dataset:
    a memory bank or an exemplar classifier (one row per training image;
    `batch['index']` is always below `num_train_examples`), a supervised
    classifier (`num_classes`).
  * `param_groups()`: optional extra optimizer groups (their own learning-rate
    multiplier, frozen for the first steps or for ever), with
    `param_group(path)` naming the group of each parameter.

All methods are pure functions of explicit arguments, so the trainer can jit
them over a device mesh and a resumed run can reproduce them exactly.
"""

import abc
import dataclasses
from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections

from sslx import errors
from sslx import models
from sslx.core.numerics import l2_normalize  # pylint: disable=unused-import  (for methods)
from sslx.core.rngs import StepRngs
from sslx.data import views as views_lib
from sslx.data.info import DatasetInfo

PyTree = Any


@dataclasses.dataclass(frozen=True)
class ParamGroup:
  """An optimizer group a method adds beside its main one (`config.optimizer`).

  learning_rate_multiplier: this group's rate is the schedule's times this.
  frozen_steps: no update at all (no decay either) for the first this many
    steps (SwAV's prototypes during the first epoch); -1: never updated.
  """
  learning_rate_multiplier: float = 1.0
  frozen_steps: int = 0


@flax.struct.dataclass
class LossOutput:
  """What `SSLMethod.loss` returns beside the scalar loss."""
  batch_stats: PyTree  # online BatchNorm statistics after the forward passes
  method_state: PyTree  # method state after the forward passes (e.g. target BN stats)
  features: jax.Array  # online encoder features of one view per image [B, D], for the probe
  embeddings: jax.Array  # online output embedding of that view [B, E], for monitoring
  metrics: dict[str, jax.Array]


class SSLMethod(abc.ABC):
  """Base class; subclasses are stateless apart from their (static) config."""

  view_groups: tuple[str, ...] = ("v1", "v2")
  grey_encoder_input: bool = False

  def __init__(self, config: ml_collections.ConfigDict, dataset: DatasetInfo | None = None):
    problems = self.config_problems(config)
    if problems:
      raise errors.ConfigError(" ".join(problems))
    self.config = config
    self.dataset = dataset
    self.dtype = jnp.dtype(config.dtype)
    self.backbone = models.get_backbone(config.model)
    self.encoder = self.backbone.module(self.dtype)
    self.feature_dim = self.backbone.feature_dim

  @classmethod
  def config_problems(cls, config: ml_collections.ConfigDict) -> list[str]:
    """Everything wrong with the method's part of `config`, without building anything.

    Subclasses add the checks of their `config.<method>` section to these.
    """
    return views_lib.name_problems(config.get("views"), cls.view_groups, config.method)

  @abc.abstractmethod
  def init(self, rng: jax.Array, images: jax.Array) -> tuple[PyTree, PyTree, PyTree]:
    """Returns (params, batch_stats, method_state) for a batch like `images` [B, H, W, 3]."""

  @abc.abstractmethod
  def loss(self, params: PyTree, batch_stats: PyTree, method_state: PyTree,
           batch: dict[str, Any], rngs: StepRngs,
           step: jax.Array) -> tuple[jax.Array, LossOutput]:
    """Scalar loss over the global batch, differentiated w.r.t. `params` only."""

  def post_step(self, params: PyTree, method_state: PyTree, step: jax.Array) -> PyTree:
    """Updates non-gradient state after the optimizer step (`params` are the new ones).

    `step` is the index of the update just applied (0 for the first).
    """
    del params, step
    return method_state

  def param_groups(self) -> dict[str, ParamGroup]:
    """Extra optimizer groups by name; {} (the default): one optimizer for everything."""
    return {}

  def param_group(self, path: Sequence[str]) -> str | None:
    """The extra group of the parameter at `path` in the method's params, None: the main one."""
    del path
    return None

  def encoder_variables(self, params: PyTree, batch_stats: PyTree) -> PyTree:
    """The transferable encoder's variables, as `self.encoder.apply` takes them."""
    return {"params": params["encoder"], "batch_stats": batch_stats["encoder"]}

  # Helpers shared by methods.
  @staticmethod
  def view(batch: dict[str, Any], group: str, crop: int = 0) -> jax.Array:
    """Crop `crop` of view group `group` for the whole batch, [B, S, S, 3]."""
    return batch["views"][group][:, crop]

  def apply_train(self, module, params, batch_stats, x, rngs: dict | None = None):
    """Applies a module in training mode; returns (output, new batch_stats).

    `rngs`: the pass's dropout / drop-path keys (`StepRngs.modules(name)`).
    """
    out, updates = module.apply({"params": params, "batch_stats": batch_stats}, x,
                                train=True, mutable=["batch_stats"], rngs=rngs)
    return out, updates["batch_stats"]

  def encode(self, params, batch_stats, x, rngs: dict | None = None):
    """The encoder in training mode: (pooled features [B, D], new batch_stats)."""
    out, batch_stats = self.apply_train(self.encoder, params, batch_stats, x, rngs)
    return out.pooled, batch_stats

  @staticmethod
  def init_module(module, rng, x):
    variables = module.init(rng, x, train=False)
    return variables["params"], variables.get("batch_stats", {})

  def dataset_field(self, field: str) -> int:
    """`num_train_examples` or `num_classes` of the pretraining data; ConfigError if unknown."""
    value = getattr(self.dataset, field, None) if self.dataset is not None else None
    if not value:
      raise errors.ConfigError(
          f"config.method={self.config.method!r} needs the {field} of its pretraining data "
          f"({'one entry per training image' if field == 'num_train_examples' else 'a classifier'}),"
          " which this dataset does not report.")
    return int(value)

  def classify(self, params, batch_stats, head, x, rngs: dict | None = None):
    """Encoder then `head` in training mode: (features [B, D], head output, new batch_stats)."""
    features, bs_enc = self.encode(params["encoder"], batch_stats["encoder"], x, rngs)
    out, bs_head = self.apply_train(head, params["head"], batch_stats["head"], features)
    return features, out, {"encoder": bs_enc, "head": bs_head}

  def init_encoder_and_head(self, rng, images, head):
    """(params, batch_stats) of the encoder and `head` (on the pooled features), keys
    'encoder' and 'head'."""
    k_enc, k_head = jax.random.split(rng)
    params, batch_stats = {}, {}
    params["encoder"], batch_stats["encoder"], x = self.init_encoder(k_enc, images)
    params["head"], batch_stats["head"] = self.init_module(head, k_head, x)
    return params, batch_stats

  def init_encoder_and_decoder(self, rng, images, decoder_for):
    """(params, batch_stats) of the encoder and a dense decoder, keys 'encoder' and 'decoder'.

    `decoder_for(encoder output)` gives the decoder and what it reads (a
    feature map, or the pooled features).
    """
    k_enc, k_dec = jax.random.split(rng)
    params, batch_stats = {}, {}
    params["encoder"], batch_stats["encoder"] = self.init_module(self.encoder, k_enc, images)
    out = self.encoder.apply({"params": params["encoder"], "batch_stats": batch_stats["encoder"]},
                             images, train=False)
    decoder, decoder_input = decoder_for(out)
    params["decoder"], batch_stats["decoder"] = self.init_module(decoder, k_dec, decoder_input)
    return params, batch_stats

  def init_encoder(self, rng, images):
    """(params, batch_stats, zero features [B, D]) for the encoder, D = feature_dim."""
    params, batch_stats = self.init_module(self.encoder, rng, images)
    return params, batch_stats, jnp.zeros((images.shape[0], self.feature_dim), jnp.float32)

  @staticmethod
  def copy_of(tree: PyTree, keys) -> PyTree:
    """A fresh copy of the sub-networks `keys` of `tree` (a momentum network's start)."""
    return jax.tree.map(jnp.copy, {k: tree[k] for k in keys})
