"""Exemplar CNN (Dosovitskiy, Springenberg, Riedmiller & Brox, 2014, arXiv:1406.6909).

Every training image is a class of its own ("surrogate class"), made of all
the images heavy augmentation can turn it into: translation and scale (the
random resized crop of config.views.v1), rotation (here, on device, by up to
`exemplar.max_rotation_degrees`; the paper: +-20 degrees), colour and
contrast (the view's colour jitter). A classifier over the surrogate classes
must then be invariant to those transformations yet tell the images apart,
which is the representation the method wants.

The classifier has one weight vector per class, so its size grows with the
dataset: the paper used 8,000-32,000 classes (images) of STL-10's unlabelled
set. `exemplar.num_classes` caps it: the images whose `index` is below the
cap are the classes, the others are left out of the loss (None: every
training image, which suits the small presets).
"""

import jax
import jax.numpy as jnp
import dm_pix
import optax

from sslx import models
from sslx.config import validation as config_validation
from sslx.methods import base


def rotate(rng: jax.Array, images: jax.Array, max_degrees: float) -> jax.Array:
  """Each image [B, H, W, C] rotated about its centre by a uniform angle in [-max, max] degrees."""
  if max_degrees <= 0:
    return images
  angles = jax.random.uniform(rng, (images.shape[0],), jnp.float32, -1.0, 1.0)
  angles = angles * jnp.deg2rad(max_degrees)
  return jax.vmap(lambda x, a: dm_pix.rotate(x, a, order=1, mode="nearest"))(images, angles)


class Method(base.SSLMethod):
  """Exemplar CNN on the generic trainer."""

  view_groups = ("v1",)

  @classmethod
  def config_problems(cls, config):
    c = config.exemplar
    problems = super().config_problems(config) + config_validation.check_fields(c, {
        "max_rotation_degrees": config_validation.NON_NEGATIVE,
    }, prefix="exemplar.")
    if c.get("num_classes") is not None and not config_validation.POSITIVE_INT[0](c.num_classes):
      problems.append(f"config.exemplar.num_classes={c.num_classes!r}; it must be an integer "
                      "> 0, or None for one class per training image.")
    return problems

  def __init__(self, config, **kwargs):
    super().__init__(config, **kwargs)
    size = self.dataset_field("num_train_examples")
    self.num_classes = min(config.exemplar.num_classes or size, size)
    self.head = models.MLP(hidden_dims=tuple(config.exemplar.head_hidden_dims),
                           out_dim=self.num_classes, dtype=self.dtype)

  def init(self, rng, images):
    return *self.init_encoder_and_head(rng, images, self.head), {}

  def loss(self, params, batch_stats, method_state, batch, rngs, step):
    del step
    view = rotate(rngs.method("exemplar/rotation"), self.view(batch, "v1"),
                  self.config.exemplar.max_rotation_degrees)
    features, logits, new_stats = self.classify(params, batch_stats, self.head, view,
                                                rngs.modules("encoder"))
    index = batch["index"]
    member = index < self.num_classes  # images beyond the cap are not classes
    ce = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.where(member, index, 0))
    count = jnp.maximum(jnp.sum(member), 1)
    loss = jnp.sum(jnp.where(member, ce, 0.0)) / count
    accuracy = jnp.sum(member & (jnp.argmax(logits, -1) == index)) / count
    return loss, base.LossOutput(batch_stats=new_stats, method_state=method_state,
                                 features=features, embeddings=features,
                                 metrics={"exemplar_accuracy": accuracy})
