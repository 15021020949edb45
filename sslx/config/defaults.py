"""Defaults shared by every pretraining config.

The config files in `configs/` start from `base_config()` and override what
their method and dataset need. Every field is documented here once.
"""

import ml_collections

# Training-split sizes, to express schedules in epochs.
NUM_TRAIN_EXAMPLES = {"mnist5k": 4_000, "mnistm5k": 4_000, "cifar10": 50_000, "cifar100": 50_000,
                      "imagenet2012": 1_281_167}
PRESETS = ("mnist5k", "mnistm5k", "cifar10", "cifar100", "imagenet", "folder")
# The embedded digit datasets (grey, and over colour photographs): one sizing.
DIGIT_PRESETS = ("mnist5k", "mnistm5k")
# Presets of small natural images: the methods' CIFAR recipes, and your own photos at that size.
SMALL_IMAGE_PRESETS = ("cifar10", "cifar100", "folder")
# The :folder preset's schedule: epochs of the folder's images (its size is known at run time).
FOLDER_EPOCHS = 100.0


def view(**overrides) -> ml_collections.ConfigDict:
  """One view group: its crops' number and size, crop/flip (host, tf.data) and photometric
  (device) parameters (sslx/data/views.py checks them).

  Defaults are BYOL's view 1 (Grill et al., 2020, Table 6 / Appendix B), one crop.
  """
  v = ml_collections.ConfigDict(dict(
      num_crops=1,  # crops of each image in this group (multi-crop: e.g. 6 local crops)
      # Side of the crops in pixels; None: data.image_size.
      crop_size=ml_collections.config_dict.placeholder(int),
      # Random resized crop, done in tf.data on uint8 images.
      crop_area_min=0.08,
      crop_area_max=1.0,
      crop_aspect_min=3 / 4,
      crop_aspect_max=4 / 3,
      flip_prob=0.5,
      # Photometric ops, done on device in JAX (sslx/data/augment.py).
      color_jitter_prob=0.8,
      brightness=0.4,
      contrast=0.4,
      saturation=0.2,
      hue=0.1,
      grayscale_prob=0.2,
      blur_prob=1.0,
      blur_sigma_min=0.1,
      blur_sigma_max=2.0,
      blur_kernel_fraction=0.1,  # kernel side as a fraction of the image side
      solarize_prob=0.0,
      solarize_threshold=0.5,
  ))
  v.update(overrides)
  return v


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.job = "pretrain"  # a job of sslx/jobs (sslx.jobs.JOBS)
  c.method = "byol"  # a method of sslx/methods (sslx.methods.METHODS)
  c.preset = ""  # the dataset preset the config was built for (the part after ':')
  c.seed = 0
  c.train_steps = 1000
  # When set (> 0), the schedule's length in epochs of the pretraining split: train_steps is
  # then computed when the dataset's size is known (the :folder preset's images); 0 or None:
  # train_steps as given.
  c.train_epochs = ml_collections.config_dict.placeholder(float)
  c.batch_size = 256  # global batch, over all devices and hosts
  c.dtype = "float32"  # compute dtype; parameters stay float32

  c.data = ml_collections.ConfigDict(dict(
      # 'mnist5k' (embedded, no download), a tfds name ('cifar10', 'cifar100',
      # 'stl10', 'imagenet2012', 'imagenette'), 'npz:/path/file.npz' or
      # 'folder:/path/to/images'.
      dataset="mnist5k",
      data_dir=ml_collections.config_dict.placeholder(str),  # tfds data_dir; None: tfds default
      download=True,  # let tfds download and prepare a missing dataset
      image_size=28,
      eval_crop_fraction=1.0,  # center crop fraction for eval (0.875 on ImageNet)
      # Every image as the neutral grey of its CIE lightness L (what colorization's
      # encoder sees): evaluate a colorization encoder as its paper does.
      grey=False,
      # A labelled image folder without a test/ (or val/) split: this share of each
      # class is held out as its test split (the same images for every run; 0: none).
      holdout_fraction=0.1,
      # TFDS: tf.data's shuffle buffer. npz and folders take a full permutation per
      # epoch (any value > 1; 0 or 1 keeps stored order).
      shuffle_buffer=50_000,
      # Cache decoded uint8 TFDS images in host memory, only where the split fits
      # in a quarter of it (logged). npz arrays and folders are read by index.
      cache=True,
      num_parallel_calls=-1,  # tf.data.AUTOTUNE
      prefetch=2,  # batches prefetched on host
  ))

  # View groups, by name; the method declares which it needs (Method.view_groups).
  c.views = ml_collections.ConfigDict(dict(
      v1=view(),
      v2=view(blur_prob=0.1, solarize_prob=0.2),
  ))

  c.model = ml_collections.ConfigDict(dict(
      name="resnet18",  # resnet10 (tests, quick start), resnet18, resnet34, resnet50
      width=1.0,  # channel multiplier
      stem="cifar",  # 'cifar' (3x3 conv, no max-pool) or 'imagenet' (7x7/2 conv + max-pool)
  ))

  c.optimizer = ml_collections.ConfigDict(dict(
      name="lars",  # 'lars', 'sgd' or 'adamw'
      base_learning_rate=0.2,  # scaled by batch_size / 256
      weight_decay=1.5e-6,
      momentum=0.9,
      trust_coefficient=0.001,  # LARS eta
      warmup_epochs=10.0,
      min_learning_rate_ratio=0.0,  # cosine decays to base * ratio
  ))

  # Online linear classifier on stop-gradient encoder features: a live
  # accuracy during pretraining where labels exist. Never updates the encoder.
  c.probe = ml_collections.ConfigDict(dict(
      enabled=True,
      learning_rate=0.1,
      momentum=0.9,
  ))

  # At the end of pretraining, the encoder is measured on the test split by a
  # weighted kNN classifier and a linear probe on frozen features, beside the
  # same measures for a randomly initialised encoder of the same architecture.
  c.eval = ml_collections.ConfigDict(dict(
      knn=True,
      knn_k=200,  # InstDisc / solo-learn defaults
      knn_temperature=0.1,
      linear=True,  # L-BFGS logistic regression, L2 chosen on held-out train data
      # Features of every frozen evaluation (kNN, probes, few labels; the
      # random-init encoder's too): None for the encoder's pooled output, or a
      # feature map ('stage3', ...) average-pooled over a feature_grid x
      # feature_grid partition (sslx/evaluation/features.py).
      feature_layer=ml_collections.config_dict.placeholder(str),
      feature_grid=1,
      batch_size=512,
      # None: the whole train split; N: a sample of N with every class in proportion.
      max_train_examples=ml_collections.config_dict.placeholder(int),
      compare_random_init=True,
      # Also run the kNN / linear evaluation every this many steps (0: only at
      # the end), to follow representation quality over training in TensorBoard.
      every_steps=0,
      # Few labels (sslx/evaluation/few_label.py): linear probes fitted on only
      # N labelled images per class, for each N here (() turns it off), mean
      # over `few_label_draws` random subsets, at L2 strength `few_label_l2`.
      few_labels=(1, 5, 10),
      few_label_draws=5,
      # A run shorter than `short_run_steps` (a smoke test) gets a smaller evaluation, and
      # says so: probes on at most 1,000 train images, 1 few-label draw, no from-scratch
      # baselines, a t-SNE of at most 300 points. False: always the full one.
      scale_with_run=True,
      short_run_steps=200,
      few_label_l2=1e-2,
      # ... beside the same network trained from scratch on those labels
      # (subsets of the first `scratch.draws` draws): `steps` of SGD on random crops
      # of batch `batch_size` (0 steps: no scratch baseline).
      scratch=ml_collections.ConfigDict(dict(
          steps=0, draws=1, batch_size=64, base_learning_rate=1.0, weight_decay=0.0,
          view=view(color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0,
                    solarize_prob=0.0))),
  ))

  # PNGs written into the workdir at the end (sslx/evaluation/plots.py):
  # training curves, a t-SNE map of test features (pretrained beside random
  # init) and a grid of nearest-neighbour retrievals.
  c.plots = ml_collections.ConfigDict(dict(
      enabled=True, tsne_max_points=2000, retrieval_queries=8, retrieval_neighbours=8))

  # A NaN or infinite loss or gradient. 'stop': end the run naming the step
  # and the quantity, saving nothing (the last good checkpoint stays the
  # newest). 'skip': drop that update (weights, optimizer, BN statistics and
  # method state stay as they were), count it in `skipped_updates`, and stop
  # only when more than `max_skipped` have been dropped.
  c.nonfinite = ml_collections.ConfigDict(dict(action="stop", max_skipped=100))

  # Warn when the logged embedding_std falls below this fraction of
  # 1/sqrt(dim) (its value for isotropic embeddings) or the effective rank
  # (RankMe) below `min_effective_rank`: signs of (dimensional) collapse.
  c.collapse = ml_collections.ConfigDict(dict(min_std_fraction=0.1, min_effective_rank=2.0))

  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 3
  # If the newest checkpoint cannot be restored (corrupt, truncated), resume
  # from the newest older one that can; the failing ones are renamed, not deleted.
  c.resume_from_older = False
  # A rerun resumes only the run its checkpoint saved: a change to a field that fixes what
  # the saved state means (batch_size, train_steps, seed, data, optimizer, method, model,
  # views; the process count for TFDS data) is refused, naming the field. List here the
  # fields (or sections) whose change you accept, e.g. 'train_steps' to train longer.
  c.resume_changes = ""
  # Several processes (hosts) in one run, through jax.distributed
  # (sslx.core.mesh.initialize_distributed; README, "Several hosts").
  c.distributed = ml_collections.ConfigDict(dict(
      enabled=False,  # connect the processes before any device is used
      # 'host:port' of process 0, the same on every process; None: JAX detects
      # the cluster (Cloud TPU, SLURM, Open MPI, Kubernetes) and the next two.
      coordinator_address=ml_collections.config_dict.placeholder(str),
      num_processes=ml_collections.config_dict.placeholder(int),
      process_id=ml_collections.config_dict.placeholder(int),  # 0 .. num_processes - 1
      # The local GPUs this process drives, e.g. '0' for one process per GPU; None: all.
      local_device_ids=ml_collections.config_dict.placeholder(str),
      initialization_timeout=300,  # s to wait for every process to connect
      # A process silent this long (killed, hung, its host down) stops the others.
      heartbeat_timeout_seconds=100,
  ))
  c.num_devices = ml_collections.config_dict.placeholder(int)  # None: all; N: the first N
  # CPU-only hosts: how many XLA devices main.py splits the host into (data
  # parallel over them, same results). 1: one device whose convolutions (Eigen)
  # and fusions use every core, 5-60% faster than one device per core for the
  # quick starts (experiments/README.md, "CPU cores as XLA devices"); 0: the
  # most cores that divide batch_size and eval.batch_size. Ignored where
  # XLA_FLAGS already sets a device count.
  c.cpu_devices = 1
  # CPU-only hosts: the library XLA runs convolutions with, 'eigen' (faster
  # here, sslx.core.mesh.choose_cpu_conv_backend) or 'ynnpack' (jaxlib's default).
  c.cpu_conv_backend = 'eigen'
  # XLA's persistent compilation cache (sslx.core.compile_once.enable_persistent_cache):
  # reruns, and other methods' runs on the same data, read compiled programs from
  # here instead of compiling them again. '' turns it off;
  # JAX_COMPILATION_CACHE_DIR in the environment wins.
  c.compilation_cache_dir = "~/.cache/sslx/xla"
  return c


def apply_dataset_preset(c: ml_collections.ConfigDict, preset: str, config_file: str) -> None:
  """Sets what a dataset preset fixes for every method: data, encoder, evaluation, cadence.

  Method configs call this first and then set their batch size, schedule,
  optimizer and views. `config_file` names the caller in the error message.
  """
  c.preset = preset
  if preset in DIGIT_PRESETS:
    # mnistm5k: the same digits over colour photographs (sslx/data/mnistm5k.py),
    # with the same network and schedule.
    # Sized for a 2-core CPU: a ResNet-10 at width 0.25 on the 28 px digits
    # resized to 20 px. Most of this tiny network's step is memory traffic
    # (layout copies, BatchNorm), which shrinks with the pixels (half as many
    # at 20 px): the quick starts' steps ran 2.4x (BYOL) to 3.1x (MoCo v2)
    # faster than at 28 px on 2 cores, which is what brings every quick start
    # under five minutes (experiments/README.md, "Five minutes: 20 px digits"). MNIST's
    # digits were themselves size-normalised to a 20 px box.
    c.data.dataset = preset
    c.data.image_size = 20
    c.model.update(name="resnet10", width=0.25, stem="cifar")
    # The memory bank is 4,000 images (400 per class): k=200 would reach
    # half of a class, so use k=20.
    c.eval.knn_k = 20
    # The supervised baseline of the few-label table: 100 steps of 64 crops
    # (digits kept whole and unflipped, as in pretraining). 300 steps gave
    # 24.1/75.0/88.3% at 1/5/10 labels per class, 150 steps 22.9/73.2/88.7%,
    # 100 steps 28.5/70.4/88.2% (experiments/README.md): one draw each, so
    # within its noise, in a third of 300 steps' time.
    c.eval.scratch.steps = 100
    c.eval.scratch.view.update(crop_area_min=0.5, flip_prob=0.0)
    c.log_every_steps = 50
    c.checkpoint_every_steps = 200
  elif preset in ("cifar10", "cifar100"):
    c.data.dataset = preset
    c.data.image_size = 32
    c.model.update(name="resnet18", width=1.0, stem="cifar")
    c.checkpoint_every_steps = 5000
  elif preset == "folder":
    # Your own photos, of any size: --config.data.dataset=folder:/path. The method's CIFAR
    # recipe (its small-image recipe: 32 px crops cut from the whole photo, the ResNet-18
    # with the small-image stem, the paper's augmentations), for FOLDER_EPOCHS epochs of
    # the folder; a held-out 10% of each class is the test split where the folder has none
    # (data.holdout_fraction). Photos are resized (shorter side to 36 px) and centre-cropped
    # for evaluation, ImageNet's crop ratio. Larger crops: --config.data.image_size=64.
    c.data.dataset = ""  # the user's folder
    c.data.image_size = 32
    c.data.eval_crop_fraction = 0.875
    c.model.update(name="resnet18", width=1.0, stem="cifar")
    c.train_epochs = FOLDER_EPOCHS
    c.eval.knn_k = 20  # a folder's classes may hold a few dozen images
    c.log_every_steps = 50
    c.checkpoint_every_steps = 1000
  elif preset == "imagenet":
    c.data.dataset = "imagenet2012"
    c.data.image_size = 224
    c.data.eval_crop_fraction = 0.875
    c.data.cache = False
    c.model.update(name="resnet50", width=1.0, stem="imagenet")
    # The frozen evaluations' kNN bank and probes: 100,000 of the 1.28M train images, a sample
    # with every class in proportion (sslx.data.subsets.sample_indices).
    c.eval.max_train_examples = 100_000
    c.checkpoint_every_steps = 5000
    c.log_every_steps = 100
  else:
    raise ValueError(f"Unknown preset {preset!r} for {config_file}; valid presets: "
                     f"{', '.join(PRESETS)}.")


def keep_digits_whole(c: ml_collections.ConfigDict) -> None:
  """The mnist5k presets' view changes, for every view in `c.views`.

  Crops below half of a digit often cut it into an unrecognisable fragment, a
  flipped digit is another symbol (and makes RotNet's 2/5 and 6/9 rotations
  ambiguous), and a 3 px blur kernel on a 28 px digit adds little (chosen at
  28 px; the preset now trains at 20 px).
  Chosen by the runs in experiments/README.md.
  """
  for view_config in c.views.values():
    view_config.update(crop_area_min=0.5, flip_prob=0.0, blur_prob=0.0)


def epochs_to_steps(epochs: float, preset: str, batch_size: int) -> int:
  """Number of steps of `batch_size` that make `epochs` passes over the preset's train split.

  The folder preset's size is unknown here: its steps come from `train_epochs` at run time
  (this returns its placeholder, 0).
  """
  if preset == "folder":
    return 0
  dataset = "imagenet2012" if preset == "imagenet" else preset
  return int(epochs * NUM_TRAIN_EXAMPLES[dataset] // batch_size)
