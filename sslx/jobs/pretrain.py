"""The pretraining job: one generic trainer for every method in sslx/methods.

    python main.py --config=configs/byol.py --workdir=/tmp/byol

The train step is a pure function (TrainState, batch) -> (TrainState, metrics),
jitted once over a data-parallel device mesh. Per step it: derives the step's
rng with fold_in(seed key, step), turns the uint8 crops from tf.data into
photometrically augmented views on device, asks the method for its loss, adds
the online linear probe's loss on stop-gradient features, applies the
optimizer, and lets the method update its non-gradient state (EMA target,
queue). Everything that changes is in TrainState, so a resumed run continues
exactly.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from typing import Any

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sslx import data
from sslx import errors
from sslx import methods
from sslx.config import validation as config_validation
from sslx.core import checkpointing
from sslx.core import compile_once
from sslx.core import health
from sslx.core import mesh as mesh_lib
from sslx.core import optim
from sslx.core import preemption
from sslx.core import progress as progress_lib
from sslx.core import summaries
from sslx.data import augment
from sslx.data import views as views_lib
from sslx.evaluation import compare
from sslx.evaluation import features as features_lib
from sslx.evaluation import few_label
from sslx.evaluation import plots
from sslx.models import init_variables as models_init

PyTree = Any


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # number of updates applied so far
  params: PyTree  # {'model': method parameters, 'probe': online linear classifier}
  batch_stats: PyTree  # BatchNorm running statistics of the method's online networks
  opt_state: PyTree
  method_state: PyTree  # non-gradient state owned by the method
  rng: jax.Array  # base key; step k uses fold_in(rng, k)
  skipped_updates: jax.Array  # non-finite updates dropped so far (config.nonfinite.action='skip')


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> data.DatasetInfo:
  """Checks types, ranges, names and sizes before anything is compiled, loaded or written.

  Every problem found is reported in one ConfigError, so a config with several
  mistakes needs one rerun, not several.
  """
  problems = config_validation.problems(config)
  try:
    problems += methods.get_method_class(config).config_problems(config)
  except errors.ConfigError as e:
    problems.append(str(e))
  if _is_positive_int(config.batch_size):
    try:
      mesh_lib.check_batch_size(config.batch_size, num_devices)
    except errors.ConfigError as e:
      problems.append(str(e))
    if config.batch_size % jax.process_count():
      problems.append(f"config.batch_size={config.batch_size} is not divisible by the number "
                      f"of processes ({jax.process_count()}).")
  info = None
  if not problems:  # the dataset check may prepare data: only worth it if the rest is valid
    try:
      info = data.get_dataset_info(config.data)
    except errors.ConfigError as e:
      problems.append(str(e))
  if problems:
    raise errors.ConfigError(f"Invalid config ({len(problems)} problem"
                             f"{'s' if len(problems) > 1 else ''}):\n  - "
                             + "\n  - ".join(problems))
  return info


def _is_positive_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v > 0


def probe_loss(probe_params, features, labels, num_classes):
  """Cross-entropy of the online linear probe; rows with label < 0 are ignored."""
  logits = nn.Dense(num_classes).apply({"params": probe_params}, features)
  valid = labels >= 0
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
  count = jnp.maximum(valid.sum(), 1)
  loss = jnp.sum(jnp.where(valid, ce, 0.0)) / count
  accuracy = jnp.sum(jnp.where(valid, jnp.argmax(logits, -1) == labels, False)) / count
  return loss, {"probe_loss": loss, "probe_accuracy": accuracy}


class Trainer:
  """Builds the state and the jitted step for one config on one mesh."""

  def __init__(self, config, info: data.DatasetInfo, mesh):
    self.config = config
    self.info = info
    self.mesh = mesh
    self.method = methods.get_method(config, info)
    self.dtype = jnp.dtype(config.dtype)
    self.view_groups = views_lib.parse_groups(
        config.views, image_size=config.data.image_size, declared=self.method.view_groups)
    self.steps_per_epoch = info.num_train_examples / config.batch_size
    self.tx, self.lr_schedule = optim.create_optimizer(
        config, steps_per_epoch=self.steps_per_epoch, method=self.method)
    self.num_classes = info.num_classes if config.probe.enabled else None
    size = self.view_groups[0].crop_size
    self._dummy_images = jnp.zeros((2, size, size, 3), jnp.float32)
    # Evaluation (centre crops) runs at the data's image size.
    eval_size = config.data.image_size
    self._eval_images = jnp.zeros((2, eval_size, eval_size, 3), jnp.float32)
    self._embed = None  # the jitted feature extractor, built at the first evaluation
    self.state_sharding = jax.tree.map(lambda _: mesh_lib.replicated(mesh), self.abstract_state())
    self.train_step = jax.jit(
        self._train_step,
        in_shardings=(self.state_sharding, mesh_lib.data_sharding(mesh)),
        out_shardings=(self.state_sharding, mesh_lib.replicated(mesh)),
        donate_argnums=0)

  def _init_state(self, rng):
    k_model, k_probe, k_state = jax.random.split(rng, 3)
    model_params, batch_stats, method_state = self.method.init(k_model, self._dummy_images)
    params = {"model": model_params, "probe": {}}
    if self.num_classes:
      dim = self.method.feature_dim
      params["probe"] = nn.Dense(self.num_classes).init(k_probe, jnp.zeros((1, dim)))["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=self.tx.init(params), method_state=method_state, rng=k_state,
                      skipped_updates=jnp.zeros((), jnp.int32))

  def abstract_state(self):
    return jax.eval_shape(self._init_state, jax.random.PRNGKey(0))

  def init_state(self, seed: int) -> TrainState:
    init = compile_once.jit(self._init_state, out_shardings=self.state_sharding)
    return init(jax.random.PRNGKey(seed))

  def _train_step(self, state: TrainState, batch: dict[str, jax.Array]):
    step = state.step
    step_key = jax.random.fold_in(state.rng, step)
    aug_rng, method_rng = jax.random.split(step_key)
    dropout_rng, drop_path_rng = jax.random.split(jax.random.fold_in(step_key, 1))
    rngs = methods.base.StepRngs(augment=method_rng, dropout=dropout_rng,
                                 drop_path=drop_path_rng)
    method_batch = {
        "views": augment.augment_views(aug_rng, batch["views"], self.view_groups,
                                       self.info.mean, self.info.std, dtype=self.dtype),
        "label": batch["label"], "index": batch["index"]}

    def loss_fn(params):
      loss, out = self.method.loss(params["model"], state.batch_stats, state.method_state,
                                   method_batch, rngs, step)
      total, metrics = loss, {"loss": loss, **out.metrics}
      if self.num_classes:
        p_loss, p_metrics = probe_loss(params["probe"], jax.lax.stop_gradient(out.features),
                                       batch["label"], self.num_classes)
        total, metrics = total + p_loss, {**metrics, **p_metrics}
      return total, (out, metrics)

    (total, (out, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    method_state = self.method.post_step(params["model"], out.method_state, step)
    metrics["learning_rate"] = self.lr_schedule(step)
    metrics["grad_norm"] = optax.global_norm(grads["model"])
    if self.num_classes:
      metrics["probe_grad_norm"] = optax.global_norm(grads["probe"])
    metrics.update(self._health_metrics(out.embeddings, step))
    finite = health.all_finite(total, grads)
    new = dict(params=params, batch_stats=out.batch_stats, opt_state=opt_state,
               method_state=method_state)
    # With 'skip', the EMA target and the queue are dropped with the rest.
    new, skipped = health.drop_if_nonfinite(finite, new, {k: getattr(state, k) for k in new},
                                            state.skipped_updates, self.config.nonfinite.action)
    metrics["finite"] = finite
    metrics["skipped_updates"] = skipped
    return state.replace(step=step + 1, skipped_updates=skipped, **new), metrics

  def _health_metrics(self, embeddings, step):
    """Collapse monitors; the effective rank (an SVD) only on logged steps."""
    done = step + 1
    logged = (done % self.config.log_every_steps == 0) | (done == self.config.train_steps)
    rank = jax.lax.cond(logged, health.effective_rank, lambda z: jnp.float32(jnp.nan),
                        embeddings)
    return {"embedding_std": health.embedding_std(embeddings), "effective_rank": rank}

  def embedding_dim(self) -> int:
    """Size of the embeddings the method reports for monitoring (shape inference only)."""
    abstract = self.abstract_state()
    # The global batch: methods may split it (MoCo's BN groups).
    n = self.config.batch_size
    batch = {"views": {g.name: jax.ShapeDtypeStruct((n, g.num_crops, g.crop_size, g.crop_size, 3),
                                                    self.dtype) for g in self.view_groups},
             "label": jax.ShapeDtypeStruct((n,), jnp.int32),
             "index": jax.ShapeDtypeStruct((n,), jnp.int32)}
    key = jax.random.PRNGKey(0)
    rngs = methods.base.StepRngs(augment=key, dropout=key, drop_path=key)
    _, out = jax.eval_shape(self.method.loss, abstract.params["model"], abstract.batch_stats,
                            abstract.method_state, batch, rngs, abstract.step)
    return out.embeddings.shape[-1]

  # Evaluation of the encoder.
  def random_encoder_variables(self, seed: int):
    return models_init(self.method.encoder, seed + 1, self._eval_images)

  def evaluate_encoders(self, encoders: dict[str, PyTree], few_label_subsets=None,
                        features: dict | None = None) -> dict[str, dict[str, Any]]:
    """kNN and linear-probe accuracy on the test split for each named encoder.

    Features are extracted once per encoder (eval-mode BatchNorm, no
    augmentation) and shared by every protocol; pass a dict as `features` to
    get them back ({name: {'train': (x, y), 'test': (x, y)}}).
    """
    c = self.config.eval
    if self._embed is None:  # one compilation for every encoder and every evaluation
      self._embed = features_lib.make_embed_fn(self.method.encoder, self.info.mean,
                                               self.info.std, self.dtype,
                                               layer=c.feature_layer, grid=c.feature_grid)
    results = {}
    for name, variables in encoders.items():
      extract = features_lib.FeatureExtractor(
          self.method.encoder, variables, data_config=self.config.data, mean=self.info.mean,
          std=self.info.std, mesh=self.mesh, dtype=self.dtype, embed_fn=self._embed)
      results[name], feats = features_lib.evaluate_frozen(
          extract, num_classes=self.info.num_classes, batch_size=c.batch_size,
          knn_k=c.knn_k if c.knn else None, knn_temperature=c.knn_temperature,
          linear=c.linear, max_train_examples=c.max_train_examples, seed=self.config.seed,
          few_label_subsets=few_label_subsets, few_label_l2=c.few_label_l2,
          return_features=True)
      if features is not None:
        features[name] = feats
    return results

  def scratch_baseline(self, few_label_subsets) -> dict[int, dict[str, Any]]:
    """Test top-1 of the architecture trained from scratch on each few-label subset."""
    c = self.config.eval
    scratch = few_label.ScratchTrainer(
        self.method.backbone, info=self.info, data_config=self.config.data, mesh=self.mesh,
        config=c.scratch, dtype=self.dtype)
    test_images = lambda: data.make_eval_iterator(
        self.config.data, "test", batch_size=c.batch_size // jax.process_count())
    return {n: scratch.evaluate(chosen[:c.scratch.draws], self.config.seed, test_images)
            for n, chosen in few_label_subsets.items()}


def final_evaluation(config, info: data.DatasetInfo, trainer: Trainer, state: TrainState,
                     writer, features: dict | None = None) -> dict | None:
  """kNN and linear probe of the pretrained encoder, beside a random one; printed and logged."""
  if not (info.num_classes and info.test_split):
    logging.info("Skipping the final evaluation: %s has no labelled test split.",
                 config.data.dataset)
    return None
  encoders = {"pretrained": trainer.method.encoder_variables(state.params["model"],
                                                             state.batch_stats)}
  if config.eval.compare_random_init:
    encoders["random_init"] = trainer.random_encoder_variables(config.seed)
  few = {}  # drawn once, from the train labels that come with the first encoder's features

  def draw(labels):
    if not few:
      few.update(few_label_subsets(config, labels))
    return few

  results = trainer.evaluate_encoders(encoders, few_label_subsets=draw if config.eval.few_labels
                                      else None, features=features)
  if few and config.eval.scratch.steps:
    t0 = time.perf_counter()
    results["scratch"] = {"few_label_scratch": trainer.scratch_baseline(few)}
    logging.info("evaluation: the from-scratch baselines took %.1fs", time.perf_counter() - t0)
  writer.write_scalars(int(jax.device_get(state.step)), {
      f"eval/{protocol}_{name}_{metric}": value
      for name, by_protocol in results.items() for protocol, scores in by_protocol.items()
      for metric, value in _scalars(scores).items()})
  where = _features_read(config)
  titles = {"knn": f"kNN (k={config.eval.knn_k}, T={config.eval.knn_temperature}){where}",
            "linear": f"linear probe{where}"}
  for protocol, title in titles.items():
    if protocol in results["pretrained"]:
      summary = " | ".join(f"{name} {r[protocol]['top1']:.1%}" for name, r in results.items()
                           if protocol in r)
      print(f"{title} top-1 on {config.data.dataset} {info.test_split}: {summary}", flush=True)
  if few:
    print(few_label_table(config, info, results), flush=True)
  return results


def _features_read(config) -> str:
  # .get: configs built by hand (tests) may predate the fields.
  return features_lib.describe(config.eval.get("feature_layer"), config.eval.get("feature_grid", 1))


def few_label_subsets(config, labels: np.ndarray) -> dict[int, list]:
  """{N: the few-label draws' indices into the (capped) train split, whose labels are `labels`}."""
  c = config.eval
  return {int(n): few_label.draw_subsets(labels, int(n), c.few_label_draws, config.seed)
          for n in sorted(set(c.few_labels))}


def few_label_table(config, info: data.DatasetInfo, results: dict) -> str:
  """The few-label rows as main.py prints them: one row per encoder, one column per N."""
  c = config.eval
  shots = sorted(set(c.few_labels))
  rows = [(f"linear probe, {name}", r["few_label_linear"], c.few_label_draws)
          for name, r in results.items() if "few_label_linear" in r]
  if "scratch" in results:
    rows.append(("from scratch (labels only)", results["scratch"]["few_label_scratch"],
                 min(c.scratch.draws, c.few_label_draws)))
  width = max(len(row[0]) for row in rows)
  lines = [f"few labels{_features_read(config)}, top-1 on {config.data.dataset} "
           f"{info.test_split} (columns: labelled images per class; mean of the draws):",
           f"  {'labels per class':<{width}}  " + "  ".join(f"{n:>6}" for n in shots)]
  for title, by_n, draws in rows:
    cells = "  ".join(f"{by_n[n]['top1']:>6.1%}" for n in shots)
    lines.append(f"  {title:<{width}}  {cells}   ({draws} draw{'s' if draws > 1 else ''})")
  return "\n".join(lines)


def _scalars(scores: dict, prefix: str = "") -> dict[str, float]:
  """Flattens nested results ({'top1': .., } or {N: {'top1': ..}}) to TensorBoard scalars."""
  out = {}
  for key, value in scores.items():
    if isinstance(value, dict):
      out.update(_scalars(value, f"{prefix}{key}_"))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      out[f"{prefix}{key}"] = value
  return out


def periodic_evaluation(config, info, trainer: Trainer, state: TrainState, writer,
                        step: int) -> None:
  """The final evaluation's kNN / linear probe of the current encoder, logged at `step`."""
  variables = trainer.method.encoder_variables(state.params["model"], state.batch_stats)
  results = trainer.evaluate_encoders({"pretrained": variables})["pretrained"]
  writer.write_scalars(step, {f"eval/{protocol}_pretrained_{metric}": value
                              for protocol, scores in results.items()
                              for metric, value in scores.items()})
  logging.info("step %d: %s", step, " | ".join(f"{protocol} top-1 {scores['top1']:.1%}"
                                               for protocol, scores in results.items()))


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Pretrains (or resumes) in `workdir`; returns final metrics and evaluation results."""
  job_start = time.perf_counter()
  mesh_lib.initialize_distributed(config.distributed)
  mesh = mesh_lib.create_mesh(config.num_devices)
  info = validate_config(config, mesh.devices.size)
  trainer = Trainer(config, info, mesh)
  logging.info("%s on %s (%d train images, %s classes), %s, %d devices (%s), batch %d, %d steps",
               config.method, config.data.dataset, info.num_train_examples, info.num_classes,
               config.model.name, mesh.devices.size, jax.devices()[0].platform,
               config.batch_size, config.train_steps)

  # Only now, with a valid config, is anything written to the workdir.
  checkpointing.check_writable(workdir)
  ckpt = checkpointing.Checkpointer(workdir, max_to_keep=config.keep_checkpoints)
  state = trainer.init_state(config.seed)
  try:
    restored = ckpt.restore_newest_good(state, fall_back=config.resume_from_older,
                                        config=config)
  except errors.CheckpointError:
    ckpt.close()  # stop Orbax's background threads before the error ends the process
    raise
  state = state if restored is None else restored
  start_step = int(jax.device_get(state.step))

  # TensorBoard event files from process 0; the terminal gets Progress's one line.
  # (The writer imports TensorFlow on first use, which the Trainer above does
  # not need: experiments/benchmark.py --what=step runs without it.)
  writer = summaries.Writer(workdir)
  if start_step == 0:
    writer.write_hparams(config.to_dict())
  progress = progress_lib.Progress(writer, total_steps=config.train_steps, start_step=start_step,
                                   global_batch_size=config.batch_size)
  metrics_log = progress_lib.MetricsLog(
      os.path.join(workdir, plots.METRICS_FILE) if jax.process_index() == 0 else None,
      start_step)
  batches = data.make_pretrain_iterator(config.data, trainer.view_groups,
                                        global_batch_size=config.batch_size, seed=config.seed,
                                        start_step=start_step)
  last_scalars = {}
  nonfinite = health.NonFiniteWatch(config.nonfinite, latest_checkpoint=ckpt.latest_path)
  collapse = health.CollapseWatch(config.collapse, trainer.embedding_dim())
  hidden = {"finite"} | ({"skipped_updates"} if config.nonfinite.action == "stop" else set())
  pending = None  # the previous update, checked while this one runs
  t0 = time.perf_counter()
  try:
    with preemption.StopRequest() as stop:
      for step in range(start_step, config.train_steps):
        state, metrics = trainer.train_step(state, mesh_lib.to_global(next(batches), mesh))
        done = step + 1
        if pending:  # one scalar transfer per step, one step late: no stall
          nonfinite.check(*pending)
        pending = (done, metrics)
        if step == start_step:
          jax.block_until_ready(state.step)
          progress.first_step_done(done, time.perf_counter() - t0)
        is_last = done == config.train_steps
        save = done % config.checkpoint_every_steps == 0 or is_last
        if save or stop.requested():
          # Never checkpoint a diverged state: the last good checkpoint stays the newest.
          nonfinite.check(done, metrics)
          pending = None
        if done % config.log_every_steps == 0 or is_last:
          last_scalars = progress.report(
              done, {k: v for k, v in metrics.items() if k not in hidden})
          metrics_log.append(done, last_scalars)
          collapse.check(done, last_scalars)
        if save:
          ckpt.save(state, config)
        if (config.eval.every_steps and done % config.eval.every_steps == 0 and not is_last
            and info.num_classes and info.test_split):
          periodic_evaluation(config, info, trainer, state, writer, done)
        if stop.requested():
          # Preemption or Ctrl-C: keep this (finite) step, then exit for a rerun.
          if not save:
            ckpt.save(state, config)
          ckpt.wait()
          raise errors.Preempted(
              f"Stopped by {stop.signal_name or 'a signal on another process'} after step "
              f"{done}; newest checkpoint: {ckpt.latest_path()}. Rerun the same command to "
              "resume.")
  except (errors.Preempted, health.NonFiniteError):
    ckpt.wait()  # a save of an earlier, good step may still be in flight
    ckpt.close()
    writer.flush()
    raise
  ckpt.wait()
  results = {"step": int(jax.device_get(state.step)), "final_metrics": last_scalars,
             "checkpoint": f"{ckpt.directory}/{ckpt.latest_step()}",
             # What sslx.evaluation.compare names and groups runs by.
             "method": config.method, "dataset": config.data.dataset,
             "model": config.model.to_dict(), "command": _command_line()}
  if config.eval.feature_layer:  # which features the evaluation read (default: pooled)
    results.update(feature_layer=config.eval.feature_layer, feature_grid=config.eval.feature_grid)

  features = {}
  if config.eval.knn or config.eval.linear:
    results["eval"] = final_evaluation(config, info, trainer, state, writer, features)
  if config.plots.enabled and jax.process_index() == 0:
    t0 = time.perf_counter()
    results["plots"] = plots.draw_run(config, workdir, features)
    logging.info("drew %s in %.1fs", ", ".join(results["plots"].values()),
                 time.perf_counter() - t0)
  writer.flush()
  ckpt.close()
  results["wall_seconds"] = time.perf_counter() - job_start  # this invocation's, resumes excluded
  if jax.process_index() == 0:
    with open(os.path.join(workdir, compare.PRETRAIN_FILE), "w") as f:
      json.dump(results, f, indent=2)
  print(f"Checkpoint: {results['checkpoint']}", flush=True)
  return results


def _command_line() -> str | None:
  """The main.py command line that runs this job (None when called from Python)."""
  if os.path.basename(sys.argv[0]) != "main.py":
    return None
  return shlex.join(["python", "main.py", *sys.argv[1:]])
