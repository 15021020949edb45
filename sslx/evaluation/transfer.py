"""What the transfer evaluators share: the encoder to evaluate, data, results.

The evaluators (`knn_eval`, `linear_eval`, `finetune`) are method-agnostic:
they read only the encoder and the config of a pretraining checkpoint
(`checkpointing.load_encoder`, read-only), so they work for every method.

`config.checkpoint` is one of
  PRETRAIN_WORKDIR                    its newest checkpoint (or the step in
                                      `config.checkpoint_step`)
  PRETRAIN_WORKDIR/checkpoints/STEP   that step
  EXPORT_DIR                          an encoder `sslx.Encoder.save_portable` wrote
  PATH.pt (.pth)                      a torchvision or timm ResNet state_dict (e.g.
                                      ImageNet-pretrained weights as a fine-tuning start)
  random                              a randomly initialised encoder (seed
                                      `config.seed`), the baseline of every table
  scratch                             fine-tuning only: random init, and every
                                      layer trained at the head's learning rate
                                      (supervised training from scratch)
The architecture comes from the checkpoint; `config.model` fields left at None
follow it, fields that are set must agree with it (the backbone's
`identity_fields`). For random/scratch, None
fields (and `data.image_size`) come from `config.random_init_defaults`, the
evaluation preset's usual architecture.
"""

import dataclasses
import json
import os
import re
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sslx import data
from sslx import errors
from sslx import models
from sslx.config import validation as config_validation
from sslx.core import checkpointing
from sslx.core import mesh as mesh_lib
from sslx.core import summaries
from sslx.core import supervised_loop
from sslx.evaluation import compare
from sslx.evaluation import features as features_lib
from sslx.export import portable
from sslx.export import torch_resnet

TORCH_SUFFIXES = (".pt", ".pth", ".bin")

PyTree = Any
RANDOM, SCRATCH = "random", "scratch"


@dataclasses.dataclass
class LoadedEncoder:
  """The encoder under evaluation and where it came from."""
  model_config: ml_collections.ConfigDict  # the architecture (the backbone's identity fields)
  variables: PyTree  # {'params', 'batch_stats'}, on the local device
  source: dict[str, Any]  # checkpoint path, step, method, pretraining data


def parse_checkpoint(spec: str | None, step: int | None) -> tuple[str, int | None]:
  """`config.checkpoint` (and `checkpoint_step`) -> (workdir or 'random'/'scratch', step)."""
  if not spec:
    raise errors.ConfigError(
        "config.checkpoint is not set: give a pretraining workdir "
        "(--config.checkpoint=/tmp/byol), one of its steps (/tmp/byol/checkpoints/600), "
        "or 'random' for a randomly initialised encoder.")
  if spec in (RANDOM, SCRATCH):
    return spec, None
  path = os.path.abspath(os.path.expanduser(spec.rstrip("/")))
  match = re.fullmatch(r"(.*)/checkpoints/(\d+)", path)
  if match:
    if step is not None and step != int(match.group(2)):
      raise errors.ConfigError(f"config.checkpoint names step {match.group(2)} but "
                               f"config.checkpoint_step={step}; give one of them.")
    return match.group(1), int(match.group(2))
  return path, step


def _model_from(config, checkpoint_model: dict | None) -> ml_collections.ConfigDict:
  """The architecture: the checkpoint's (or the default), checked against set config fields."""
  base = dict(config.random_init_defaults.model.to_dict() if checkpoint_model is None
              else checkpoint_model)
  asked = {k: v for k, v in config.model.items() if v is not None}
  name = asked.get("name", base.get("name"))
  models.BACKBONES.check(name)
  fields = models.BACKBONES.get(name).identity_fields
  unknown = sorted(set(asked) - set(fields))
  if unknown:
    raise errors.ConfigError(f"config.model.{unknown[0]} is not a field of {name}; its fields "
                             f"are {', '.join(fields)}.")
  # Identity fields a checkpoint predates take the backbone's default.
  identity = dict(models.get_backbone(ml_collections.ConfigDict(base)).identity())
  if checkpoint_model is not None:
    differs = {k: v for k, v in asked.items() if identity.get(k) != v}
    if differs:
      got = ", ".join(f"{k}={identity.get(k)!r}" for k in differs)
      want = ", ".join(f"model.{k}={v!r}" for k, v in differs.items())
      raise errors.CheckpointError(
          f"The checkpoint {config.checkpoint} holds a different architecture ({got}) than the "
          f"config asks for ({want}). Leave config.model unset to use the checkpoint's.")
  identity.update(asked)
  return ml_collections.ConfigDict(identity)


def load_backbone(config) -> LoadedEncoder:
  """The encoder named by `config.checkpoint`, with its architecture and provenance."""
  workdir, step = parse_checkpoint(config.checkpoint, config.get("checkpoint_step"))
  if workdir in (RANDOM, SCRATCH):
    model_config = _model_from(config, None)
    encoder = models.create_encoder(model_config)
    size = config.data.image_size or config.random_init_defaults.image_size
    variables = models.init_variables(encoder, config.seed + 1, jnp.zeros((1, size, size, 3)))
    return LoadedEncoder(model_config, variables, dict(
        checkpoint=workdir, step=None, method=None, pretrain_dataset=None,
        pretrain_image_size=None))
  if workdir.endswith(TORCH_SUFFIXES) or portable.is_portable(workdir):
    return _load_export(config, workdir, step)
  variables, pretrain_config, step = checkpointing.load_encoder(workdir, step)
  model_config = _model_from(config, pretrain_config["model"])
  _check_shapes(model_config, variables, f"{workdir}/checkpoints/{step}",
                pretrain_config["data"]["image_size"])
  return LoadedEncoder(model_config, variables, dict(
      checkpoint=f"{checkpointing.checkpoint_dir(workdir)}/{step}", step=step,
      method=pretrain_config.get("method"),
      pretrain_dataset=pretrain_config["data"]["dataset"],
      pretrain_image_size=pretrain_config["data"]["image_size"]))


def _load_export(config, path: str, step: int | None) -> LoadedEncoder:
  """A torch ResNet state_dict or a portable export as the encoder to evaluate."""
  if step is not None:
    raise errors.ConfigError(f"config.checkpoint_step={step}, but {path} is an exported encoder "
                             "with one set of weights; leave checkpoint_step unset.")
  if path.endswith(TORCH_SUFFIXES):
    if not os.path.isfile(path):
      raise errors.CheckpointError(f"There is no state_dict file {path}.")
    variables, model = torch_resnet.load(path)
    source = dict(checkpoint=path, step=None, method=None, pretrain_dataset=None,
                  pretrain_image_size=None, format="torch state_dict")
  else:
    variables, description = portable.load(path)
    model = description["model"]
    source = dict(description["source"], checkpoint=path, format=portable.FORMAT,
                  exported_from=description["source"].get("checkpoint"),
                  pretrain_image_size=description["input"]["image_size"],
                  input=description["input"])
  model_config = _model_from(config, model)
  if source["pretrain_image_size"]:  # (torch_resnet.load checked its own tree's shapes)
    _check_shapes(model_config, variables, path, source["pretrain_image_size"])
  return LoadedEncoder(model_config, variables, source)


def _check_shapes(model_config, variables, where: str, image_size: int) -> None:
  """The restored tree must be exactly what the architecture's init would build."""
  encoder = models.create_encoder(model_config)
  expected = jax.eval_shape(lambda: encoder.init(
      jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, 3)), train=False))
  shape_of = lambda tree: {"/".join(str(getattr(k, "key", k)) for k in path): tuple(v.shape)
                           for path, v in jax.tree_util.tree_leaves_with_path(tree)}
  want, got = shape_of(dict(expected)), shape_of(variables)
  if want != got:
    diff = sorted(set(want.items()) ^ set(got.items()))[:4]
    described = ", ".join(f"{k} {v}" for k, v in model_config.items())
    raise errors.CheckpointError(
        f"The encoder in {where} does not match its recorded architecture ({described}); "
        f"first differences (path, shape): {diff}. The checkpoint may be corrupt.")


def resolve_data_config(config, backbone: LoadedEncoder) -> ml_collections.ConfigDict:
  """`config.data` with the image size filled in: by default the pretraining size.

  Images of another size are resized (shorter side, then centre crop) to
  `data.image_size`; leaving it None uses the size the encoder was pretrained
  at, the usual transfer setting for ResNets.
  """
  data_config = ml_collections.ConfigDict(config.data.to_dict())
  if data_config.image_size is None:
    data_config.image_size = (backbone.source["pretrain_image_size"]
                              or config.random_init_defaults.image_size)
  elif (backbone.source["pretrain_image_size"]
        and data_config.image_size != backbone.source["pretrain_image_size"]):
    logging.warning("Evaluating at %d px an encoder pretrained at %d px (config.data.image_size).",
                    data_config.image_size, backbone.source["pretrain_image_size"])
  return data_config


@dataclasses.dataclass
class Setup:
  """What every evaluator starts from."""
  mesh: Any
  backbone: LoadedEncoder
  data_config: ml_collections.ConfigDict
  info: data.DatasetInfo
  subset: np.ndarray | None  # indices of the labelled train subset; None: all of it
  labels: np.ndarray | None  # labels of the whole train split, if read

  @property
  def num_labelled(self) -> int:
    return len(self.subset) if self.subset is not None else len(self.labels)


def setup(config, workdir: str, *, batch_sizes, need_labels: bool = False) -> Setup:
  """Devices, the encoder, the evaluation data and the labelled subset; checks first.

  `batch_sizes` must each divide over the devices. With `need_labels`, the
  train split's labels are read (once, shared with the subset choice).
  """
  mesh_lib.initialize_distributed(config.distributed)
  mesh = mesh_lib.create_mesh(config.num_devices)
  for batch_size in batch_sizes:
    mesh_lib.check_batch_size(batch_size, mesh.devices.size)
  backbone = load_backbone(config)
  layer_problems = config_validation.feature_layer_problems(
      config.eval.feature_layer, config.eval.feature_grid,
      models.get_backbone(backbone.model_config).feature_map_names)
  if layer_problems:
    raise errors.ConfigError.from_problems(layer_problems)
  check_workdir(workdir, backbone)
  data_config = resolve_data_config(config, backbone)
  info = data.get_dataset_info(data_config)
  if not info.num_classes or info.train_split is None:
    raise errors.ConfigError(f"{info.name} has no labelled train split to evaluate with.")
  if info.test_split is None:
    raise errors.ConfigError(f"{info.name} has no test split to evaluate on.")
  subset, labels = data.subsets.label_subset(
      data_config, info.train_split, fraction=config.label_fraction,
      per_class=config.get("labels_per_class"), seed=config.seed)
  if need_labels and labels is None:
    labels = data.subsets.read_labels(data_config, info.train_split)
  return Setup(mesh, backbone, data_config, info, subset, labels)


def feature_extractor(loaded: LoadedEncoder, info: data.DatasetInfo, data_config, mesh,
                      dtype=jnp.float32, *, layer: str | None = None,
                      grid: int = 1) -> features_lib.FeatureExtractor:
  """Frozen-encoder features (inference-mode BN, centre crops) of the loaded encoder.

  `layer`, `grid`: `config.eval.feature_layer` and `feature_grid` (the pooled
  output by default).
  """
  return features_lib.FeatureExtractor(
      models.create_encoder(loaded.model_config, dtype=dtype), loaded.variables,
      data_config=data_config, mean=info.mean, std=info.std, mesh=mesh, dtype=dtype,
      layer=layer, grid=grid)


def labelled_batches(config, data_config, info: data.DatasetInfo, view, indices):
  """start_step -> the augmented stream of the labelled train images `indices` (one crop each).

  What the supervised jobs train on: `view` is their crop-and-flip view group
  (`finetune.view`, `linear.view`); the stream restarts exactly at any step.
  """
  views = ml_collections.ConfigDict({"v1": view})

  def batches_from(start_step: int):
    return data.make_pretrain_iterator(
        data_config, views, global_batch_size=config.batch_size, seed=config.seed,
        split=info.train_split, indices=indices, start_step=start_step)
  return batches_from


def supervised_loop_for(config, workdir: str, mesh, loaded: LoadedEncoder, *, section: str,
                        name: str, num_steps: int) -> supervised_loop.Loop:
  """The safe loop of a transfer job; its checkpoints are tied to this encoder and setting."""
  identity = dict(supervised_loop.describe_for_resume(config, section),
                  encoder=loaded.source["checkpoint"], encoder_step=loaded.source["step"])
  return supervised_loop.Loop(name=name, workdir=workdir, config=config, mesh=mesh,
                              num_steps=num_steps, identity=identity, metric_prefix=section)


def describe(config, backbone: LoadedEncoder, info: data.DatasetInfo, num_labelled: int) -> dict:
  """The provenance fields every eval_results.json carries."""
  return dict(
      checkpoint=backbone.source["checkpoint"], step=backbone.source["step"],
      method=backbone.source["method"], pretrain_dataset=backbone.source["pretrain_dataset"],
      model=backbone.model_config.to_dict(), dataset=info.name, split=info.test_split,
      train_split=info.train_split,
      label_fraction=None if config.get("labels_per_class") else config.label_fraction,
      labels_per_class=config.get("labels_per_class"), num_labelled=int(num_labelled),
      seed=config.seed, feature_layer=config.eval.get("feature_layer"),
      feature_grid=config.eval.get("feature_grid", 1))


def check_workdir(workdir: str, backbone: LoadedEncoder) -> None:
  """The evaluator writes beside, never into, the pretraining run, and can write there."""
  ckpt = backbone.source["checkpoint"]
  if ckpt not in (RANDOM, SCRATCH):
    pretrain_workdir = os.path.dirname(os.path.dirname(ckpt))
    if os.path.abspath(workdir) == pretrain_workdir:
      raise errors.ConfigError(
          f"--workdir is the pretraining workdir {pretrain_workdir}; give the evaluation its own "
          f"directory (e.g. {pretrain_workdir}/eval_{{protocol}}) so it cannot touch the "
          "pretraining checkpoints or logs.")
  checkpointing.check_writable(workdir)


def write_results(workdir: str, results: dict, summary: str) -> None:
  """eval_results.json, TensorBoard scalars (at the checkpoint's step) and one printed line."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, compare.EVAL_FILE), "w") as f:
      json.dump(results, f, indent=2)
    writer = summaries.Writer(workdir)
    scalars = {f"eval/{results['protocol']}_{k}": v for k, v in results.items()
               if k in ("top1", "top5") or k.startswith("train_top1")}
    writer.write_scalars(int(results.get("step") or 0), scalars)
    writer.flush()
    writer.close()
  print(summary, flush=True)


def summary_line(protocol: str, results: dict) -> str:
  top5 = f", top-5 {results['top5']:.1%}" if "top5" in results else ""
  labels = (f"{results['labels_per_class']} labels per class" if results["labels_per_class"]
            else f"{results['label_fraction']:.0%} of labels")
  source = ("random init" if results["checkpoint"] == RANDOM
            else "from scratch" if results["checkpoint"] == SCRATCH
            else f"{results['checkpoint']} ({results['method']})")
  protocol += features_lib.describe(results.get("feature_layer"), results.get("feature_grid", 1))
  return (f"{protocol} on {results['dataset']} {results['split']}: top-1 {results['top1']:.1%}"
          f"{top5} | {labels} ({results['num_labelled']} images), seed {results['seed']} | "
          f"{source}")
