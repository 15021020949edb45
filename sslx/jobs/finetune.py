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

The run is on the one training loop (sslx/core/loop.py): checkpoints in
WORKDIR/checkpoints, resumed by a rerun, SIGTERM -> save and exit 75, a
non-finite step stops it before it is saved. Its checkpoints record the
fine-tuned encoder, so `sslx.load_encoder` and every evaluator read a
fine-tuning workdir as they read a pretraining one. The step, head and
optimizer are sslx/evaluation/finetuning.py's; layer groups come from the
backbone (`Backbone.layer_groups`), so `train_from` takes whatever groups the
encoder declares. The encoder is fed as it was trained (its checkpoint's
preprocessing).
"""

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sslx import errors
from sslx import models
from sslx.core import mesh as mesh_lib
from sslx.core import optim
from sslx.core import rngs as rngs_lib
from sslx.core.train_state import TrainState
from sslx.evaluation import features as features_lib
from sslx.evaluation import finetuning
from sslx.evaluation import metrics as metrics_lib
from sslx.evaluation import transfer


def validate(config) -> None:
  c, problems = config.finetune, []
  if c.train_from is not None and (not isinstance(c.train_from, str) or not c.train_from):
    problems.append(f"config.finetune.train_from={c.train_from!r}; name a layer group of the "
                    f"encoder (ResNet: stem, stage1..stage4) or {finetuning.HEAD_ONLY!r}.")
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


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  validate(config)
  c = config.finetune
  s = transfer.setup(config, workdir, batch_sizes=(config.batch_size, config.eval.batch_size),
                     need_labels=True)
  mesh, loaded, info = s.mesh, s.backbone, s.info
  backbone = models.get_backbone(loaded.model_config)
  choices = finetuning.train_from_choices(backbone)
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
  head = finetuning.ClassifierHead(info.num_classes)
  root = rngs_lib.seed_key(config.seed)
  head_params, head_stats = finetuning.init_head(head, rngs_lib.derive(root, "init/head"),
                                                 backbone.feature_dim)
  params = {"encoder": loaded.variables["params"], "head": head_params}
  steps = max(1, int(round(c.epochs * num_labelled / config.batch_size)))
  steps_per_epoch = num_labelled / config.batch_size
  warmup, note = optim.fit_warmup(
      optim.configured_warmup_steps(c.warmup_epochs, steps_per_epoch), steps,
      f"config.finetune.warmup_epochs={c.warmup_epochs}")
  if note:
    logging.warning("%s", note)
  tx = finetuning.create_optimizer(params, backbone=backbone, frozen_groups=frozen,
                                   peak_lr=c.base_learning_rate * config.batch_size / 256,
                                   backbone_lr_ratio=ratio, weight_decay=c.weight_decay,
                                   momentum=c.momentum, warmup_steps=warmup, train_steps=steps)
  state = mesh_lib.replicate(TrainState.create(
      params=params, batch_stats={"encoder": loaded.variables["batch_stats"], "head": head_stats},
      opt_state=tx.init(params), rng=rngs_lib.derive(root, "train")), mesh)
  logging.info("fine-tuning %s (%s) on %s: %d labelled images, %d steps of %d, layers from %s "
               "trained, encoder lr x%g", loaded.model_config.name,
               loaded.source["checkpoint"], info.name, num_labelled, steps, config.batch_size,
               choices[frozen], ratio)

  train_step = jax.jit(finetuning.make_train_step(encoder, head, tx, s.preprocessing, dtype,
                                                  config.nonfinite.action), donate_argnums=0)
  loop = transfer.training_loop(config, workdir, s, section="finetune", name="fine-tune",
                                num_steps=steps, keeps_encoder=True)
  state, last = loop.run(state, train_step,
                         transfer.labelled_batches(config, s, c.view, s.subset))

  # Test: the fine-tuned encoder in inference mode, then the head.
  state = jax.device_get(state)
  extract = features_lib.FeatureExtractor(
      backbone.module(dtype), {"params": state.params["encoder"],
                               "batch_stats": state.batch_stats["encoder"]},
      data_config=s.data_config, preprocessing=s.preprocessing, mesh=mesh, dtype=dtype)
  test_x, test_y = extract("test", batch_size=config.eval.batch_size)
  logits = np.asarray(head.apply({"params": state.params["head"],
                                  "batch_stats": state.batch_stats["head"]},
                                 jnp.asarray(test_x), train=False))
  scores = metrics_lib.top1_top5(logits, test_y, info.num_classes)
  results = dict(protocol="finetune", **scores, **transfer.describe(config, s, num_labelled),
                 train_from=choices[frozen], backbone_lr_ratio=ratio, train_steps=steps,
                 final_train_loss=last.get("loss"))
  transfer.write_results(workdir, results, transfer.summary_line(
      "fine-tune" if not scratch else "supervised from scratch", results))
  return results
