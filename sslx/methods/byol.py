"""BYOL: Bootstrap Your Own Latent (Grill et al., 2020, arXiv:2006.07733).

An online network (encoder, projector, predictor) learns to predict, for one
view of an image, the target network's projection of another view. The target
(encoder, projector) receives no gradient; it is an exponential moving average
of the online weights with rate tau_k = 1 - (1 - tau_base)(cos(pi k/K) + 1)/2.

Loss (paper eq. 2): for each image, with q = predictor output of the online
network on one view and z' = target projection of the other view,
    L = ||q/|q| - z'/|z'|||^2 = 2 - 2 cos(q, z'),
symmetrised over the two orderings of the views and averaged over the batch.

Target BatchNorm: the target network runs in training mode, normalising with
the statistics of the batch it sees (as the reference implementation does);
its running averages are its own, kept in the method state, and are only
used if someone evaluates the target network.
"""

import jax
import jax.numpy as jnp
import optax

from sslx.config import validation as config_validation
from sslx import models
from sslx.core import schedules
from sslx.methods import base


TARGET_NETWORKS = ("encoder", "projector")


def regression_loss(prediction: jax.Array, target: jax.Array) -> jax.Array:
  """Per-example 2 - 2 cos(prediction, target), computed in float32."""
  p, t = base.l2_normalize(prediction), base.l2_normalize(target)
  return 2.0 - 2.0 * jnp.sum(p * t, axis=-1)


class Method(base.SSLMethod):
  """BYOL on the generic trainer."""

  view_groups = ("v1", "v2")

  @classmethod
  def config_problems(cls, config):
    return super().config_problems(config) + config_validation.check_fields(config.byol, {
        "projector_hidden_dim": config_validation.POSITIVE_INT,
        "projector_dim": config_validation.POSITIVE_INT,
        "predictor_hidden_dim": config_validation.POSITIVE_INT,
        "tau_base": config_validation.UNIT_INTERVAL,
        "predictor_learning_rate_multiplier": config_validation.POSITIVE,
    }, prefix="byol.")

  def __init__(self, config, **kwargs):
    super().__init__(config, **kwargs)
    c = config.byol
    self.projector = models.MLP(hidden_dims=(c.projector_hidden_dim,),
                                out_dim=c.projector_dim, dtype=self.dtype)
    self.predictor = models.MLP(hidden_dims=(c.predictor_hidden_dim,),
                                out_dim=c.projector_dim, dtype=self.dtype)

  def init(self, rng, images):
    k_enc, k_proj, k_pred = jax.random.split(rng, 3)
    params, batch_stats = {}, {}
    params["encoder"], batch_stats["encoder"], x = self.init_encoder(k_enc, images)
    params["projector"], batch_stats["projector"] = self.init_module(self.projector, k_proj, x)
    z = jnp.zeros((x.shape[0], self.config.byol.projector_dim), jnp.float32)
    params["predictor"], batch_stats["predictor"] = self.init_module(self.predictor, k_pred, z)
    # The target starts as an exact copy of the online encoder and projector.
    method_state = {"target_params": self.copy_of(params, TARGET_NETWORKS),
                    "target_batch_stats": self.copy_of(batch_stats, TARGET_NETWORKS)}
    return params, batch_stats, method_state

  def _online(self, params, batch_stats, x, rngs):
    features, bs_enc = self.encode(params["encoder"], batch_stats["encoder"], x, rngs)
    projection, bs_proj = self.apply_train(self.projector, params["projector"],
                                           batch_stats["projector"], features)
    prediction, bs_pred = self.apply_train(self.predictor, params["predictor"],
                                           batch_stats["predictor"], projection)
    new_stats = {"encoder": bs_enc, "projector": bs_proj, "predictor": bs_pred}
    return features, projection, prediction, new_stats

  def _target(self, params, batch_stats, x, rngs):
    features, bs_enc = self.encode(params["encoder"], batch_stats["encoder"], x, rngs)
    projection, bs_proj = self.apply_train(self.projector, params["projector"],
                                           batch_stats["projector"], features)
    return projection, {"encoder": bs_enc, "projector": bs_proj}

  def loss(self, params, batch_stats, method_state, batch, rngs, step):
    del step  # BYOL samples nothing itself: its randomness is the views'.
    view1, view2 = self.view(batch, "v1"), self.view(batch, "v2")
    # Each view is a separate forward pass, so BN normalises each view with its
    # own batch statistics, as in the reference implementation.
    feat1, proj1, pred1, stats = self._online(params, batch_stats, view1,
                                              rngs.modules("online/v1"))
    _, _, pred2, stats = self._online(params, stats, view2, rngs.modules("online/v2"))

    target_params = jax.lax.stop_gradient(method_state["target_params"])
    target_z1, t_stats = self._target(target_params, method_state["target_batch_stats"], view1,
                                      rngs.modules("target/v1"))
    target_z2, t_stats = self._target(target_params, t_stats, view2, rngs.modules("target/v2"))
    target_z1 = jax.lax.stop_gradient(target_z1)
    target_z2 = jax.lax.stop_gradient(target_z2)

    per_example = regression_loss(pred1, target_z2) + regression_loss(pred2, target_z1)
    loss = jnp.mean(per_example)
    new_state = dict(method_state, target_batch_stats=t_stats)
    metrics = {"byol_cosine": 1.0 - jnp.mean(per_example) / 4.0}
    return loss, base.LossOutput(batch_stats=stats, method_state=new_state, features=feat1,
                                 embeddings=proj1, metrics=metrics)

  def param_groups(self):
    # A predictor that adapts faster than the encoder keeps BYOL away from
    # (dimensional) collapse (Tian et al., 2021, DirectPred, Sec. 5; SimSiam
    # keeps its predictor's rate fixed for the same reason).
    multiplier = self.config.byol.predictor_learning_rate_multiplier
    return {} if multiplier == 1.0 else {"predictor": base.ParamGroup(multiplier)}

  def param_group(self, path):
    return "predictor" if path[0] == "predictor" else None

  def ema_rate(self, step):
    return schedules.cosine_ema_rate(step, self.config.train_steps, self.config.byol.tau_base)

  def post_step(self, params, method_state, step):
    tau = self.ema_rate(step)
    online = {k: params[k] for k in TARGET_NETWORKS}
    target = optax.incremental_update(online, method_state["target_params"], 1.0 - tau)
    return dict(method_state, target_params=target)
