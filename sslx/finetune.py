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
"""

from absl import logging
from clu import metric_writers
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sslx import augment
from sslx import data
from sslx import errors
from sslx import linear_probe
from sslx import mesh as mesh_lib
from sslx import models
from sslx import optim
from sslx import transfer

HEAD_ONLY = "head"
TRAIN_FROM = (*models.LAYER_GROUPS, HEAD_ONLY)


def validate(config) -> None:
  c, problems = config.finetune, []
  if c.train_from not in TRAIN_FROM:
    problems.append(f"config.finetune.train_from={c.train_from!r}; valid: {', '.join(TRAIN_FROM)}.")
  if not c.epochs > 0:
    problems.append(f"config.finetune.epochs={c.epochs}; it must be > 0.")
  if not c.base_learning_rate > 0:
    problems.append(f"config.finetune.base_learning_rate={c.base_learning_rate}; it must be > 0.")
  if not c.backbone_lr_ratio >= 0:
    problems.append(f"config.finetune.backbone_lr_ratio={c.backbone_lr_ratio}; it must be >= 0.")
  if c.weight_decay < 0:
    problems.append(f"config.finetune.weight_decay={c.weight_decay}; it must be >= 0.")
  if problems:
    raise errors.ConfigError("Invalid config:\n  - " + "\n  - ".join(problems))


def layer_group(module_name: str) -> str:
  """'stem_conv' -> 'stem', 'stage3_block1' -> 'stage3'."""
  return "stem" if module_name.startswith("stem") else module_name.split("_")[0]


def param_labels(params, frozen_groups: int):
  """'head', 'encoder' or 'frozen' for every parameter leaf (optax.multi_transform labels)."""
  def label(path, _):
    if path[0].key == "head":
      return "head"
    group = models.LAYER_GROUPS.index(layer_group(path[1].key))
    return "frozen" if group < frozen_groups else "encoder"
  return jax.tree_util.tree_map_with_path(label, params)


def create_optimizer(params, *, frozen_groups: int, peak_lr: float, backbone_lr_ratio: float,
                     weight_decay: float, momentum: float, warmup_steps: int, train_steps: int):
  """SGD + Nesterov for the head and the trained encoder layers; frozen layers never change."""
  def sgd(scale):
    schedule = optim.warmup_cosine_schedule(peak_lr * scale, warmup_steps=warmup_steps,
                                            train_steps=train_steps)
    # Weight decay on kernels only, as in pretraining (optim.kernels_only).
    return optax.chain(optax.add_decayed_weights(weight_decay, mask=optim.kernels_only),
                       optax.sgd(schedule, momentum=momentum, nesterov=True))
  return optax.multi_transform(
      {"head": sgd(1.0), "encoder": sgd(backbone_lr_ratio), "frozen": optax.set_to_zero()},
      param_labels(params, frozen_groups))


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


@flax.struct.dataclass
class State:
  step: jax.Array
  params: dict
  batch_stats: dict  # {'encoder': ..., 'head': ...}
  opt_state: optax.OptState


def make_train_step(encoder, head, tx, mean, std, dtype):
  """(State, uint8 images [B, 1, S, S, 3], labels [B]) -> (State, metrics); cross-entropy."""
  def train_step(state, images, labels):
    x = augment.normalize(augment.to_float01(images[:, 0]), mean, std, dtype)

    def loss_fn(params):
      features, enc_updates = encoder.apply(
          {"params": params["encoder"], "batch_stats": state.batch_stats["encoder"]}, x,
          train=True, mutable=["batch_stats"])
      logits, head_updates = head.apply(
          {"params": params["head"], "batch_stats": state.batch_stats["head"]}, features,
          train=True, mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      batch_stats = {"encoder": enc_updates["batch_stats"], "head": head_updates["batch_stats"]}
      return loss, (batch_stats, jnp.mean(jnp.argmax(logits, -1) == labels))

    (loss, (batch_stats, accuracy)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new = State(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                batch_stats=batch_stats, opt_state=opt_state)
    return new, {"loss": loss, "train_accuracy": accuracy}
  return train_step


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  validate(config)
  c = config.finetune
  s = transfer.setup(config, workdir, batch_sizes=(config.batch_size, config.eval.batch_size),
                     need_labels=True)
  mesh, backbone, data_config, info, subset = s.mesh, s.backbone, s.data_config, s.info, s.subset
  num_labelled = s.num_labelled
  scratch = backbone.source["checkpoint"] == transfer.SCRATCH

  # From scratch every layer trains at the head's rate; otherwise as configured.
  frozen = 0 if scratch else TRAIN_FROM.index(c.train_from)
  ratio = 1.0 if scratch else c.backbone_lr_ratio
  dtype = jnp.dtype(config.dtype)
  encoder = models.create_encoder(backbone.model_config, dtype=dtype, frozen_groups=frozen)
  head = ClassifierHead(info.num_classes)
  dim = models.feature_dim(backbone.model_config)
  params = {"encoder": backbone.variables["params"],
            "head": None}
  head_variables = head.init(jax.random.PRNGKey(config.seed), jnp.zeros((1, dim)), train=False)
  params["head"] = head_variables["params"]
  steps = max(1, int(round(c.epochs * num_labelled / config.batch_size)))
  steps_per_epoch = num_labelled / config.batch_size
  tx = create_optimizer(params, frozen_groups=frozen,
                        peak_lr=c.base_learning_rate * config.batch_size / 256,
                        backbone_lr_ratio=ratio, weight_decay=c.weight_decay,
                        momentum=c.momentum, warmup_steps=int(round(c.warmup_epochs * steps_per_epoch)),
                        train_steps=steps)
  state = mesh_lib.replicate(State(step=jnp.zeros((), jnp.int32), params=params,
                                   batch_stats={"encoder": backbone.variables["batch_stats"],
                                                "head": head_variables["batch_stats"]},
                                   opt_state=tx.init(params)), mesh)
  logging.info("fine-tuning %s (%s) on %s: %d labelled images, %d steps of %d, layers from %s "
               "trained, encoder lr x%g", backbone.model_config.name,
               backbone.source["checkpoint"], info.name, num_labelled, steps, config.batch_size,
               TRAIN_FROM[frozen], ratio)

  train_step = jax.jit(make_train_step(encoder, head, tx, info.mean, info.std, dtype))

  batches = data.make_pretrain_iterator(
      data_config, ml_collections.ConfigDict({"v1": c.view}), global_batch_size=config.batch_size,
      seed=config.seed, split=info.train_split, indices=subset)
  # Training curves to TensorBoard (process 0), beside the final eval scalars.
  writer = (metric_writers.SummaryWriter(workdir) if jax.process_index() == 0
            else metric_writers.MultiWriter([]))
  for i in range(steps):
    batch = mesh_lib.to_global(next(batches), mesh)
    state, metrics = train_step(state, batch["images"], batch["label"])
    if (i + 1) % config.log_every_steps == 0 or i + 1 == steps:
      m = {f"finetune/{k}": float(v) for k, v in jax.device_get(metrics).items()}
      writer.write_scalars(i + 1, m)
      logging.info("fine-tune step %d/%d | loss %.4g | train accuracy %.3f", i + 1, steps,
                   m["finetune/loss"], m["finetune/train_accuracy"])
  writer.flush()

  # Test: the fine-tuned encoder in inference mode, then the head.
  state = jax.device_get(state)
  tuned = transfer.Backbone(backbone.model_config, {"params": state.params["encoder"],
                                                    "batch_stats": state.batch_stats["encoder"]},
                            backbone.source)
  extract = transfer.FeatureExtractor(tuned, info, data_config, mesh, dtype=dtype)
  test_x, test_y = extract("test", batch_size=config.eval.batch_size)
  logits = np.asarray(head.apply({"params": state.params["head"],
                                  "batch_stats": state.batch_stats["head"]},
                                 jnp.asarray(test_x), train=False))
  scores = linear_probe.top1_top5(logits, test_y, info.num_classes)
  results = dict(protocol="finetune", **scores,
                 **transfer.describe(config, backbone, info, num_labelled),
                 train_from=TRAIN_FROM[frozen], backbone_lr_ratio=ratio, train_steps=steps,
                 final_train_loss=float(metrics["loss"]))
  transfer.write_results(workdir, results, transfer.summary_line(
      "fine-tune" if not scratch else "supervised from scratch", results))
  return results
