"""SimCLR: a Simple framework for Contrastive Learning (Chen et al., 2020, arXiv:2002.05709).

Both augmented views of every image go through the same encoder and MLP
projector. Each of the 2N projections z_i must pick out its partner (the other
view of the same image) among the other 2N - 1 projections of the batch.

Loss (paper eq. 1, "NT-Xent"), with sim(u, v) = u.v / (|u| |v|):
    l(i, j) = -log( exp(sim(z_i, z_j)/T) / sum_{k != i} exp(sim(z_i, z_k)/T) ),
    L = 1/(2N) sum over the N positive pairs (i, j) of [l(i, j) + l(j, i)].

Global negatives: the train step is jitted over arrays sharded across the
device mesh, so `z` below is the GLOBAL batch of 2N projections and the
similarity matrix spans every device. A per-device loss (negatives from the
local shard only, then averaged) would be a different, weaker objective whose
value depends on the device count; tests/test_simclr.py checks that a step
on 8 devices equals the step on 1.

BatchNorm: the two views are encoded as one batch of 2N, so BN statistics mix
both views, as in the reference implementation (google-research/simclr).
"""

import jax
import jax.numpy as jnp
import optax

from sslx.config import validation as config_validation
from sslx import models
from sslx.methods import base


def nt_xent(z1: jax.Array, z2: jax.Array, temperature: float) -> tuple[jax.Array, jax.Array]:
  """NT-Xent over the 2N projections [z1; z2] (z1[i] and z2[i] are positives).

  Returns the mean loss over the 2N anchors and the fraction of anchors whose
  most similar other projection is their positive.
  """
  n = z1.shape[0]
  z = base.l2_normalize(jnp.concatenate([z1, z2], axis=0))
  logits = z @ z.T / temperature  # [2N, 2N]
  # An anchor is never its own negative: exp(-inf) = 0 removes k = i from the sum.
  logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)
  positive = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, positive)
  accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == positive)
  return jnp.mean(loss), accuracy


class Method(base.SSLMethod):
  """SimCLR on the generic trainer."""

  view_groups = ("v1", "v2")

  @classmethod
  def config_problems(cls, config):
    return super().config_problems(config) + config_validation.check_fields(config.simclr, {
        "temperature": config_validation.POSITIVE,
        "projector_dim": config_validation.POSITIVE_INT,
        "projector_last_bn": config_validation.BOOL,
        "color_jitter_strength": config_validation.NON_NEGATIVE,
    }, prefix="simclr.")

  def __init__(self, config, **kwargs):
    super().__init__(config, **kwargs)
    c = config.simclr
    self.projector = models.MLP(hidden_dims=tuple(c.projector_hidden_dims),
                                out_dim=c.projector_dim, last_bn=c.projector_last_bn,
                                dtype=self.dtype)

  def init(self, rng, images):
    k_enc, k_proj = jax.random.split(rng)
    params, batch_stats = {}, {}
    params["encoder"], batch_stats["encoder"], x = self.init_encoder(k_enc, images)
    params["projector"], batch_stats["projector"] = self.init_module(self.projector, k_proj, x)
    return params, batch_stats, {}

  def loss(self, params, batch_stats, method_state, batch, rngs, step):
    del step  # SimCLR samples nothing itself: its randomness is the views'.
    view1, view2 = self.view(batch, "v1"), self.view(batch, "v2")
    n = view1.shape[0]
    x = jnp.concatenate([view1, view2], axis=0)
    features, bs_enc = self.encode(params["encoder"], batch_stats["encoder"], x,
                                   rngs.modules("encoder/both_views"))
    z, bs_proj = self.apply_train(self.projector, params["projector"], batch_stats["projector"],
                                  features)
    loss, accuracy = nt_xent(z[:n], z[n:], self.config.simclr.temperature)
    return loss, base.LossOutput(
        batch_stats={"encoder": bs_enc, "projector": bs_proj}, method_state=method_state,
        features=features[:n], embeddings=z[:n], metrics={"contrastive_accuracy": accuracy})
