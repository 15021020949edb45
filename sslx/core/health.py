"""Is the run healthy? Divergence (non-finite loss or gradient) and collapse.

Device side (inside the jitted step): `all_finite`, `embedding_std` and
`effective_rank`. Host side: `NonFiniteWatch` turns the step's flags into a
stop with a message naming the step and the quantity (or counts skipped
updates), and `CollapseWatch` warns when the embeddings lose their spread or
their rank.
"""

import math

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from sslx import errors
from sslx.core.numerics import l2_normalize


class NonFiniteError(errors.SslxError):
  """The loss or a gradient became NaN or infinite."""


def all_finite(*trees) -> jax.Array:
  """True iff every element of every array in `trees` is finite (a scalar bool)."""
  leaves = [x for t in trees for x in jax.tree.leaves(t)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def embedding_std(embeddings: jax.Array) -> jax.Array:
  """Std over the batch of L2-normalised embeddings, averaged over dimensions.

  A collapsed representation gives 0; an isotropic one about 1/sqrt(dim)
  (Chen & He, 2021, "Exploring Simple Siamese Representation Learning", Sec. 4.1).
  """
  z = l2_normalize(embeddings)
  return jnp.mean(jnp.std(z, axis=0))


def effective_rank(embeddings: jax.Array, eps: float = 1e-7) -> jax.Array:
  """RankMe (Garrido et al., 2023, eq. 1): exp of the entropy of the normalised singular values.

  p_k = sigma_k / ||sigma||_1 + eps over the singular values of the [N, D]
  embedding matrix; the result lies in [1, min(N, D)]: 1 when every embedding
  points the same way (complete collapse), min(N, D) when all directions are
  used equally. A direct SVD, not the square roots of the Gram matrix's
  eigenvalues: in float32 those turn rounding noise into ~1e-3 sigma_max
  singular values, which put a collapsed batch's rank at 1.01+ instead of 1.
  """
  sigma = jnp.linalg.svd(embeddings.astype(jnp.float32), compute_uv=False)
  p = sigma / jnp.maximum(jnp.sum(sigma), 1e-30) + eps
  return jnp.exp(-jnp.sum(p * jnp.log(p)))


def nonfinite_message(step: int, values: dict[str, float], latest: str | None,
                      update_finite: bool = False) -> str:
  """Names what went non-finite first: the method's loss, the probe's loss, a gradient, or
  (with finite loss and gradients, `update_finite`) the new parameters or state."""
  order = [("loss", "loss"), ("probe_loss", "online-probe loss"),
           ("grad_norm", "gradient of the method's parameters"),
           ("probe_grad_norm", "gradient of the online probe")]
  bad = [name for key, name in order if key in values and not math.isfinite(values[key])]
  what = (bad[0] if bad else
          "new parameters or state (BatchNorm statistics, EMA target, queue, memory bank)"
          if update_finite else "update (a gradient entry)")
  shown = ", ".join(f"{k}={values[k]:.4g}" for k, _ in order if k in values)
  where = (f"The newest checkpoint, {latest}, is from before it." if latest else
           "No checkpoint was saved before it.")
  return (f"Non-finite {what} at step {step} ({shown}); stopped without saving this state. "
          f"{where} Rerun to resume from there, lower the learning rate, or rerun with "
          "--config.nonfinite.action=skip to drop non-finite updates and count them.")


class NonFiniteWatch:
  """Host-side reaction to the step's `finite` flag, per `config.nonfinite`.

  'stop': raises NonFiniteError at the first non-finite step. 'skip': the
  step itself dropped the update; this logs it and raises once more than
  `max_skipped` updates have been dropped in the run.
  """

  def __init__(self, nonfinite_config, latest_checkpoint):
    self.action = nonfinite_config.action
    self.max_skipped = nonfinite_config.max_skipped
    self._latest_checkpoint = latest_checkpoint  # callable -> str | None
    self._skipped = None

  def check(self, step: int, metrics: dict) -> None:
    """`metrics` of update `step` (1-based), with 'finite' and 'skipped_updates' on device."""
    finite, skipped = jax.device_get((metrics["finite"], metrics["skipped_updates"]))
    if bool(finite):
      self._skipped = int(skipped)
      return
    values = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()
              if k in ("loss", "probe_loss", "grad_norm", "probe_grad_norm")}
    update_finite = bool(jax.device_get(metrics.get("finite_update", False)))
    if self.action == "stop":
      raise NonFiniteError(nonfinite_message(step, values, self._latest_checkpoint(),
                                             update_finite))
    skipped = int(skipped)
    if skipped == self._skipped:
      return  # this step was already reported
    self._skipped = skipped
    logging.warning("Skipped the non-finite update of step %d (%s); %d skipped so far.", step,
                    ", ".join(f"{k}={v:.4g}" for k, v in values.items()), skipped)
    if skipped > self.max_skipped:
      raise NonFiniteError(
          f"{skipped} non-finite updates skipped by step {step}, more than "
          f"config.nonfinite.max_skipped={self.max_skipped}: the run is diverging. The newest "
          f"checkpoint is {self._latest_checkpoint()}; lower the learning rate and rerun.")


class CollapseWatch:
  """Warns when the logged embedding std or effective rank fall below their thresholds.

  The std threshold is a fraction of 1/sqrt(dim), the value of isotropic
  embeddings. One warning per episode: it warns again only after recovering.
  """

  def __init__(self, collapse_config, embedding_dim: int):
    self.min_std = collapse_config.min_std_fraction / math.sqrt(embedding_dim)
    self.min_rank = collapse_config.min_effective_rank
    self.embedding_dim = embedding_dim
    self._warned = False

  def check(self, step: int, scalars: dict[str, float]) -> str | None:
    """Returns (and logs) the warning for these logged scalars, if one is due."""
    std, rank = scalars.get("embedding_std"), scalars.get("effective_rank")
    low = []
    if std is not None and std < self.min_std:
      low.append(f"embedding_std {std:.3g} < {self.min_std:.3g} (isotropic: "
                 f"{1 / math.sqrt(self.embedding_dim):.3g})")
    if rank is not None and rank < self.min_rank:
      low.append(f"effective_rank {rank:.3g} < {self.min_rank:g} (of at most "
                 f"{self.embedding_dim})")
    if not low:
      self._warned = False
      return None
    if self._warned:
      return None
    self._warned = True
    message = (f"Possible collapse at step {step}: {'; '.join(low)}. The embeddings are "
               "losing their spread; check the learning rate, the EMA/momentum rate and the "
               "augmentations (thresholds: config.collapse).")
    logging.warning("%s", message)
    return message
