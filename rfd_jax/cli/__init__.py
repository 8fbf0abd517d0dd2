"""Everything before a run starts. Imports anything below it (data/ … jobs/), never tools/.

  usage              flags: --config by name, unknown-field hints, the one-line `error:` exit
  config_validation  the config's fields checked once, naming the field and the fix
  preflight          config, data, workdir and init_from checked before anything is written
  finished           a finished run's results, printed again without touching it
  console            the console log format
  xla_env            XLA flags set before JAX starts (the fast CPU default)
"""
