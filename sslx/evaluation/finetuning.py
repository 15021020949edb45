"""Supervised training of an encoder and a linear head: fine-tuning's step, head and optimizer.

The fine-tuning job (sslx/jobs/finetune.py) and the few-label table's
from-scratch baseline (sslx/evaluation/few_label.py) train with these, on the
one training loop (sslx/core/loop.py).

The encoder plus a new linear head (after a parameter-free BatchNorm of the
features, `ClassifierHead`) is trained with SGD and Nesterov momentum on
random crops and flips (SimCLR Appendix B.5): warmup (optional) then cosine
decay. The encoder's learning rate is a ratio of the head's, and the first
layer groups can be frozen: they get no updates (not even weight decay) and
run in inference mode, so their BatchNorm statistics stay those of
pretraining. BatchNorm of the trained layers uses the global batch's
statistics (the step is jitted over the device mesh like pretraining).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from sslx import models
from sslx.core import optim
from sslx.core.train_state import TrainState, guarded_update
from sslx.data import augment
from sslx.data.info import Preprocessing

HEAD_ONLY = "head"


def train_from_choices(backbone: models.Backbone) -> tuple[str, ...]:
  """Valid `finetune.train_from` values: the backbone's layer groups, then 'head'."""
  return (*backbone.layer_groups, HEAD_ONLY)


def param_labels(params, frozen_groups: int, backbone: models.Backbone):
  """'head', 'encoder' or 'frozen' for every parameter leaf (optax.multi_transform labels)."""
  def label(path, _):
    if path[0].key == "head":
      return "head"
    keys = [str(getattr(k, "key", k)) for k in path[1:]]
    group = backbone.layer_groups.index(backbone.layer_group(keys))
    return "frozen" if group < frozen_groups else "encoder"
  return jax.tree.map_with_path(label, params)


def create_optimizer(params, *, backbone: models.Backbone, frozen_groups: int, peak_lr: float,
                     backbone_lr_ratio: float, weight_decay: float, momentum: float,
                     warmup_steps: int, train_steps: int):
  """SGD + Nesterov for the head and the trained encoder layers; frozen layers never change."""
  def sgd(scale):
    schedule = optim.warmup_cosine_schedule(peak_lr * scale, warmup_steps=warmup_steps,
                                            train_steps=train_steps)
    # Weight decay on kernels only, as in pretraining (optim.kernels_only).
    return optax.chain(optax.add_decayed_weights(weight_decay, mask=optim.kernels_only),
                       optax.sgd(schedule, momentum=momentum, nesterov=True))
  return optax.multi_transform(
      {"head": sgd(1.0), "encoder": sgd(backbone_lr_ratio), "frozen": optax.set_to_zero()},
      param_labels(params, frozen_groups, backbone))


class ClassifierHead(nn.Module):
  """BatchNorm without scale or offset, then a linear layer.

  The normalisation puts every encoder's features on one scale, so one head
  learning rate suits pretrained, random and from-scratch encoders alike (the
  linear probes standardise their features for the same reason; MAE's linear
  probe uses the same parameter-free BatchNorm). It adds no parameters.
  """
  num_classes: int

  @nn.compact
  def __call__(self, features, train: bool):
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     use_scale=False, use_bias=False, name="feature_norm")(features)
    return nn.Dense(self.num_classes, name="out")(x)


def init_head(head: ClassifierHead, key, feature_dim: int):
  variables = head.init(key, jnp.zeros((1, feature_dim)), train=False)
  return variables["params"], variables["batch_stats"]


def make_train_step(encoder, head, tx, preprocessing: Preprocessing, dtype,
                    nonfinite_action: str = "stop"):
  """(TrainState, batch {'views': {'v1': uint8 [B, 1, S, S, 3]}, 'label'}) -> (state, metrics).

  The state's params and batch_stats are {'encoder', 'head'}; images are
  normalised with the encoder's preprocessing.
  """
  mean, std = preprocessing.mean, preprocessing.std

  def train_step(state: TrainState, batch):
    images, labels = batch["views"]["v1"], batch["label"]
    x = augment.normalize(augment.to_float01(images[:, 0]), mean, std, dtype)
    module_rngs = state.step_rngs().modules("finetune/encoder")

    def loss_fn(params):
      out, enc_updates = encoder.apply(
          {"params": params["encoder"], "batch_stats": state.batch_stats["encoder"]}, x,
          train=True, mutable=["batch_stats"], rngs=module_rngs)
      logits, head_updates = head.apply(
          {"params": params["head"], "batch_stats": state.batch_stats["head"]}, out.pooled,
          train=True, mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      batch_stats = {"encoder": enc_updates["batch_stats"], "head": head_updates["batch_stats"]}
      return loss, (batch_stats, jnp.mean(jnp.argmax(logits, -1) == labels))

    (loss, (batch_stats, accuracy)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                        batch_stats=batch_stats, opt_state=opt_state)
    new, flags = guarded_update(state, new, loss, grads, nonfinite_action)
    return new, {"loss": loss, "train_accuracy": accuracy,
                 "grad_norm": optax.global_norm(grads), **flags}
  return train_step
