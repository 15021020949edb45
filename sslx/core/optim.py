"""Optimizers and learning-rate schedules for pretraining.

The trainable parameters are a dict with two parts: `model` (everything the
method trains: encoder and heads) and `probe` (the online linear classifier).
They get separate optimizers, so the probe's learning rate and the absence of
weight decay on it never interact with the method's recipe. A method may split
its own parameters further into groups (`SSLMethod.param_groups`): each gets
the same optimizer at its own learning-rate multiplier, and may be frozen for
its first steps.

Optimizers are chosen by name from `OPTIMIZERS` (`config.optimizer.name`);
each entry is a function (optimizer config, schedule) -> optax transformation.
"""

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import optax

from sslx.registry import Registry

OPTIMIZERS = Registry("optimizer", "config.optimizer.name", {
    "lars": "sslx.core.optim:lars",
    "sgd": "sslx.core.optim:sgd",
    "adamw": "sslx.core.optim:adamw",
})
# A run shorter than its configured warmup warms up for this fraction of it.
SHORT_RUN_WARMUP_FRACTION = 0.1


def scaled_learning_rate(opt_config: ml_collections.ConfigDict, batch_size: int) -> float:
  """Linear scaling rule (Goyal et al., 2017): base rate x batch / 256."""
  return opt_config.base_learning_rate * batch_size / 256


def configured_warmup_steps(warmup_epochs: float, steps_per_epoch: float) -> int:
  return int(round(warmup_epochs * steps_per_epoch))


def fit_warmup(warmup: int, train_steps: int, field: str) -> tuple[int, str | None]:
  """(warmup steps to use, a note or None): a warmup as long as the run is shortened.

  A smoke run (`--config.train_steps=20`) of a recipe with a 10-epoch warmup
  would otherwise never leave warmup; it warms up for
  SHORT_RUN_WARMUP_FRACTION of the run instead, and says so.
  """
  if warmup < train_steps:
    return warmup, None
  short = int(train_steps * SHORT_RUN_WARMUP_FRACTION)
  return short, (f"{field} is {warmup} steps, not fewer than the run's {train_steps}: warming "
                 f"up for {short} steps ({SHORT_RUN_WARMUP_FRACTION:.0%} of the run) instead.")


def warmup_steps(opt_config: ml_collections.ConfigDict, steps_per_epoch: float,
                 train_steps: int | None = None) -> int:
  """Warmup steps of the method's optimizer, shortened for runs shorter than it."""
  warmup = configured_warmup_steps(opt_config.warmup_epochs, steps_per_epoch)
  if train_steps is None:
    return warmup
  return fit_warmup(warmup, train_steps,
                    f"config.optimizer.warmup_epochs={opt_config.warmup_epochs}")[0]


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
      warmup_steps=warmup_steps(opt_config, steps_per_epoch, train_steps),
      train_steps=train_steps,
      min_ratio=opt_config.min_learning_rate_ratio)


def kernels_only(params):
  """Mask that is True for weight matrices and conv kernels.

  Biases and normalisation scales/offsets (every parameter of rank <= 1) are
  excluded from weight decay and from the LARS trust-ratio adaptation, as in
  BYOL (Grill et al., 2020, Appendix C) and SimCLR (Chen et al., 2020).
  """
  return jax.tree.map(lambda p: p.ndim > 1, params)


def lars(opt_config, schedule) -> optax.GradientTransformation:
  return optax.lars(
      learning_rate=schedule, weight_decay=opt_config.weight_decay,
      weight_decay_mask=kernels_only, trust_coefficient=opt_config.trust_coefficient,
      trust_ratio_mask=kernels_only, momentum=opt_config.momentum)


def sgd(opt_config, schedule) -> optax.GradientTransformation:
  return optax.chain(
      optax.add_decayed_weights(opt_config.weight_decay, mask=kernels_only),
      optax.sgd(schedule, momentum=opt_config.momentum, nesterov=True))


def adamw(opt_config, schedule) -> optax.GradientTransformation:
  return optax.adamw(schedule, weight_decay=opt_config.weight_decay, mask=kernels_only)


def zero_before(steps: int) -> optax.GradientTransformation:
  """Multiplies its input by 0 for the first `steps` updates, then passes it through."""
  def init(params):
    del params
    return {"count": jnp.zeros((), jnp.int32)}

  def update(updates, state, params=None):
    del params
    keep = (state["count"] >= steps).astype(jnp.float32)
    updates = jax.tree.map(lambda u: (u * keep).astype(u.dtype), updates)
    return updates, {"count": state["count"] + 1}
  return optax.GradientTransformation(init, update)


def _group_optimizer(opt_config, schedule, group) -> optax.GradientTransformation:
  if group.frozen_steps < 0:
    return optax.set_to_zero()
  multiplier = float(group.learning_rate_multiplier)
  tx = OPTIMIZERS.get(opt_config.name)(opt_config, lambda step: schedule(step) * multiplier)
  if group.frozen_steps:
    # Zero the gradients (no momentum builds up) and the updates (no decay).
    tx = optax.chain(zero_before(group.frozen_steps), tx, zero_before(group.frozen_steps))
  return tx


MAIN_GROUP = "main"
MODEL, PROBE = "model", "probe"


def _group_transforms(opt_config, schedule, method, main: str):
  """{label: optax transformation} for the method's main optimizer and its extra groups."""
  groups = method.param_groups() if method is not None else {}
  clash = sorted(set(groups) & {MAIN_GROUP, MODEL, PROBE})
  if clash:
    raise ValueError(f"Method param group names {clash} are reserved; rename them.")
  return groups, {main: OPTIMIZERS.get(opt_config.name)(opt_config, schedule),
                  **{name: _group_optimizer(opt_config, schedule, g)
                     for name, g in groups.items()}}


def _method_labels(params, method, groups, main: str):
  """The label of every leaf of the method's params: its param group, or `main`."""
  def label(path, _):
    keys = tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
    group = method.param_group(keys) if groups else None
    if group is not None and group not in groups:
      raise ValueError(f"param_group{keys} = {group!r}, not one of {sorted(groups)}.")
    return main if group is None else group
  return jax.tree.map_with_path(label, params)


def method_optimizer(opt_config, schedule, method=None) -> optax.GradientTransformation:
  """The optimizer of the method's parameters alone, split by its param groups if it has any.

  `param_group(path)` sees paths inside the method's params ('predictor', ...).
  """
  groups, transforms = _group_transforms(opt_config, schedule, method, MAIN_GROUP)
  if not groups:
    return transforms[MAIN_GROUP]
  return optax.multi_transform(transforms,
                               lambda params: _method_labels(params, method, groups, MAIN_GROUP))


def create_optimizer(config: ml_collections.ConfigDict, *, steps_per_epoch: float, method=None):
  """Returns (optimizer over {'model', 'probe'}, learning-rate schedule of the model part)."""
  warmup = configured_warmup_steps(config.optimizer.warmup_epochs, steps_per_epoch)
  _, note = fit_warmup(warmup, config.train_steps,
                       f"config.optimizer.warmup_epochs={config.optimizer.warmup_epochs}")
  if note:
    logging.warning("%s", note)
  schedule = learning_rate_schedule(
      config.optimizer, batch_size=config.batch_size, train_steps=config.train_steps,
      steps_per_epoch=steps_per_epoch)
  probe_schedule = optax.cosine_decay_schedule(config.probe.learning_rate, config.train_steps)
  # One flat partition over {'model', 'probe'}: a nested multi_transform
  # would show the method's param_group the outer paths ('model', ...).
  # The method's main group keeps the label 'model', so a method without
  # groups has the optimizer state layout it always had.
  groups, transforms = _group_transforms(config.optimizer, schedule, method, MODEL)
  transforms[PROBE] = optax.sgd(probe_schedule, momentum=config.probe.momentum)

  def labels(params):
    # Prefix labels where a whole part has one: the masked states then have the
    # layout the checkpoints of earlier versions hold.
    return {MODEL: _method_labels(params[MODEL], method, groups, MODEL) if groups else MODEL,
            PROBE: PROBE}
  return optax.multi_transform(transforms, labels), schedule
