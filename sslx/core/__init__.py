"""Machinery every training loop shares, whatever it trains.

  mesh           devices, the data-parallel mesh, shardings, CPU device split
  optim          optimizers (a registry) and learning-rate schedules
  schedules      EMA / momentum schedules
  checkpointing  Orbax checkpoints: periodic, keep-N, exact resume, recovery
  preemption     SIGTERM / SIGINT -> finish the step, save, exit 75
  health         non-finite stop/skip, collapse monitors
  progress       the one-line progress report and TensorBoard scalars
  supervised_loop  the safe loop of the supervised jobs (fine-tuning, augmented probes)
  quiet_noise    filters third-party noise from the terminal
"""
