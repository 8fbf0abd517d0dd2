"""The jobs a config runs (config.job): what each segment of a plan does. Imports data/, models/,
methods/ and engine/, never cli/ or tools/.

  dfcil          the class-incremental job (python -m rfd_jax.main --config configs/cifar100.py)
  dfcil_run      what a class-incremental run is built of (model, learner, plan, data, steps)
  steps          its jitted train steps and the device-resident blocks of steps
  group          many class orders / seeds of it in one process (config.runs)
  plots          its PNGs: accuracy curves, synthetic samples
  teacher        a classifier trained on real data (the teacher of dfkd)
  dfkd, dfkd_steps   RGAL data-free knowledge distillation and its steps
"""
