"""RotNet: predicting image rotations (Gidaris, Singh & Komodakis, 2018, arXiv:1803.07728).

Every image is rotated by 0, 90, 180 and 270 degrees, and a 4-way classifier
on the encoder's representation predicts which rotation it sees. Recognising
the rotation of an object requires recognising the object (where its top is,
how it usually stands), so the encoder has to learn about object shape and
pose. The paper feeds all four rotated copies of an image in the same batch
(Sec. 2.2, "a significant improvement"), as done here: one forward pass over
the 4N rotated images, BN over all of them.

Loss (paper eq. 2): mean over images and rotations y in {0, 1, 2, 3} of
    -log F^y(rot(X, y) | theta),
the softmax probability the network gives to the true rotation.

Augmentation: the rotation is the pretext task; beyond it only random crops
and flips (the paper's setting), set by configs/rotnet.py as one view.

Head: a linear classifier on the pooled representation by default, the
setting Kolesnikov, Zhai & Beyer (2019, "Revisiting self-supervised visual
representation learning") use for ResNets; `rotnet.head_hidden_dims` adds
hidden layers. The head is not part of the encoder and is dropped at
transfer time like every method's heads.
"""

import jax
import jax.numpy as jnp
import optax

from sslx import errors
from sslx import models
from sslx.methods import base

NUM_ROTATIONS = 4


def rotate_batch(images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """[N, H, W, C] -> the 4N images rotated by 0, 90, 180, 270 degrees counter-clockwise,
  grouped by rotation ([all at 0; all at 90; ...]), and their labels 0..3 [4N]."""
  if images.shape[1] != images.shape[2]:
    raise errors.ConfigError(
        f"RotNet needs square images to rotate them within the batch; got "
        f"{images.shape[1]}x{images.shape[2]}.")
  rotated = [jnp.rot90(images, k, axes=(1, 2)) for k in range(NUM_ROTATIONS)]
  labels = jnp.repeat(jnp.arange(NUM_ROTATIONS, dtype=jnp.int32), images.shape[0])
  return jnp.concatenate(rotated, axis=0), labels


class Method(base.SSLMethod):
  """RotNet on the generic trainer."""

  view_groups = ("v1",)

  def __init__(self, config, **kwargs):
    super().__init__(config, **kwargs)
    self.head = models.MLP(hidden_dims=tuple(config.rotnet.head_hidden_dims),
                           out_dim=NUM_ROTATIONS, dtype=self.dtype)

  def init(self, rng, images):
    return *self.init_encoder_and_head(rng, images, self.head), {}

  def loss(self, params, batch_stats, method_state, batch, rngs, step):
    del step
    view = self.view(batch, "v1")
    n = view.shape[0]
    x, labels = rotate_batch(view)
    features, logits, new_stats = self.classify(params, batch_stats, self.head, x,
                                                rngs.modules("encoder"))
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
    # The unrotated copies (the first N) feed the online probe and monitoring.
    return loss, base.LossOutput(
        batch_stats=new_stats, method_state=method_state, features=features[:n],
        embeddings=features[:n], metrics={"rotation_accuracy": accuracy})
