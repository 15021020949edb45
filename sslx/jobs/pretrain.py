"""The pretraining job: one generic trainer for every method in sslx/methods.

    python main.py --config=configs/byol.py --workdir=/tmp/byol

The train step is a pure function (TrainState, batch) -> (TrainState, metrics),
jitted once over a data-parallel device mesh. Per step it: derives the step's
keys from fold_in(run key, step), one per purpose (sslx/core/rngs.py), turns
the uint8 crops from tf.data into photometrically augmented views on device,
asks the method for its loss, adds the online linear probe's loss on
stop-gradient features, applies the optimizer, lets the method update its
non-gradient state (EMA target, queue), and guards the result against
non-finite values (sslx/core/train_state.py). Everything that changes is in
the TrainState, so a resumed run continues exactly; the loop around the step
(checkpoints, resume, preemption, progress) is sslx/core/loop.py, shared by
every job.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from typing import Any

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sslx import data
from sslx import errors
from sslx import methods
from sslx import models
from sslx.config import defaults as config_defaults
from sslx.config import validation as config_validation
from sslx.core import checkpointing
from sslx.core import compile_once
from sslx.core import loop as loop_lib
from sslx.core import mesh as mesh_lib
from sslx.core import optim
from sslx.core import progress as progress_lib
from sslx.core import rngs as rngs_lib
from sslx.core import summaries
from sslx.core import health
from sslx.core.train_state import TrainState, guarded_update
from sslx.data import augment
from sslx.data import info as info_lib
from sslx.data import views as views_lib
from sslx.evaluation import compare
from sslx.evaluation import few_label
from sslx.evaluation import frozen
from sslx.evaluation import plots

PyTree = Any


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> data.DatasetInfo:
  """Checks types, ranges, names and sizes before anything is compiled, loaded or written.

  Every problem found is reported in one ConfigError, so a config with several
  mistakes needs one rerun, not several.
  """
  resolve_epochs(config)
  problems = config_validation.problems(config) + models.config_problems(config)
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


def resolve_epochs(config: ml_collections.ConfigDict) -> None:
  """`train_epochs` (the :folder preset's schedule) -> train_steps, from the dataset's size."""
  epochs = config.get("train_epochs")
  if not epochs:
    return
  if not (isinstance(epochs, (int, float)) and epochs > 0):
    raise errors.ConfigError(f"config.train_epochs={epochs!r}; it must be a number > 0, or 0 "
                             "to use config.train_steps.")
  size = data.get_dataset_info(config.data).num_train_examples
  config.train_steps = max(1, int(round(epochs * size / config.batch_size)))
  logging.info("%g epochs of %d images at batch %d: %d steps (config.train_epochs)", epochs,
               size, config.batch_size, config.train_steps)


# A smoke run's evaluation: enough to show every part works, small enough to take
# seconds (experiments/smoke_runs.py times every config).
SHORT_RUN_TRAIN_EXAMPLES = 1000
SHORT_RUN_TSNE_POINTS = 300


def scale_evaluation(config: ml_collections.ConfigDict) -> str | None:
  """A short run's smaller evaluation (`eval.scale_with_run`); the line that says so, or None."""
  c = config.eval
  if not c.get("scale_with_run", False) or config.train_steps >= c.get("short_run_steps", 0):
    return None
  c.few_label_draws = min(c.few_label_draws, 1)
  c.scratch.steps = 0
  c.max_train_examples = min(c.max_train_examples or SHORT_RUN_TRAIN_EXAMPLES,
                             SHORT_RUN_TRAIN_EXAMPLES)
  config.plots.tsne_max_points = min(config.plots.tsne_max_points, SHORT_RUN_TSNE_POINTS)
  return (f"a short run ({config.train_steps} steps): a smaller evaluation, probes on at most "
          f"{c.max_train_examples:,} train images, 1 few-label draw, no from-scratch baselines, "
          f"a t-SNE of at most {config.plots.tsne_max_points} points "
          "(--config.eval.scale_with_run=False for the full one)")


def describe_run(config: ml_collections.ConfigDict, trainer) -> list[str]:
  """The run's first lines: preset, data, input size, model, schedule and augmentations."""
  m = config.model
  lines = [f"{config.method} with preset {config.get('preset') or '(none)'!r}: "
           f"{config.data.dataset} at {config.data.image_size} px, {m.name} (width {m.width:g}, "
           f"{m.stem} stem), batch {config.batch_size} for {config.train_steps} steps, "
           f"{config.optimizer.name} at {config.optimizer.base_learning_rate:g} x batch/256"]
  for g in trainer.view_groups:
    p = g.photometric
    lines.append(
        f"  views {g.name}: {g.num_crops} crop(s) of {g.crop_size} px from "
        f"{g.area[0]:g}-{g.area[1]:g} of the image, flip {g.flip_prob:g}, colour jitter "
        f"{p['color_jitter_prob']:g}, grey {p['grayscale_prob']:g}, blur {p['blur_prob']:g}, "
        f"solarize {p['solarize_prob']:g}")
  if (str(config.data.dataset).startswith("folder:")
      and config.get("preset") in config_defaults.DIGIT_PRESETS):
    lines.append(
        f"WARNING: a folder of images with the {config.preset!r} preset, sized for 20 px digits "
        f"(a ResNet-10 of width 0.25, digit augmentations); for photos use "
        f"--config=configs/{config.method}.py:folder")
  return lines


def _is_positive_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v > 0


# What a pretraining checkpoint's state means: a rerun that changes any of these would not
# continue the saved run (its data position, schedules or state). Logging, evaluation,
# plots, checkpoint cadence, devices and dtype change nothing saved and are left out.
FINGERPRINT_FIELDS = ("job", "method", "seed", "batch_size", "train_steps", "model", "optimizer",
                      "probe", "views", "data.dataset", "data.image_size", "data.grey",
                      "data.shuffle_buffer")


def fingerprint(config: dict, process_count: int | None = None) -> dict[str, Any]:
  """The flat fingerprint of a pretraining config (a dict, as checkpoints save it).

  TFDS record files are read one shard per process, so their example order
  (and the example ids of memory banks) depend on the process count, which
  then belongs to it; npz arrays and folders are one stream for any count.
  """
  def get(path):
    node = config
    for key in path.split("."):
      node = node.get(key) if isinstance(node, dict) else None
    return node
  fields = {path: get(path) for path in FINGERPRINT_FIELDS}
  fields["job"] = fields["job"] or "pretrain"
  fields[config.get("method")] = config.get(config.get("method"))  # the method's section
  flat = checkpointing.flatten(fields)
  if process_count is not None and not info_lib.reads_by_index(get("data.dataset") or ""):
    flat["process_count"] = process_count
  return flat


def identity(config, trainer: Trainer) -> checkpointing.Identity:
  """What a pretraining checkpoint saves beside its arrays, and what resume checks."""
  return checkpointing.Identity(
      fingerprint=fingerprint(json.loads(config.to_json()), jax.process_count()),
      of_config=fingerprint, config=config, encoder=trainer.encoder_record(),
      allowed_changes=checkpointing.parse_allowed(config.get("resume_changes")))


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
    # What the encoder is fed at evaluation, and by every consumer of its checkpoint.
    self.preprocessing = info_lib.Preprocessing(
        image_size=config.data.image_size, mean=tuple(info.mean), std=tuple(info.std),
        crop_fraction=config.data.eval_crop_fraction,
        grey=bool(config.data.get("grey", False)) or self.method.grey_encoder_input)
    size = self.view_groups[0].crop_size
    self._dummy_images = jnp.zeros((2, size, size, 3), jnp.float32)
    self._eval_images = jnp.zeros((2, config.data.image_size, config.data.image_size, 3))
    self.evaluator = frozen.Evaluator(self.method.encoder, self.preprocessing, config.data,
                                      mesh, self.dtype, config.eval, info.num_classes)
    self.state_sharding = jax.tree.map(lambda _: mesh_lib.replicated(mesh), self.abstract_state())
    self.train_step = jax.jit(
        self._train_step,
        in_shardings=(self.state_sharding, mesh_lib.data_sharding(mesh)),
        out_shardings=(self.state_sharding, mesh_lib.replicated(mesh)),
        donate_argnums=0)

  def encoder_record(self) -> dict[str, Any]:
    """Where the checkpoint keeps the encoder, its architecture and its input."""
    return dict(checkpointing.PRETRAIN_ENCODER, model=self.config.model.to_dict(),
                preprocessing=self.preprocessing.to_dict())

  def _init_state(self, key):
    model_params, batch_stats, method_state = self.method.init(
        rngs_lib.derive(key, "init/model"), self._dummy_images)
    params = {"model": model_params, "probe": {}}
    if self.num_classes:
      dim = self.method.feature_dim
      params["probe"] = nn.Dense(self.num_classes).init(rngs_lib.derive(key, "init/probe"),
                                                        jnp.zeros((1, dim)))["params"]
    return TrainState.create(params=params, batch_stats=batch_stats,
                             opt_state=self.tx.init(params), method_state=method_state,
                             rng=rngs_lib.derive(key, "train"))

  def abstract_state(self):
    return jax.eval_shape(self._init_state, rngs_lib.seed_key(0))

  def init_state(self, seed: int) -> TrainState:
    init = compile_once.jit(self._init_state, out_shardings=self.state_sharding)
    return init(rngs_lib.seed_key(seed))

  def _train_step(self, state: TrainState, batch: dict[str, jax.Array]):
    step = state.step
    rngs = state.step_rngs()
    method_batch = {
        "views": augment.augment_views(rngs.augment, batch["views"], self.view_groups,
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
    new = state.replace(step=step + 1, params=params, batch_stats=out.batch_stats,
                        opt_state=opt_state,
                        method_state=self.method.post_step(params["model"], out.method_state,
                                                           step))
    # With 'skip', the EMA target and the queue are dropped with the rest.
    new, flags = guarded_update(state, new, total, grads, self.config.nonfinite.action)
    metrics["learning_rate"] = self.lr_schedule(step)
    metrics["grad_norm"] = optax.global_norm(grads["model"])
    if self.num_classes:
      metrics["probe_grad_norm"] = optax.global_norm(grads["probe"])
    metrics.update(self._health_metrics(out.embeddings, step))
    metrics.update(flags)
    return new, metrics

  def _health_metrics(self, embeddings, step):
    """Collapse monitors; the effective rank (an SVD) only on logged steps."""
    done = step + 1
    every = progress_lib.log_interval(self.config.log_every_steps, self.config.train_steps)
    logged = (done % every == 0) | (done == self.config.train_steps)
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
    rngs = rngs_lib.StepRngs(key=rngs_lib.seed_key(0))
    _, out = jax.eval_shape(self.method.loss, abstract.params["model"], abstract.batch_stats,
                            abstract.method_state, batch, rngs, abstract.step)
    return out.embeddings.shape[-1]

  # Evaluation of the encoder.
  def encoder_variables(self, state: TrainState) -> PyTree:
    return self.method.encoder_variables(state.params["model"], state.batch_stats)

  def random_encoder_variables(self, seed: int):
    return models.init_variables(self.method.encoder, seed + 1, self._eval_images)

  def scratch_baseline(self, few_label_subsets) -> dict[int, dict[str, Any]]:
    """Test top-1 of the architecture trained from scratch on each few-label subset."""
    c = self.config.eval
    scratch = few_label.ScratchTrainer(
        self.method.backbone, info=self.info, preprocessing=self.preprocessing,
        data_config=self.config.data, mesh=self.mesh, config=c.scratch,
        nonfinite=self.config.nonfinite, dtype=self.dtype)
    return {n: scratch.evaluate(chosen[:c.scratch.draws], self.config.seed,
                                eval_batch_size=c.batch_size)
            for n, chosen in few_label_subsets.items()}


def final_evaluation(config, info: data.DatasetInfo, trainer: Trainer, state: TrainState,
                     writer, features: dict | None = None) -> dict | None:
  """kNN and linear probe of the pretrained encoder, beside a random one; printed and logged.

  Both encoders get the pretrained one's preprocessing, so the comparison is about weights.
  """
  if not (info.num_classes and info.test_split):
    logging.info("Skipping the final evaluation: %s has no labelled test split.",
                 config.data.dataset)
    return None
  encoders = {"pretrained": trainer.encoder_variables(state)}
  if config.eval.compare_random_init:
    encoders["random_init"] = trainer.random_encoder_variables(config.seed)
  few = {}  # drawn once, from the train labels that come with the first encoder's features

  def draw(labels):
    if not few:
      few.update(few_label_subsets(config, labels))
    return few

  results = trainer.evaluator.evaluate(encoders, seed=config.seed,
                                       few_label_subsets=draw if config.eval.few_labels else None,
                                       features=features)
  if few and config.eval.scratch.steps:
    t0 = time.perf_counter()
    # The draws index the evaluated train rows; the baseline reads the split by its indices.
    rows = trainer.evaluator.train_indices(config.seed)
    in_split = few if rows is None else {n: [rows[c] for c in chosen] for n, chosen in few.items()}
    results["scratch"] = {"few_label_scratch": trainer.scratch_baseline(in_split)}
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
  return frozen.describe(config.eval.get("feature_layer"), config.eval.get("feature_grid", 1))


def few_label_subsets(config, labels: np.ndarray) -> dict[int, list]:
  """{N: the few-label draws' indices into the train split, whose labels are `labels`}."""
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
    cells = "  ".join(few_label.cell(by_n[n]) for n in shots)
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


def periodic_evaluation(config, trainer: Trainer, writer, state: TrainState,
                        step: int) -> None:
  """The final evaluation's kNN / linear probe of the current encoder, logged at `step`."""
  results = trainer.evaluator.evaluate({"pretrained": trainer.encoder_variables(state)},
                                       seed=config.seed)["pretrained"]
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
  scaled = scale_evaluation(config)
  trainer = Trainer(config, info, mesh)
  if scaled:
    logging.info("%s", scaled)
  for line in describe_run(config, trainer):
    (logging.warning if line.startswith("WARNING") else logging.info)(
        "%s", line.removeprefix("WARNING: "))
  logging.info("%d train images, %s classes; %d devices (%s)", info.num_train_examples,
               info.num_classes, mesh.devices.size, jax.devices()[0].platform)

  # Only now, with a valid config, is anything written to the workdir.
  checkpointing.check_writable(workdir)
  ckpt = checkpointing.Checkpointer(workdir, max_to_keep=config.keep_checkpoints,
                                    identity=identity(config, trainer))
  # TensorBoard event files from process 0; the terminal gets Progress's one line.
  # (The writer imports TensorFlow on first use, which the Trainer above does
  # not need: experiments/benchmark.py --what=step runs without it.)
  writer = summaries.Writer(workdir)
  collapse = health.CollapseWatch(config.collapse, trainer.embedding_dim())
  hooks = ()
  if config.eval.every_steps and info.num_classes and info.test_split:
    hooks = ((config.eval.every_steps,
              lambda state, done: periodic_evaluation(config, trainer, writer, state, done)),)
  metrics_log = None

  def on_log(done, scalars):
    metrics_log.append(done, scalars)
    collapse.check(done, scalars)

  loop = loop_lib.Loop(config=config, mesh=mesh, num_steps=config.train_steps,
                       global_batch_size=config.batch_size, checkpointer=ckpt, writer=writer,
                       on_log=on_log, hooks=hooks)
  state = loop.restore(trainer.init_state(config.seed))
  start_step = int(jax.device_get(state.step))
  if start_step == 0:
    writer.write_hparams(config.to_dict())
  metrics_log = progress_lib.MetricsLog(
      os.path.join(workdir, plots.METRICS_FILE) if jax.process_index() == 0 else None,
      start_step)

  def batches_from(step: int):
    return data.make_pretrain_iterator(config.data, trainer.view_groups,
                                       global_batch_size=config.batch_size, seed=config.seed,
                                       start_step=step)

  state, last_scalars = loop.run(state, trainer.train_step, batches_from, restored=True)
  step = int(jax.device_get(state.step))
  results = {"step": step, "final_metrics": last_scalars,
             "checkpoint": f"{ckpt.directory}/{step}",
             # What sslx.evaluation.compare names and groups runs by.
             "method": config.method, "dataset": config.data.dataset,
             "model": config.model.to_dict(), "preprocessing": trainer.preprocessing.to_dict(),
             "command": _command_line()}
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
