"""Fine-tuning a pretrained encoder (or training it from scratch) on labels.

    python main.py --config=configs/finetune.py --workdir=/tmp/ft_byol \\
        --config.checkpoint=/tmp/byol --config.label_fraction=0.1
    python main.py --config=configs/finetune.py --workdir=/tmp/ft_scratch \\
        --config.checkpoint=scratch --config.label_fraction=0.1

The encoder plus a new linear head (after a parameter-free BatchNorm of the
features, `ClassifierHead`) is trained with SGD and Nesterov momentum
on random crops and flips of the labelled subset (SimCLR Appendix B.5): warmup
(optional) then cosine decay. The encoder's learning rate is
`finetune.backbone_lr_ratio` times the head's (default 0.1: the pretrained
features should move less than a randomly initialised head). With
`finetune.train_from='stageK'` the stem and the stages before K are frozen:
they get no updates (not even weight decay) and run in inference mode, so their
BatchNorm statistics stay those of pretraining. `checkpoint=scratch` trains a
randomly initialised encoder with the same recipe, every layer at the head's
rate: the supervised baseline on the same labels.

BatchNorm of the trained layers uses the global batch's statistics (the step
is jitted over the device mesh like pretraining), and its running averages
are what the test split is evaluated with.

The run is on the supervised loop (sslx/core/supervised_loop.py): checkpoints
in WORKDIR/checkpoints, resumed by a rerun, SIGTERM -> save and exit 75, a
non-finite step stops it before it is saved. Layer groups come from the
backbone (`Backbone.layer_groups`), so `train_from` takes whatever groups the
encoder declares.
"""

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sslx import errors
from sslx import models
from sslx.core import mesh as mesh_lib
from sslx.core import optim
from sslx.core import supervised_loop
from sslx.data import augment
from sslx.evaluation import features as features_lib
from sslx.evaluation import metrics as metrics_lib
from sslx.evaluation import transfer

HEAD_ONLY = "head"


def train_from_choices(backbone: models.Backbone) -> tuple[str, ...]:
  """Valid `finetune.train_from` values: the backbone's layer groups, then 'head'."""
  return (*backbone.layer_groups, HEAD_ONLY)


def validate(config) -> None:
  c, problems = config.finetune, []
  if c.train_from is not None and (not isinstance(c.train_from, str) or not c.train_from):
    problems.append(f"config.finetune.train_from={c.train_from!r}; name a layer group of the "
                    f"encoder (ResNet: stem, stage1..stage4) or {HEAD_ONLY!r}.")
  if not c.epochs > 0:
    problems.append(f"config.finetune.epochs={c.epochs}; it must be > 0.")
  if not c.base_learning_rate > 0:
    problems.append(f"config.finetune.base_learning_rate={c.base_learning_rate}; it must be > 0.")
  if not c.backbone_lr_ratio >= 0:
    problems.append(f"config.finetune.backbone_lr_ratio={c.backbone_lr_ratio}; it must be >= 0.")
  if c.weight_decay < 0:
    problems.append(f"config.finetune.weight_decay={c.weight_decay}; it must be >= 0.")
  if config.eval.get("feature_layer") is not None or config.eval.get("feature_grid", 1) != 1:
    problems.append("config.eval.feature_layer / feature_grid choose the features of the frozen "
                    "evaluators (configs/knn_eval.py, configs/linear_eval.py); fine-tuning "
                    "trains its head on the encoder's pooled output. Leave them unset.")
  if problems:
    raise errors.ConfigError.from_problems(problems)


def param_labels(params, frozen_groups: int, backbone: models.Backbone):
  """'head', 'encoder' or 'frozen' for every parameter leaf (optax.multi_transform labels)."""
  def label(path, _):
    if path[0].key == "head":
      return "head"
    keys = [str(getattr(k, "key", k)) for k in path[1:]]
    group = backbone.layer_groups.index(backbone.layer_group(keys))
    return "frozen" if group < frozen_groups else "encoder"
  return jax.tree_util.tree_map_with_path(label, params)


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


State = supervised_loop.SupervisedState


def make_train_step(encoder, head, tx, mean, std, dtype, nonfinite_action: str = "stop"):
  """(State, batch {'views': {'v1': uint8 [B, 1, S, S, 3]}, 'label'}) -> (State, metrics)."""
  def train_step(state, batch):
    images, labels = batch["views"]["v1"], batch["label"]
    x = augment.normalize(augment.to_float01(images[:, 0]), mean, std, dtype)

    def loss_fn(params):
      out, enc_updates = encoder.apply(
          {"params": params["encoder"], "batch_stats": state.batch_stats["encoder"]}, x,
          train=True, mutable=["batch_stats"])
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
    new, flags = supervised_loop.guard(state, new, loss, grads, nonfinite_action)
    return new, {"loss": loss, "train_accuracy": accuracy,
                 "grad_norm": optax.global_norm(grads), **flags}
  return train_step


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  validate(config)
  c = config.finetune
  s = transfer.setup(config, workdir, batch_sizes=(config.batch_size, config.eval.batch_size),
                     need_labels=True)
  mesh, loaded, data_config, info, subset = s.mesh, s.backbone, s.data_config, s.info, s.subset
  backbone = models.get_backbone(loaded.model_config)
  choices = train_from_choices(backbone)
  if c.train_from is not None and c.train_from not in choices:
    raise errors.ConfigError(f"config.finetune.train_from={c.train_from!r}; valid for "
                             f"{loaded.model_config.name}: {', '.join(choices)}.")
  num_labelled = s.num_labelled
  scratch = loaded.source["checkpoint"] == transfer.SCRATCH

  # From scratch every layer trains at the head's rate; otherwise as configured.
  frozen = 0 if scratch or c.train_from is None else choices.index(c.train_from)
  ratio = 1.0 if scratch else c.backbone_lr_ratio
  dtype = jnp.dtype(config.dtype)
  encoder = backbone.module(dtype, frozen_groups=frozen)
  head = ClassifierHead(info.num_classes)
  head_variables = head.init(jax.random.PRNGKey(config.seed),
                             jnp.zeros((1, backbone.feature_dim)), train=False)
  params = {"encoder": loaded.variables["params"], "head": head_variables["params"]}
  steps = max(1, int(round(c.epochs * num_labelled / config.batch_size)))
  steps_per_epoch = num_labelled / config.batch_size
  warmup, note = optim.fit_warmup(
      optim.configured_warmup_steps(c.warmup_epochs, steps_per_epoch), steps,
      f"config.finetune.warmup_epochs={c.warmup_epochs}")
  if note:
    logging.warning("%s", note)
  tx = create_optimizer(params, backbone=backbone, frozen_groups=frozen,
                        peak_lr=c.base_learning_rate * config.batch_size / 256,
                        backbone_lr_ratio=ratio, weight_decay=c.weight_decay,
                        momentum=c.momentum, warmup_steps=warmup, train_steps=steps)
  state = mesh_lib.replicate(State.create(
      params, {"encoder": loaded.variables["batch_stats"],
               "head": head_variables["batch_stats"]}, tx.init(params)), mesh)
  logging.info("fine-tuning %s (%s) on %s: %d labelled images, %d steps of %d, layers from %s "
               "trained, encoder lr x%g", loaded.model_config.name,
               loaded.source["checkpoint"], info.name, num_labelled, steps, config.batch_size,
               choices[frozen], ratio)

  train_step = jax.jit(make_train_step(encoder, head, tx, info.mean, info.std, dtype,
                                       config.nonfinite.action), donate_argnums=0)
  loop = transfer.supervised_loop_for(config, workdir, mesh, loaded, section="finetune",
                                      name="fine-tune", num_steps=steps)
  state, last = loop.run(state, train_step,
                         transfer.labelled_batches(config, data_config, info, c.view, subset))

  # Test: the fine-tuned encoder in inference mode, then the head.
  state = jax.device_get(state)
  extract = features_lib.FeatureExtractor(
      backbone.module(dtype), {"params": state.params["encoder"],
                               "batch_stats": state.batch_stats["encoder"]},
      data_config=data_config, mean=info.mean, std=info.std, mesh=mesh, dtype=dtype)
  test_x, test_y = extract("test", batch_size=config.eval.batch_size)
  logits = np.asarray(head.apply({"params": state.params["head"],
                                  "batch_stats": state.batch_stats["head"]},
                                 jnp.asarray(test_x), train=False))
  scores = metrics_lib.top1_top5(logits, test_y, info.num_classes)
  results = dict(protocol="finetune", **scores,
                 **transfer.describe(config, loaded, info, num_labelled),
                 train_from=choices[frozen], backbone_lr_ratio=ratio, train_steps=steps,
                 final_train_loss=last.get("loss"))
  transfer.write_results(workdir, results, transfer.summary_line(
      "fine-tune" if not scratch else "supervised from scratch", results))
  return results
