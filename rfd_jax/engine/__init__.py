"""What every job shares. Imports data/, models/, methods/ and itself, never jobs/, cli/ or tools/.

  plan           a run as segments over one global step, learning-rate schedules
  loop           runs a plan block by block: metrics, finite checks, checkpoints, preemption, progress
  timing         compile time, rates and ETA, wall time across a run's invocations
  checkpointing  Orbax checkpoints keyed by the global step and the resume policy (`resume`)
  saved_config   a checkpoint's config against the run's: renamed fields, the resume check
  preemption     SIGTERM/SIGINT → save and exit
  parallel       the mesh, shardings, process-local batches
  state          TrainState (params, batch stats, optimizer state)
  optim          SGD with momentum and weight decay on trainable parameters
  writers        metrics.jsonl, TensorBoard, JSON files (process 0)
  evaluation     the eval step and top-1 accuracy in sharded batches
  errors         ConfigError: what the user fixes by changing the input
"""
