"""Machinery every training loop shares, whatever it trains.

  mesh           devices, the data-parallel mesh, shardings, CPU device split
  optim          optimizers (a registry) and learning-rate schedules
  schedules      EMA / momentum schedules
  rngs           random streams, each derived by its purpose; a step's keys
  train_state    the TrainState of every job, and the non-finite guard of its step
  loop           the one training loop: checkpoints, exact resume, preemption, guards,
                 progress, periodic hooks (pretraining, fine-tuning, probes, baselines)
  checkpointing  Orbax checkpoints of a TrainState, with one identity check on resume
  preemption     SIGTERM / SIGINT -> finish the step, save, exit 75
  health         non-finite watch, collapse monitors
  progress       the one-line progress report and TensorBoard scalars
  quiet_noise    filters third-party noise from the terminal
"""
