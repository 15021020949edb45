"""What the transfer evaluators share: the encoder to evaluate, its input, data, results.

The evaluators (`knn_eval`, `linear_eval`, `finetune`) are method-agnostic:
they read only a checkpoint's encoder, its record (architecture and input
preprocessing) and config (`checkpointing.read_encoder`, read-only), so they
work for every method, and for a fine-tuning run's encoder too.

`config.checkpoint` is one of
  TRAINING_WORKDIR                    its newest checkpoint (or the step in
                                      `config.checkpoint_step`)
  TRAINING_WORKDIR/checkpoints/STEP   that step
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
`identity_fields`). So does the input: the encoder is fed exactly as it was
trained (`resolve_preprocessing`), whatever the evaluation dataset's own
statistics. For random/scratch the architecture and input are the preset's
(`config.random_init_defaults`) or, with `random_init_defaults.like`, those of
a named checkpoint, so that the comparison is about weights alone.
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
from sslx.core import loop as loop_lib
from sslx.core import summaries
from sslx.data import info as info_lib
from sslx.data.info import Preprocessing
from sslx.evaluation import compare
from sslx.evaluation import features as features_lib
from sslx.export import portable
from sslx.export import torch_resnet

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
IMAGENET_MEAN, IMAGENET_STD = info_lib.IMAGENET_MEAN, info_lib.IMAGENET_STD

PyTree = Any
RANDOM, SCRATCH = compare.RANDOM, compare.SCRATCH


@dataclasses.dataclass
class LoadedEncoder:
  """The encoder under evaluation, what it is fed, and where it came from."""
  model_config: ml_collections.ConfigDict  # the architecture (the backbone's identity fields)
  variables: PyTree  # {'params', 'batch_stats'}, on the local device
  preprocessing: Preprocessing  # its input, as saved with it
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


def _random_init(config, kind: str) -> LoadedEncoder:
  """A randomly initialised encoder: the preset's architecture and input, or with
  `random_init_defaults.like` those of that checkpoint (the comparison is then weights alone)."""
  defaults = config.random_init_defaults
  like = defaults.get("like")
  if like:
    template = load_backbone(ml_collections.ConfigDict(
        {"checkpoint": like, "checkpoint_step": None, "model": config.model.to_dict(),
         "random_init_defaults": defaults.to_dict()}))
    model_config, prep = template.model_config, template.preprocessing
  else:
    model_config = _model_from(config, None)
    prep = Preprocessing(image_size=defaults.image_size, mean=tuple(defaults.mean),
                         std=tuple(defaults.std), crop_fraction=defaults.crop_fraction,
                         grey=defaults.grey)
  encoder = models.create_encoder(model_config)
  size = config.get("data", {}).get("image_size") or prep.image_size
  variables = models.init_variables(encoder, config.seed + 1, jnp.zeros((1, size, size, 3)))
  return LoadedEncoder(model_config, variables, prep, dict(
      checkpoint=kind, step=None, method=None, pretrain_dataset=None, like=like or None))


def load_backbone(config) -> LoadedEncoder:
  """The encoder named by `config.checkpoint`, with its architecture, input and provenance."""
  workdir, step = parse_checkpoint(config.checkpoint, config.get("checkpoint_step"))
  if workdir in (RANDOM, SCRATCH):
    return _random_init(config, workdir)
  if workdir.endswith(TORCH_SUFFIXES) or portable.is_portable(workdir):
    return _load_export(config, workdir, step)
  saved = checkpointing.read_encoder(workdir, step)
  record = saved.record
  return LoadedEncoder(
      _model_from(config, record["model"]), saved.variables,
      Preprocessing.from_dict(record["preprocessing"]), dict(
          checkpoint=f"{checkpointing.checkpoint_dir(workdir)}/{saved.step}", step=saved.step,
          method=saved.config.get("method"), job=saved.config.get("job", "pretrain"),
          pretrain_dataset=saved.config.get("data", {}).get("dataset"),
          pretrain_data_dir=saved.config.get("data", {}).get("data_dir")))


def _load_export(config, path: str, step: int | None) -> LoadedEncoder:
  """A torch ResNet state_dict or a portable export as the encoder to evaluate."""
  if step is not None:
    raise errors.ConfigError(f"config.checkpoint_step={step}, but {path} is an exported encoder "
                             "with one set of weights; leave checkpoint_step unset.")
  if path.endswith(TORCH_SUFFIXES):
    if not os.path.isfile(path):
      raise errors.CheckpointError(f"There is no state_dict file {path}.")
    variables, model = torch_resnet.load(path)
    # A state_dict carries no preprocessing: torchvision's ImageNet statistics, at the size
    # the config asks for (or 224 px, torchvision's).
    size = (config.get("data", {}).get("image_size")
            or config.get("random_init_defaults", {}).get("image_size") or 224)
    prep = Preprocessing(image_size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    source = dict(checkpoint=path, step=None, method=None, pretrain_dataset=None,
                  format="torch state_dict")
  else:
    variables, description = portable.load(path)
    model = description["model"]
    prep = Preprocessing.from_dict(description["input"])
    source = dict(description["source"], checkpoint=path, format=portable.FORMAT,
                  exported_from=description["source"].get("checkpoint"))
  model_config = _model_from(config, model)
  if not path.endswith(TORCH_SUFFIXES):  # (torch_resnet.load checked its own tree's shapes)
    models.check_variables(model_config, variables, path, prep.image_size)
  return LoadedEncoder(model_config, variables, prep, source)


def resolve_preprocessing(config, backbone: LoadedEncoder) -> Preprocessing:
  """The encoder's input, with what the config sets explicitly overriding it.

  By default an evaluator feeds the encoder exactly what it was trained on
  (size, centre crop, grey, mean and std). `data.image_size`,
  `data.eval_crop_fraction` and `data.grey`, when set, override those (with
  a warning for the size: transfer at another resolution is a choice).
  """
  prep, d = backbone.preprocessing, config.data
  size = d.get("image_size")
  if size is not None and size != prep.image_size:
    logging.warning("Evaluating at %d px an encoder trained at %d px (config.data.image_size).",
                    size, prep.image_size)
  overrides = dict(image_size=size, crop_fraction=d.get("eval_crop_fraction"),
                   grey=d.get("grey"))
  return dataclasses.replace(prep, **{k: v for k, v in overrides.items() if v is not None})


def evaluation_data(config, backbone: LoadedEncoder) -> ml_collections.ConfigDict:
  """`config.data`, its dataset (and data_dir) the checkpoint's own where the config sets none."""
  data_config = ml_collections.ConfigDict(config.data.to_dict())
  if not data_config.dataset:
    own = backbone.source.get("pretrain_dataset")
    data_config.dataset = own or config.random_init_defaults.dataset
    if data_config.get("data_dir") is None:
      data_config.data_dir = backbone.source.get("pretrain_data_dir")
    logging.info("evaluating on %s, %s (--config.data.dataset chooses another)",
                 data_config.dataset, "the dataset the encoder was trained on" if own
                 else "the preset's dataset")
  return data_config


@dataclasses.dataclass
class Setup:
  """What every evaluator starts from."""
  mesh: Any
  backbone: LoadedEncoder
  preprocessing: Preprocessing  # what the encoder is fed
  data_config: ml_collections.ConfigDict  # config.data, its pipeline making that input
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
  prep = resolve_preprocessing(config, backbone)
  data_config = prep.data_config(evaluation_data(config, backbone))
  info = data.get_dataset_info(data_config)
  if not info.num_classes or info.train_split is None:
    raise errors.ConfigError(f"{info.name} has no labelled train split to evaluate with.")
  if info.test_split is None:
    raise errors.ConfigError(f"{info.name} has no test split to evaluate on.")
  logging.info("evaluating %s on %s, fed as it was trained: %s", backbone.source["checkpoint"],
               info.name, prep.describe())
  subset, labels = data.subsets.label_subset(
      data_config, info.train_split, fraction=config.label_fraction,
      per_class=config.get("labels_per_class"), seed=config.seed)
  if need_labels and labels is None:
    labels = data.subsets.read_labels(data_config, info.train_split)
  return Setup(mesh, backbone, prep, data_config, info, subset, labels)


def feature_extractor(s: Setup, dtype=jnp.float32, *, layer: str | None = None,
                      grid: int = 1) -> features_lib.FeatureExtractor:
  """Frozen-encoder features (inference-mode BN, the encoder's own input) of the set-up encoder.

  `layer`, `grid`: `config.eval.feature_layer` and `feature_grid` (the pooled
  output by default).
  """
  return features_lib.FeatureExtractor(
      models.create_encoder(s.backbone.model_config, dtype=dtype), s.backbone.variables,
      data_config=s.data_config, preprocessing=s.preprocessing, mesh=s.mesh, dtype=dtype,
      layer=layer, grid=grid)


def labelled_batches(config, s: Setup, view, indices):
  """start_step -> the augmented stream of the labelled train images `indices` (one crop each).

  What the supervised jobs train on: `view` is their crop-and-flip view group
  (`finetune.view`, `linear.view`); the stream restarts exactly at any step.
  """
  views = ml_collections.ConfigDict({"v1": view})

  def batches_from(start_step: int):
    return data.make_pretrain_iterator(
        s.data_config, views, global_batch_size=config.batch_size, seed=config.seed,
        split=s.info.train_split, indices=indices, start_step=start_step)
  return batches_from


# What a transfer job's checkpoint means (sslx.core.checkpointing.Identity): the encoder it
# started from, the labelled subset, the data, the batch and the job's own section.
_FINGERPRINT_FIELDS = ("job", "checkpoint", "checkpoint_step", "seed", "batch_size",
                       "label_fraction", "labels_per_class", "data.dataset", "data.image_size",
                       "data.grey", "data.eval_crop_fraction", "eval.feature_layer",
                       "eval.feature_grid", "random_init_defaults")


def fingerprint(config: dict, section: str, process_count: int | None = None) -> dict[str, Any]:
  def get(path):
    node = config
    for key in path.split("."):
      node = node.get(key) if isinstance(node, dict) else None
    return node
  fields = {path: get(path) for path in _FINGERPRINT_FIELDS + (section,)}
  flat = checkpointing.flatten(fields)
  if process_count is not None and not info_lib.reads_by_index(get("data.dataset") or ""):
    flat["process_count"] = process_count
  return flat


def training_loop(config, workdir: str, s: Setup, *, section: str, name: str, num_steps: int,
                  keeps_encoder: bool) -> loop_lib.Loop:
  """The loop of a transfer job that trains (fine-tuning, the augmented probe), checkpointed
  in `workdir`; its checkpoints record the encoder (`keeps_encoder`: under params/encoder)."""
  config_dict = json.loads(config.to_json())
  encoder = None
  if keeps_encoder:
    encoder = {"params": ["encoder"], "batch_stats": ["encoder"],
               "model": s.backbone.model_config.to_dict(),
               "preprocessing": s.preprocessing.to_dict()}
  identity = checkpointing.Identity(
      fingerprint=fingerprint(config_dict, section, jax.process_count()),
      of_config=lambda saved: fingerprint(saved, section), config=config, encoder=encoder,
      allowed_changes=checkpointing.parse_allowed(config.get("resume_changes")))
  ckpt = checkpointing.Checkpointer(workdir, max_to_keep=config.keep_checkpoints,
                                    identity=identity)
  return loop_lib.Loop(config=config, mesh=s.mesh, num_steps=num_steps,
                       global_batch_size=config.batch_size, checkpointer=ckpt,
                       writer=summaries.Writer(workdir), name=name, metric_prefix=section)


def describe(config, s: Setup, num_labelled: int) -> dict:
  """The provenance fields every eval_results.json carries."""
  backbone, info = s.backbone, s.info
  return dict(
      checkpoint=backbone.source["checkpoint"], step=backbone.source["step"],
      method=backbone.source["method"], pretrain_dataset=backbone.source["pretrain_dataset"],
      model=backbone.model_config.to_dict(), preprocessing=s.preprocessing.to_dict(),
      dataset=info.name, split=info.test_split, train_split=info.train_split,
      label_fraction=None if config.get("labels_per_class") else config.label_fraction,
      labels_per_class=config.get("labels_per_class"), num_labelled=int(num_labelled),
      seed=config.seed, feature_layer=config.eval.get("feature_layer"),
      feature_grid=config.eval.get("feature_grid", 1))


def check_workdir(workdir: str, backbone) -> None:
  """The evaluator writes beside, never into, the training run it reads, and can write there."""
  ckpt = backbone.source["checkpoint"]
  if ckpt not in (RANDOM, SCRATCH):
    pretrain_workdir = os.path.dirname(os.path.dirname(ckpt))
    if os.path.abspath(workdir) == pretrain_workdir:
      raise errors.ConfigError(
          f"--workdir is the workdir of the run it evaluates, {pretrain_workdir}; give the "
          f"evaluation its own directory (e.g. {pretrain_workdir}/eval_{{protocol}}) so it "
          "cannot touch that run's checkpoints or logs.")
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
