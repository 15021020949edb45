"""Instance discrimination with a memory bank (NPID; Wu, Xiong, Yu & Lin, 2018, arXiv:1805.01978).

Each training image is its own class, but instead of a weight vector per
class (exemplar CNN) the class of image i is represented by a stored feature
m_i of that image (sslx/methods/memory_bank.py). An image's L2-normalised
embedding v = normalise(W f(x)) gets the non-parametric softmax (eq. 2)
    P(i | v) = exp(m_i . v / T) / Z,    Z = sum_j exp(m_j . v / T),
and the loss is -log P(i | v) for the image's own i: the full softmax over
the whole bank (`loss='softmax'`, exact; N x D per image) or, as the paper
does at ImageNet scale, noise-contrastive estimation (`loss='nce'`, eq. 5-7)
with m negatives drawn uniformly, P_n = 1/N:
    h(i, v) = P(i|v) / (P(i|v) + m P_n),
    J = -E[log h(i, v)] - m E_{j ~ P_n}[log(1 - h(j, v))],
where Z is treated as a constant: estimated once, on the first step, as N
times the mean of exp(m_j . v / T) over the sampled entries (eq. 8 and the
authors' code), then kept in the method state.
After the loss, the bank rows of the batch are refreshed with momentum 0.5
from the batch's (stop-gradient) embeddings.

Gradients: through v only; the bank is data.
"""

import jax
import jax.numpy as jnp
import optax

from sslx import models
from sslx.config import validation as config_validation
from sslx.methods import base
from sslx.methods import memory_bank

LOSSES = ("softmax", "nce")


def softmax_loss(v: jax.Array, bank: jax.Array, index: jax.Array, temperature: float):
  """Full non-parametric softmax: mean -log P(index | v) over the batch, and top-1 accuracy."""
  logits = base.l2_normalize(v) @ bank.T / temperature  # [B, N]
  loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, index))
  return loss, jnp.mean(jnp.argmax(logits, -1) == index)


def nce_loss(v: jax.Array, bank: jax.Array, index: jax.Array, negatives: jax.Array,
             temperature: float, z: jax.Array):
  """NCE with the negatives' bank rows `negatives` [B, m]; Z given. Returns (loss, P_pos mean)."""
  v = base.l2_normalize(v)
  m = negatives.shape[1]
  noise = m / bank.shape[0]  # m * P_n
  p_pos = jnp.exp(jnp.sum(v * bank[index], -1) / temperature) / z  # [B]
  p_neg = jnp.exp(jnp.einsum("bd,bmd->bm", v, bank[negatives]) / temperature) / z  # [B, m]
  log_h_pos = jnp.log(p_pos / (p_pos + noise))
  log_not_h_neg = jnp.log(noise / (p_neg + noise))
  loss = -jnp.mean(log_h_pos + jnp.sum(log_not_h_neg, axis=-1))
  return loss, jnp.mean(p_pos)


def estimate_z(v, bank, index, negatives, temperature):
  """Z ~ N * mean of exp(m_j . v / T) over the sampled rows (the positive and the negatives)."""
  v = base.l2_normalize(v)
  rows = jnp.concatenate([index[:, None], negatives], axis=1)
  scores = jnp.exp(jnp.einsum("bd,bmd->bm", v, bank[rows]) / temperature)
  return bank.shape[0] * jnp.mean(scores)


class Method(base.SSLMethod):
  """NPID on the generic trainer."""

  view_groups = ("v1",)

  @classmethod
  def config_problems(cls, config):
    return super().config_problems(config) + config_validation.check_fields(
        config.instance_discrimination, {
            "dim": config_validation.POSITIVE_INT,
            "temperature": config_validation.POSITIVE,
            "bank_momentum": config_validation.MOMENTUM,
            "loss": config_validation.one_of(*LOSSES),
            "num_negatives": config_validation.POSITIVE_INT,
        }, prefix="instance_discrimination.")

  def __init__(self, config, **kwargs):
    super().__init__(config, **kwargs)
    c = config.instance_discrimination
    # NPID: a linear layer from the pooled features to the 128-d embedding.
    self.head = models.MLP(hidden_dims=tuple(c.head_hidden_dims), out_dim=c.dim,
                           dtype=self.dtype)

  def init(self, rng, images):
    k_enc, k_head, k_bank = jax.random.split(rng, 3)
    params, batch_stats = {}, {}
    params["encoder"], batch_stats["encoder"], x = self.init_encoder(k_enc, images)
    params["head"], batch_stats["head"] = self.init_module(self.head, k_head, x)
    size = self.dataset_field("num_train_examples")
    state = {"bank": memory_bank.init_bank(k_bank, size, self.config.instance_discrimination.dim),
             # NCE's normaliser; <= 0 until estimated on the first step.
             "nce_z": jnp.zeros((), jnp.float32)}
    return params, batch_stats, state

  def loss(self, params, batch_stats, method_state, batch, rngs, step):
    del step
    c = self.config.instance_discrimination
    features, v, new_stats = self.classify(params, batch_stats, self.head, self.view(batch, "v1"),
                                           rngs.modules("encoder"))
    bank, index = method_state["bank"], batch["index"]
    new_state = dict(method_state)
    if c.loss == "softmax":
      loss, accuracy = softmax_loss(v, bank, index, c.temperature)
      metrics = {"instance_accuracy": accuracy}
    else:
      negatives = jax.random.randint(rngs.method("instance_discrimination/negatives"),
                                     (v.shape[0], c.num_negatives), 0, bank.shape[0])
      z = jnp.where(method_state["nce_z"] > 0, method_state["nce_z"],
                    jax.lax.stop_gradient(estimate_z(v, bank, index, negatives, c.temperature)))
      loss, p_pos = nce_loss(v, bank, index, negatives, c.temperature, z)
      new_state["nce_z"] = z
      metrics = {"positive_probability": p_pos}
    new_state["bank"] = memory_bank.momentum_update(bank, index, v, c.bank_momentum)
    return loss, base.LossOutput(batch_stats=new_stats, method_state=new_state,
                                 features=features, embeddings=v, metrics=metrics)
