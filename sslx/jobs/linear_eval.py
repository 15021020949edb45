"""Linear probe of a frozen encoder from any sslx checkpoint.

    python main.py --config=configs/linear_eval.py --workdir=/tmp/eval_linear \\
        --config.checkpoint=/tmp/byol
    python main.py --config=configs/linear_eval.py --workdir=/tmp/eval_linear_aug \\
        --config.checkpoint=/tmp/byol --config.linear.augment=True

Two protocols, both choosing their hyperparameters on a held-out part of the
labelled TRAIN subset (never on the test split):

- augment=False (the fast path): features of centre crops are computed once;
  a multinomial logistic regression on standardised features is fitted with
  L-BFGS for each L2 strength of `linear.l2_grid`, the best on the held-out
  part is refitted on the whole subset (sslx/evaluation/linear_probe.py).
- augment=True: the classic protocol of the SSL papers: SGD with Nesterov
  momentum and a cosine schedule on features of randomly cropped and flipped
  images, the encoder frozen in inference mode. Every (learning rate, weight
  decay) pair of the grid is a separate linear head trained at once on the
  same features (the encoder runs once per batch, not once per setting); the
  head with the best held-out accuracy is scored on the test split. The
  held-out images are not trained on. It runs on the one training loop
  (sslx/core/loop.py): checkpointed, resumable, preemptible.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sslx import data
from sslx import errors
from sslx import models
from sslx.core import mesh as mesh_lib
from sslx.core.train_state import TrainState, guarded_update
from sslx.data import augment
from sslx.evaluation import features as features_lib
from sslx.evaluation import linear_probe
from sslx.evaluation import metrics as metrics_lib
from sslx.evaluation import transfer


def validate(config) -> None:
  c, problems = config.linear, []
  if not 0.0 < c.holdout_fraction < 1.0:
    problems.append(f"config.linear.holdout_fraction={c.holdout_fraction}; it must be in (0, 1).")
  if not c.l2_grid or min(c.l2_grid) < 0:
    problems.append(f"config.linear.l2_grid={c.l2_grid}; give one or more values >= 0.")
  if not c.learning_rates or min(c.learning_rates) <= 0:
    problems.append(f"config.linear.learning_rates={c.learning_rates}; give values > 0.")
  if not c.weight_decays or min(c.weight_decays) < 0:
    problems.append(f"config.linear.weight_decays={c.weight_decays}; give values >= 0.")
  if not c.epochs > 0:
    problems.append(f"config.linear.epochs={c.epochs}; it must be > 0.")
  if config.checkpoint == transfer.SCRATCH:
    problems.append("checkpoint=scratch trains an encoder; a linear probe needs a frozen one "
                    "(use checkpoint=random for the untrained baseline).")
  if problems:
    raise errors.ConfigError.from_problems(problems)


def holdout_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Positions (fit, held out) in `labels`: a class-stratified held-out part."""
  held = data.subsets.stratified_subset(labels, fraction=fraction, seed=seed + 1)
  fit = np.setdiff1d(np.arange(len(labels)), held)
  return fit, held


def multi_head_logits(heads, features):
  """[G heads] x [N, D] -> [G, N, C]."""
  return jnp.einsum("nd,gdc->gnc", features, heads["w"]) + heads["b"][:, None, :]


def multi_head_loss(heads, features, labels, weight_decays):
  """Sum over heads of (mean cross-entropy + wd/2 |W|^2): heads get independent gradients."""
  logits = multi_head_logits(heads, features)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels[None, :]).mean(axis=1)
  decay = 0.5 * weight_decays * jnp.sum(heads["w"] ** 2, axis=(1, 2))
  return jnp.sum(ce + decay)


def _train_augmented(config, workdir, s: transfer.Setup, extract, indices, labels):
  """The augmented protocol; returns (test scores, chosen hyperparameters, grid results)."""
  c, loaded, info, mesh = config.linear, s.backbone, s.info, s.mesh
  fit_pos, held_pos = holdout_split(labels, c.holdout_fraction, config.seed)
  fit_idx, held_idx = indices[fit_pos], indices[held_pos]
  # Standardise features with statistics of the (centre-crop) fit images, as
  # the L-BFGS path does: one learning-rate grid then suits every encoder.
  fit_x, _ = extract("train", batch_size=config.eval.batch_size, indices=fit_idx)
  mean, std = fit_x.mean(0), fit_x.std(0) + 1e-6

  grid = list(itertools.product(c.learning_rates, c.weight_decays))
  scale = config.batch_size / 256
  lrs = jnp.asarray([lr * scale for lr, _ in grid], jnp.float32)
  wds = jnp.asarray([wd for _, wd in grid], jnp.float32)
  num_heads, dim, num_classes = len(grid), fit_x.shape[1], info.num_classes
  steps = max(1, int(round(c.epochs * len(fit_idx) / config.batch_size)))
  # Unit peak: each head's rate multiplies the (linear) momentum update below.
  tx = optax.sgd(optax.cosine_decay_schedule(1.0, steps), momentum=c.momentum, nesterov=True)
  heads = {"w": jnp.zeros((num_heads, dim, num_classes)), "b": jnp.zeros((num_heads, num_classes))}
  state = mesh_lib.replicate(TrainState.create(params=heads, opt_state=tx.init(heads)), mesh)
  variables = mesh_lib.replicate(loaded.variables, mesh)
  encoder = models.create_encoder(loaded.model_config, dtype=jnp.dtype(config.dtype))
  mean_j, std_j = jnp.asarray(mean), jnp.asarray(std)
  action = config.nonfinite.action

  @functools.partial(jax.jit, donate_argnums=0)
  def step(state, batch, variables):
    images, labels = batch["views"]["v1"], batch["label"]
    x = augment.normalize(augment.to_float01(images[:, 0]), s.preprocessing.mean,
                          s.preprocessing.std, encoder.dtype)
    out = encoder.apply(variables, x, train=False)
    features = (features_lib.select(out, config.eval.feature_layer, config.eval.feature_grid)
                - mean_j) / std_j
    loss, grads = jax.value_and_grad(multi_head_loss)(state.params, features, labels, wds)
    updates, opt_state = tx.update(grads, state.opt_state)
    updates = jax.tree.map(lambda u: u * lrs.reshape((-1,) + (1,) * (u.ndim - 1)), updates)
    new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                        opt_state=opt_state)
    new, flags = guarded_update(state, new, loss, grads, action)
    return new, {"loss": loss / num_heads, "grad_norm": optax.global_norm(grads), **flags}

  loop = transfer.training_loop(config, workdir, s, section="linear", name="linear probe",
                                num_steps=steps, keeps_encoder=False)
  state, _ = loop.run(state, lambda st, batch: step(st, batch, variables),
                      transfer.labelled_batches(config, s, c.view, fit_idx))

  heads = jax.device_get(state.params)
  predict = lambda x: np.asarray(multi_head_logits(heads, jnp.asarray((x - mean) / std)))
  held_x, held_y = extract("train", batch_size=config.eval.batch_size, indices=held_idx)
  held_logits = predict(held_x)
  held_top1 = [metrics_lib.top1_top5(held_logits[g], held_y, num_classes)["top1"]
               for g in range(num_heads)]
  best = int(np.argmax(held_top1))
  test_x, test_y = extract("test", batch_size=config.eval.batch_size)
  scores = metrics_lib.top1_top5(predict(test_x)[best], test_y, num_classes)
  chosen = dict(learning_rate=grid[best][0], weight_decay=grid[best][1],
                holdout_top1=held_top1[best], train_steps=steps, num_fit=len(fit_idx),
                num_holdout=len(held_idx))
  sweep = [dict(learning_rate=lr, weight_decay=wd, holdout_top1=a)
           for (lr, wd), a in zip(grid, held_top1)]
  return scores, chosen, sweep


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  validate(config)
  augmented = config.linear.augment
  s = transfer.setup(config, workdir, need_labels=augmented, batch_sizes=(
      (config.eval.batch_size, config.batch_size) if augmented else (config.eval.batch_size,)))
  info, subset = s.info, s.subset
  extract = transfer.feature_extractor(s, dtype=jnp.dtype(config.dtype),
                                       layer=config.eval.feature_layer,
                                       grid=config.eval.feature_grid)

  if augmented:
    indices = np.arange(len(s.labels)) if subset is None else subset
    scores, chosen, sweep = _train_augmented(config, workdir, s, extract, indices,
                                             s.labels[indices])
    num_labelled, extra = len(indices), dict(**chosen, sweep=sweep)
    name = "linear probe (SGD, augmented)"
  else:
    train_x, train_y = extract("train", batch_size=config.eval.batch_size, indices=subset)
    test_x, test_y = extract("test", batch_size=config.eval.batch_size)
    scores = linear_probe.linear_probe_accuracy(
        train_x, train_y, test_x, test_y, num_classes=info.num_classes,
        l2_grid=tuple(config.linear.l2_grid), holdout_fraction=config.linear.holdout_fraction,
        seed=config.seed)
    num_labelled, extra = len(train_y), {}
    name = "linear probe (L-BFGS)"
  results = dict(protocol="linear", augment=bool(config.linear.augment), **scores,
                 **transfer.describe(config, s, num_labelled), **extra)
  transfer.write_results(workdir, results, transfer.summary_line(name, results))
  return results
