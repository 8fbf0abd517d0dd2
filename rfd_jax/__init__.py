"""rfd_jax: data-free class-incremental learning (RFD, RGAL, R-DFCIL, ABD, DeepInversion) in JAX.

Folders by concern; a module imports only from its own layer or those below
(tests/layout_test.py keeps this true):

  data/, models/   datasets and networks: know nothing of training
  methods/         the science: losses, RGAL losses, learners, inversion, class orders, CL metrics
  engine/          what every job shares: plan, loop, checkpoints, resume, mesh, writers, evaluation
  jobs/            dfcil, teacher, dfkd: what each segment of a plan does
  cli/             everything before a run starts: flags, config validation, preflight, XLA setup
  tools/           sweeps, reports, diagnosis, the accelerator compile check: never imported by a job
  main.py          the program (`python -m rfd_jax.main`); prepare_data.py the data converter
"""
