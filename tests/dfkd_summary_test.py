"""rfd_jax.tools.dfkd_summary: the DFKD table from run directories."""

import json
import os

import pytest

from configs import dfkd_digits
from rfd_jax.tools import dfkd_summary, sweep_runs


def _write_run(root, label, seed, accuracy, best, **rgal):
  config = dfkd_digits.get_config().to_dict()
  config["rgal"].update(rgal)
  config["seed"] = seed
  run = os.path.join(root, label, f"s{seed}")
  os.makedirs(run)
  with open(os.path.join(run, "config.json"), "w") as f:
    json.dump(config, f, default=list)
  with open(os.path.join(run, "results.json"), "w") as f:
    json.dump({"job": "dfkd", "seed": seed, "teacher_accuracy": 99.26, "accuracy": accuracy,
               "best_accuracy": best, "wall_seconds": 100.0 + seed}, f)


def test_table_has_mean_and_std_over_seeds_and_the_active_terms(tmp_path):
  _write_run(tmp_path, "rgal", 0, 80.0, 82.0)
  _write_run(tmp_path, "rgal", 1, 70.0, 75.0)
  _write_run(tmp_path, "deepinv", 0, 50.0, 55.0, adv=0.0, triplet=0.0, cd=0.0, striplet=0.0)
  os.makedirs(tmp_path / "rgal" / "s2")  # unfinished: no results.json, not counted
  text = dfkd_summary.format_markdown(dfkd_summary.load_runs(str(tmp_path)), ["rgal", "deepinv"],
                                      "cmd")
  rows = [line for line in text.splitlines() if line.startswith("| `")]
  assert rows[0].startswith("| `rgal` | adv=1 triplet=0.1 cd=0.1 striplet=0.1, direction paper "
                            "| 0, 1 | 99.26 | 75.00 ± 7.07 | 78.50 ± 4.95 | 100 / 101 |")
  assert rows[1].startswith("| `deepinv` | none | 0 | 99.26 | 50.00 | 55.00 | 100 |")


def test_a_dfcil_run_in_the_layout_is_refused(tmp_path):
  _write_run(tmp_path, "rgal", 0, 80.0, 82.0)
  with open(tmp_path / "rgal" / "s0" / "results.json", "w") as f:
    json.dump({"method": "rfd"}, f)
  with pytest.raises(sweep_runs.SweepError, match="not a dfkd run"):
    dfkd_summary.load_runs(str(tmp_path))
