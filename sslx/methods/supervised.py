"""The supervised reference: the same encoder trained with labels and cross-entropy.

Every table of self-supervised transfer has a row "ImageNet labels": the
encoder trained with the labels of the pretraining data, transferred with
the same protocols. Here it is one more method on the generic trainer, so
its checkpoint is read by every evaluator like any other.

Loss: softmax cross-entropy of a linear classifier on the pooled features
(`supervised.label_smoothing` optional), on the views of config.views.v1
(crops and flips: the standard supervised augmentation). Every pretraining
image must carry a label.
"""

import jax
import jax.numpy as jnp
import optax

from sslx import errors
from sslx import models
from sslx.config import validation as config_validation
from sslx.methods import base


class Method(base.SSLMethod):
  """Supervised training on the pretraining split's labels."""

  view_groups = ("v1",)

  @classmethod
  def config_problems(cls, config):
    return super().config_problems(config) + config_validation.check_fields(
        config.supervised, {"label_smoothing": config_validation.UNIT_INTERVAL},
        prefix="supervised.")

  def __init__(self, config, **kwargs):
    super().__init__(config, **kwargs)
    self.num_classes = self.dataset_field("num_classes")
    if self.dataset.pretrain_split != self.dataset.train_split:
      raise errors.ConfigError(
          f"config.method='supervised' trains on labels, but {self.dataset.name}'s pretraining "
          f"split {self.dataset.pretrain_split!r} is not its labelled split "
          f"{self.dataset.train_split!r} (it holds unlabelled images).")
    self.head = models.MLP(hidden_dims=tuple(config.supervised.head_hidden_dims),
                           out_dim=self.num_classes, dtype=self.dtype)

  def init(self, rng, images):
    return *self.init_encoder_and_head(rng, images, self.head), {}

  def loss(self, params, batch_stats, method_state, batch, rngs, step):
    del step
    features, logits, new_stats = self.classify(params, batch_stats, self.head,
                                                self.view(batch, "v1"), rngs.modules("encoder"))
    labels = batch["label"]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, self.num_classes),
                                  self.config.supervised.label_smoothing)
    loss = jnp.mean(optax.softmax_cross_entropy(logits, targets))
    return loss, base.LossOutput(
        batch_stats=new_stats, method_state=method_state, features=features,
        embeddings=features,
        metrics={"train_accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)})
