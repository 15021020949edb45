"""Optimizers and learning-rate schedules for pretraining.

The trainable parameters are a dict with two parts: `model` (everything the
method trains: encoder and heads) and `probe` (the online linear classifier).
They get separate optimizers, so the probe's learning rate and the absence of
weight decay on it never interact with the method's recipe.
"""

import jax
import ml_collections
import optax

from sslx import errors

OPTIMIZERS = ("lars", "sgd", "adamw")


def scaled_learning_rate(opt_config: ml_collections.ConfigDict, batch_size: int) -> float:
  """Linear scaling rule (Goyal et al., 2017): base rate x batch / 256."""
  return opt_config.base_learning_rate * batch_size / 256


def warmup_steps(opt_config: ml_collections.ConfigDict, steps_per_epoch: float) -> int:
  return int(round(opt_config.warmup_epochs * steps_per_epoch))


def warmup_cosine_schedule(peak: float, *, warmup_steps: int, train_steps: int,
                           min_ratio: float = 0.0) -> optax.Schedule:
  """Linear warmup from 0 over `warmup_steps`, then cosine decay to `min_ratio` x peak."""
  if warmup_steps == 0:  # (optax's warmup schedule would log a warning for a 0-step warmup)
    return optax.cosine_decay_schedule(init_value=peak, decay_steps=train_steps, alpha=min_ratio)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup_steps,
      decay_steps=train_steps, end_value=peak * min_ratio)


def learning_rate_schedule(opt_config: ml_collections.ConfigDict, *, batch_size: int,
                           train_steps: int, steps_per_epoch: float) -> optax.Schedule:
  """Linear warmup from 0, then cosine decay to `min_learning_rate_ratio` x peak."""
  return warmup_cosine_schedule(
      scaled_learning_rate(opt_config, batch_size),
      warmup_steps=warmup_steps(opt_config, steps_per_epoch), train_steps=train_steps,
      min_ratio=opt_config.min_learning_rate_ratio)


def kernels_only(params):
  """Mask that is True for weight matrices and conv kernels.

  Biases and normalisation scales/offsets (every parameter of rank <= 1) are
  excluded from weight decay and from the LARS trust-ratio adaptation, as in
  BYOL (Grill et al., 2020, Appendix C) and SimCLR (Chen et al., 2020).
  """
  return jax.tree.map(lambda p: p.ndim > 1, params)


def _method_optimizer(opt_config, schedule) -> optax.GradientTransformation:
  name = opt_config.name
  if name == "lars":
    return optax.lars(
        learning_rate=schedule, weight_decay=opt_config.weight_decay,
        weight_decay_mask=kernels_only, trust_coefficient=opt_config.trust_coefficient,
        trust_ratio_mask=kernels_only, momentum=opt_config.momentum)
  if name == "sgd":
    return optax.chain(
        optax.add_decayed_weights(opt_config.weight_decay, mask=kernels_only),
        optax.sgd(schedule, momentum=opt_config.momentum, nesterov=True))
  if name == "adamw":
    return optax.adamw(schedule, weight_decay=opt_config.weight_decay, mask=kernels_only)
  raise errors.ConfigError(
      f"Unknown optimizer {name!r} (config.optimizer.name); valid: {', '.join(OPTIMIZERS)}.")


def create_optimizer(config: ml_collections.ConfigDict, *, steps_per_epoch: float):
  """Returns (optimizer over {'model', 'probe'}, learning-rate schedule of the model part)."""
  schedule = learning_rate_schedule(
      config.optimizer, batch_size=config.batch_size, train_steps=config.train_steps,
      steps_per_epoch=steps_per_epoch)
  probe_schedule = optax.cosine_decay_schedule(config.probe.learning_rate, config.train_steps)
  tx = optax.multi_transform(
      {"model": _method_optimizer(config.optimizer, schedule),
       "probe": optax.sgd(probe_schedule, momentum=config.probe.momentum)},
      param_labels={"model": "model", "probe": "probe"})
  return tx, schedule
