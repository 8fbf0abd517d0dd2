"""The jobs a config runs (config.job): what each segment of a plan does. Imports data/, models/,
methods/ and engine/, never cli/ or tools/.

  dfcil          the class-incremental job over R runs, a plain run R = 1 (python -m rfd_jax.main
                 --config configs/cifar100.py); its setup from the config
  dfcil_run      what it is built of (model, learner, plan, data, steps), its state, the run axis
  steps          its jitted train steps, the device-resident blocks of steps, StepFns
  group          which runs: the config's own, or config.runs' class orders × seeds (a group)
  settings       the engine's settings (resume, loop) read off the config once
  plots          its PNGs: accuracy curves, synthetic samples
  teacher        a classifier trained on real data (the teacher of dfkd)
  dfkd, dfkd_steps   RGAL data-free knowledge distillation and its steps
"""
