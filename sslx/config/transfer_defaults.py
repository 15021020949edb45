"""Defaults shared by the transfer-evaluation configs (configs/knn_eval.py,
configs/linear_eval.py, configs/finetune.py). Every field is documented here once.
"""

import copy

import ml_collections

from sslx.config import defaults as config_defaults
from sslx.data import info as data_info

placeholder = ml_collections.config_dict.placeholder


def transfer_view(**overrides) -> ml_collections.ConfigDict:
  """Supervised train-time augmentation: random resized crop and flip, no colour."""
  return config_defaults.view(color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0,
                              solarize_prob=0.0, **overrides)


# The evaluation dataset's presets (as config_defaults.PRESETS); '' (no preset): the dataset
# the checkpoint was trained on, with the digit preset's recipe.
PRESETS = config_defaults.PRESETS
DEFAULT_RECIPE = "mnist5k"


def base_transfer_config(job: str, preset: str, config_file: str) -> ml_collections.ConfigDict:
  """The evaluation config of `job` on the dataset of `preset` (as in config_defaults.PRESETS).

  Without a preset the dataset is left unset: the evaluators then read the dataset the
  checkpoint was trained on (and say so).
  """
  # Start from a pretraining config only to read the preset's data and model defaults.
  pretrain = config_defaults.base_config()
  config_defaults.apply_dataset_preset(pretrain, preset or DEFAULT_RECIPE, config_file)

  c = ml_collections.ConfigDict()
  c.job = job
  # What to evaluate: a pretraining workdir (its newest step), WORKDIR/checkpoints/STEP,
  # 'random' (randomly initialised encoder) or, for finetune, 'scratch'.
  c.checkpoint = placeholder(str)
  c.checkpoint_step = placeholder(int)  # a step of the workdir in `checkpoint`
  c.seed = 0  # the label subset, the held-out split, the head init and the data order
  c.dtype = "float32"

  c.data = copy.deepcopy(pretrain.data)  # (a deep copy keeps the placeholders' types)
  # The evaluation dataset; None: the checkpoint's own (its data_dir too, unless set here).
  c.data.dataset = placeholder(str) if not preset or preset == "folder" else pretrain.data.dataset
  # The encoder is fed exactly as it was trained (its checkpoint's preprocessing: size,
  # centre crop, grey, mean and std), whatever this dataset's own statistics. Set these to
  # override that: the image size the images are resized to, the centre crop fraction,
  # and grey lightness input.
  c.data.image_size = placeholder(int)
  c.data.eval_crop_fraction = placeholder(float)
  c.data.grey = placeholder(bool)
  # Architecture: None fields follow the checkpoint; set fields must match it.
  c.model = ml_collections.ConfigDict(dict(
      name=placeholder(str), width=placeholder(float), stem=placeholder(str),
      zero_init_residual=placeholder(bool)))
  # For checkpoint=random/scratch: the architecture and input of the encoder, where
  # config.model / config.data leave them unset: the preset's pretraining ones, so that a
  # random encoder is fed as the preset's pretrained encoders are. `like`: a checkpoint (or
  # export) whose architecture and input to take instead, to compare weights alone.
  mean, std = data_info.normalization(pretrain.data.dataset or "folder:")
  c.random_init_defaults = ml_collections.ConfigDict(dict(
      model=dict(pretrain.model.to_dict(), zero_init_residual=False),
      dataset=pretrain.data.dataset or "mnist5k",  # what a random encoder is evaluated on by default
      image_size=pretrain.data.image_size, mean=mean, std=std,
      crop_fraction=pretrain.data.eval_crop_fraction, grey=pretrain.data.grey,
      like=placeholder(str)))

  # Few labels: a class-stratified subset of the labelled train split, fixed by
  # `seed`: a fraction (0.01, 0.1, 1.0) or, if set, N images per class.
  c.label_fraction = 1.0
  c.labels_per_class = placeholder(int)

  c.batch_size = 256  # global training batch (linear probe with augmentation, fine-tuning)
  c.eval = ml_collections.ConfigDict(dict(
      batch_size=512,  # feature extraction / test batches
      # kNN and linear probe: None reads the encoder's pooled output; a feature
      # map name ('stage3', ...) reads that map average-pooled over a
      # feature_grid x feature_grid partition (sslx/evaluation/features.py).
      # Fine-tuning always trains its head on the pooled output.
      feature_layer=ml_collections.config_dict.placeholder(str),
      feature_grid=1,
  ))

  c.knn = ml_collections.ConfigDict(dict(k=pretrain.eval.knn_k, temperature=0.1))

  c.linear = ml_collections.ConfigDict(dict(
      # False: precomputed centre-crop features, L-BFGS logistic regression
      # (the fast path). True: SGD with Nesterov momentum on features of
      # randomly cropped and flipped images, every (lr, wd) of the grid trained
      # at once as parallel heads on the same frozen features.
      augment=False,
      holdout_fraction=0.1,  # of the labelled train subset, for choosing the hyperparameters
      l2_grid=(1e-5, 1e-4, 1e-3, 1e-2, 1e-1),  # L-BFGS path
      learning_rates=(0.01, 0.03, 0.1, 0.3, 1.0),  # augmented path, x batch/256
      weight_decays=(0.0, 1e-4),
      epochs=30.0,
      momentum=0.9,
      view=transfer_view(),
  ))

  c.finetune = ml_collections.ConfigDict(dict(
      # Train this layer group and the ones after it; earlier groups are
      # frozen (no updates, BatchNorm statistics kept). None trains the whole
      # encoder (ResNet: as 'stem'), 'head' only the new linear head; the
      # groups are the backbone's (ResNet: stem, stage1, ..., stage4).
      train_from=placeholder(str),
      epochs=30.0,  # over the labelled subset; SimCLR: 60 for 1%, 30 for 10% labels
      base_learning_rate=0.05,  # the head's, x batch/256 (SimCLR Appendix B.5)
      backbone_lr_ratio=0.1,  # encoder learning rate = ratio x the head's
      weight_decay=0.0,  # SimCLR fine-tunes without weight decay
      momentum=0.9,  # Nesterov
      warmup_epochs=0.0,
      view=transfer_view(),
  ))

  c.log_every_steps = 50
  # The supervised loop (fine-tuning, augmented linear probe): checkpoints in
  # WORKDIR/checkpoints every this many steps and at the end, the newest
  # `keep_checkpoints` kept; a rerun resumes. Non-finite steps as in pretraining.
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 2
  c.resume_changes = ""  # as pretraining's (sslx/config/defaults.py)
  c.nonfinite = ml_collections.ConfigDict(pretrain.nonfinite.to_dict())
  c.distributed = copy.deepcopy(pretrain.distributed)
  c.num_devices = placeholder(int)
  c.cpu_devices = pretrain.cpu_devices  # as pretraining's (sslx/config/defaults.py)
  c.cpu_conv_backend = 'eigen'  # as pretraining's (sslx/config/defaults.py)
  c.compilation_cache_dir = pretrain.compilation_cache_dir  # likewise
  return c
