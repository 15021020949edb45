"""MoCo v2 and v3: Momentum Contrast.

v2 (He et al., 2020, arXiv:1911.05722; Chen et al., 2020, arXiv:2003.04297):
a query encoder f_q (encoder + MLP head) and a key encoder f_k, a momentum
copy of it: theta_k <- m theta_k + (1 - m) theta_q (m = 0.999). A FIFO queue of
the K most recent keys serves as negatives. For a query q = f_q(view 1) with
its positive key k+ = f_k(view 2), all L2-normalised (MoCo eq. 1, InfoNCE):
    L_q = -log( exp(q.k+/T) / (exp(q.k+/T) + sum_{k- in queue} exp(q.k-/T)) ),
averaged over the global batch; then the batch's keys are enqueued and the
oldest are dequeued. Gradients reach f_q only.

v3 (Chen, Xie & He, 2021, arXiv:2104.02057, Algorithm 1): no queue. A
predictor on the query side; the keys of the other view across the GLOBAL
batch are the candidates, the one of the same image the positive:
    ctr(q, k) = 2T * CE(q k^T / T, labels = arange(N)),
    L = ctr(q1, k2) + ctr(q2, k1),
with m increased from m_0 (0.99) to 1 along a half cosine.

Shuffling BN (v2). With BatchNorm, the positive key is computed from the same
batch as its query while the queue's keys come from earlier batches: batch
statistics mark which key is current, and the network learns that signature
instead of the images (MoCo Sec. 3.3; the loss drops quickly and transfer
suffers). MoCo breaks the link by computing BN over per-GPU sub-batches and
shuffling the key batch across GPUs first. sslx does the same on the global
batch, independent of the device count: the batch is cut into `bn_groups`
groups, queries are normalised within contiguous groups, keys within groups of
a random permutation of the batch (then put back in order), so a query and its
positive key almost never share their BN statistics. With one device this is
the "SplitBatchNorm" of the official MoCo CIFAR demo. v3 needs none of it: its
negatives come from the same batch as the positive, with the same statistics
(v3 uses BN synchronised over the whole batch), so bn_groups = 1 there.

Order of updates. MoCo updates the key encoder with the current query weights
and then computes keys; sslx computes keys with the key encoder and updates it
after the optimizer step (post_step) from the new query weights. The sequences
of key weights are the same: key weights at step t+1 are
m * (key weights at t) + (1 - m) * (query weights after update t) in both.
"""

import jax
import jax.numpy as jnp
import optax

from sslx.config import validation as config_validation
from sslx import models
from sslx.core import rngs as rngs_lib
from sslx.core import schedules
from sslx.methods import base

KEY_NETWORKS = ("encoder", "projector")
VERSIONS = ("v2", "v3")


def infonce_with_queue(q: jax.Array, k: jax.Array, queue: jax.Array,
                       temperature: float) -> tuple[jax.Array, jax.Array]:
  """MoCo v2's InfoNCE: positive q.k against negatives q.queue; mean loss and top-1 accuracy.

  q, k: [N, D] queries and their positive keys; queue: [K, D] negatives. All
  are L2-normalised here.
  """
  q, k, queue = base.l2_normalize(q), base.l2_normalize(k), base.l2_normalize(queue)
  positive = jnp.sum(q * k, axis=-1, keepdims=True)  # [N, 1]
  negatives = q @ queue.T  # [N, K]
  logits = jnp.concatenate([positive, negatives], axis=1) / temperature
  labels = jnp.zeros((q.shape[0],), jnp.int32)  # the positive is column 0
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return jnp.mean(loss), jnp.mean(jnp.argmax(logits, axis=-1) == 0)


def symmetric_ctr(q1, q2, k1, k2, temperature: float) -> tuple[jax.Array, jax.Array]:
  """MoCo v3's loss ctr(q1, k2) + ctr(q2, k1) over the global batch, and mean top-1 accuracy."""

  def ctr(q, k):
    q, k = base.l2_normalize(q), base.l2_normalize(k)
    logits = q @ k.T / temperature  # [N, N]; row i's positive is column i
    labels = jnp.arange(q.shape[0])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return 2.0 * temperature * jnp.mean(ce), jnp.mean(jnp.argmax(logits, -1) == labels)

  loss12, acc12 = ctr(q1, k2)
  loss21, acc21 = ctr(q2, k1)
  return loss12 + loss21, (acc12 + acc21) / 2


def enqueue(queue: jax.Array, pointer: jax.Array, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Writes `keys` [N, D] over the oldest N entries of the ring buffer `queue` [K, D].

  `pointer` is the index of the oldest entry. K must be a multiple of N, so a
  write never straddles the end and the pointer wraps to exactly 0.
  """
  queue = jax.lax.dynamic_update_slice(queue, keys.astype(queue.dtype), (pointer, 0))
  return queue, (pointer + keys.shape[0]) % queue.shape[0]


def grouped_apply(apply_fn, x: jax.Array, groups: int, permutation: jax.Array | None = None,
                  rngs: dict | None = None):
  """Runs `apply_fn(x, rngs) -> (out, batch_stats)` with BatchNorm statistics per group.

  The batch (optionally permuted first) is cut into `groups` equal contiguous
  groups, each normalised with its own statistics; outputs come back in the
  original order. The returned running statistics are the mean over groups.
  `rngs` (a forward pass's module keys, or None) gives each group keys of its own.
  """
  if groups == 1 and permutation is None:
    return apply_fn(x, rngs)
  if permutation is not None:
    x = x[permutation]
  n = x.shape[0]
  group_rngs = None if rngs is None else {
      name: jnp.stack([rngs_lib.derive(key, f"bn_group/{g}") for g in range(groups)])
      for name, key in rngs.items()}
  out, stats = jax.vmap(apply_fn)(x.reshape(groups, n // groups, *x.shape[1:]), group_rngs)
  out = jax.tree.map(lambda y: y.reshape(n, *y.shape[2:]), out)
  if permutation is not None:
    inverse = jnp.argsort(permutation)  # undo the shuffle
    out = jax.tree.map(lambda y: y[inverse], out)
  return out, jax.tree.map(lambda s: jnp.mean(s, axis=0), stats)


class Method(base.SSLMethod):
  """MoCo v2 (queue, shuffled BN) or v3 (predictor, in-batch keys), by `config.moco.version`."""

  view_groups = ("v1", "v2")

  @classmethod
  def config_problems(cls, config):
    c = config.moco
    problems = super().config_problems(config) + config_validation.check_fields(c, {
        "version": config_validation.one_of(*VERSIONS),
        "dim": config_validation.POSITIVE_INT,
        "temperature": config_validation.POSITIVE,
        "momentum": config_validation.UNIT_INTERVAL,
        "momentum_cosine": config_validation.BOOL,
        "symmetric": config_validation.BOOL,
        "bn_groups": config_validation.POSITIVE_INT,
        "queue_size": config_validation.POSITIVE_INT,
    }, prefix="moco.")
    if problems:
      return problems
    if config.batch_size % c.bn_groups:
      problems.append(f"config.moco.bn_groups={c.bn_groups} must divide "
                      f"batch_size={config.batch_size}.")
    if c.version == "v2":
      keys_per_step = config.batch_size * (2 if c.symmetric else 1)
      if c.queue_size < keys_per_step or c.queue_size % keys_per_step:
        problems.append(
            f"config.moco.queue_size={c.queue_size} must be a positive multiple of the keys "
            f"enqueued per step ({keys_per_step}: batch_size"
            f"{' x 2, symmetric' if c.symmetric else ''}), so that the FIFO queue wraps around "
            "exactly.")
    return problems

  def __init__(self, config, **kwargs):
    super().__init__(config, **kwargs)
    c = config.moco
    self.version = c.version
    hidden = tuple(c.projector_hidden_dims) or (self.feature_dim,)
    if c.version == "v2":
      # MoCo v2 replaces the fc layer by fc-ReLU-fc (2048-2048-128 on ResNet-50), no BN.
      self.projector = models.MLP(hidden_dims=hidden, out_dim=c.dim, use_bn=False,
                                  dtype=self.dtype)
      self.predictor = None
    else:
      # MoCo v3 (ResNet): 2-layer projector and predictor with BN, the projector
      # ending in an affine-free BN.
      self.projector = models.MLP(hidden_dims=hidden, out_dim=c.dim, last_bn=True,
                                  dtype=self.dtype)
      self.predictor = models.MLP(hidden_dims=tuple(c.predictor_hidden_dims), out_dim=c.dim,
                                  dtype=self.dtype)

  def init(self, rng, images):
    k_enc, k_proj, k_pred, k_queue = jax.random.split(rng, 4)
    params, batch_stats = {}, {}
    params["encoder"], batch_stats["encoder"], x = self.init_encoder(k_enc, images)
    params["projector"], batch_stats["projector"] = self.init_module(self.projector, k_proj, x)
    if self.predictor is not None:
      z = jnp.zeros((x.shape[0], self.config.moco.dim), jnp.float32)
      params["predictor"], batch_stats["predictor"] = self.init_module(self.predictor, k_pred, z)
    method_state = {"key_params": self.copy_of(params, KEY_NETWORKS),
                    "key_batch_stats": self.copy_of(batch_stats, KEY_NETWORKS)}
    if self.version == "v2":
      # As in MoCo: the queue starts as random unit vectors.
      queue = jax.random.normal(k_queue, (self.config.moco.queue_size, self.config.moco.dim))
      method_state["queue"] = base.l2_normalize(queue)
      method_state["queue_pointer"] = jnp.zeros((), jnp.int32)
    return params, batch_stats, method_state

  def _forward(self, networks, params, batch_stats, x, permutation=None, rngs=None):
    """Encoder then `networks` heads, BN per group; returns (features, outputs, new stats).

    `rngs`: the pass's module keys (`StepRngs.modules`), one set per BN group.
    """
    groups = self.config.moco.bn_groups

    def apply(xg, group_rngs):
      h, bs = self.encode(params["encoder"], batch_stats["encoder"], xg, group_rngs)
      stats, outs = {"encoder": bs}, [h]
      for name, module in networks:
        y, stats[name] = self.apply_train(module, params[name], batch_stats[name], outs[-1])
        outs.append(y)
      return outs, stats

    return grouped_apply(apply, x, groups, permutation, rngs)

  def loss(self, params, batch_stats, method_state, batch, rngs, step):
    del step
    c = self.config.moco
    view1, view2 = self.view(batch, "v1"), self.view(batch, "v2")
    key_params = jax.lax.stop_gradient(method_state["key_params"])
    key_heads = [("projector", self.projector)]
    query_heads = key_heads + ([("predictor", self.predictor)] if self.predictor else [])
    n = view1.shape[0]
    shuffle = c.bn_groups > 1

    def keys(x, key_stats, view):
      perm = (jax.random.permutation(rngs.method(f"moco/shuffle_{view}"), n) if shuffle
              else None)
      (_, k), key_stats = self._forward(key_heads, key_params, key_stats, x, perm,
                                        rngs.modules(f"key/{view}"))
      return jax.lax.stop_gradient(k), key_stats

    (feat1, proj1, *pred1), stats = self._forward(query_heads, params, batch_stats, view1,
                                                  rngs=rngs.modules("query/v1"))
    k2, key_stats = keys(view2, method_state["key_batch_stats"], "v2")
    new_state = dict(method_state)
    if self.version == "v2":
      loss, accuracy = infonce_with_queue(proj1, k2, method_state["queue"], c.temperature)
      new_keys = k2
      if c.symmetric:  # the CIFAR demo's option: also view 2 as query against view 1's key
        (_, proj2), stats = self._forward(query_heads, params, stats, view2,
                                          rngs=rngs.modules("query/v2"))
        k1, key_stats = keys(view1, key_stats, "v1")
        loss2, accuracy2 = infonce_with_queue(proj2, k1, method_state["queue"], c.temperature)
        loss, accuracy = (loss + loss2) / 2, (accuracy + accuracy2) / 2
        new_keys = jnp.concatenate([k2, k1], axis=0)
      new_state["queue"], new_state["queue_pointer"] = enqueue(
          method_state["queue"], method_state["queue_pointer"], base.l2_normalize(new_keys))
    else:
      (_, _, q2), stats = self._forward(query_heads, params, stats, view2,
                                        rngs=rngs.modules("query/v2"))
      k1, key_stats = keys(view1, key_stats, "v1")
      loss, accuracy = symmetric_ctr(pred1[0], q2, k1, k2, c.temperature)
    new_state["key_batch_stats"] = key_stats
    return loss, base.LossOutput(batch_stats=stats, method_state=new_state, features=feat1,
                                 embeddings=proj1, metrics={"contrastive_accuracy": accuracy})

  def momentum(self, step):
    c = self.config.moco
    if c.momentum_cosine:
      return schedules.cosine_ema_rate(step, self.config.train_steps, c.momentum)
    return jnp.asarray(c.momentum, jnp.float32)

  def post_step(self, params, method_state, step):
    online = {k: params[k] for k in KEY_NETWORKS}
    keys = optax.incremental_update(online, method_state["key_params"],
                                    1.0 - self.momentum(step))
    return dict(method_state, key_params=keys)
