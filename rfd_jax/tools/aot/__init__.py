"""The accelerator compile check: `python -m rfd_jax.tools.aot --config C --target v5e:2x4|h100`
compiles every jitted call of a run for the target (libtpu / the CUDA plugin, deviceless) and
reports memory, cost, collectives, kernels and a projected run time.

  command       the CLI
  targets       TPU slices and GPUs with their peak figures; gpu_targets/ their descriptions
  run_calls     the jitted calls of a class-incremental run or group, as shapes
  job_calls     those of the teacher and dfkd jobs
  compiler      compiles one call: memory, cost analysis, collectives, kernel counts (cached)
  reporting     the table and aot.json
  readme_table  launch/README.md's generated table
"""
