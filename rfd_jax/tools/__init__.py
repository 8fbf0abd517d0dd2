"""Tools around training that jobs never import: sweeps, their tables, run reports, diagnosis and
the accelerator compile check. May import anything but the programs.

  sweep          `python -m rfd_jax.tools.sweep`: methods × class orders × seeds into sub-workdirs
  sweep_runs     a sweep's run layout: --methods entries, run directories, finished results
  sweep_checks   every run's config checked before a sweep creates anything; portable commands
  sweep_devices  which devices each run of a sweep gets
  summaries      summary.md / summary.csv / comparison.png, a Markdown section in a docs file
  comparisons    Student-t intervals and paired differences against a reference method
  report         `python -m rfd_jax.tools.report WORKDIR`: a finished run's results table
  dfkd_summary   `python -m rfd_jax.tools.dfkd_summary`: the DFKD table from run directories
  diagnose       `python -m rfd_jax.tools.diagnose WORKDIR`: why a run forgets
  replay         a run's checkpoints re-read and its steps re-run (for diagnose)
  aot/           `python -m rfd_jax.tools.aot`: compile a config for TPU slices / GPUs without one
"""
