"""Tools around training that training never imports: sweeps, their tables, run reports.

  sweep          `python -m rfd_jax.tools.sweep`: methods × class orders × seeds into sub-workdirs
  sweep_runs     a sweep's run layout: --methods entries, run directories, finished results
  summaries      summary.md / summary.csv / comparison.png, a Markdown section in a docs file
  report         `python -m rfd_jax.tools.report WORKDIR`: a finished run's results table
  dfkd_summary   `python -m rfd_jax.tools.dfkd_summary`: the DFKD table from run directories
"""
