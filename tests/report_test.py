"""`python -m rfd_jax.tools.report`: the results table of a finished run, a clear error otherwise."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = {
    "method": "abd", "dataset": "digits", "num_tasks": 2, "task_sizes": [5, 5],
    "class_order": [7, 8, 1, 5, 3, 4, 2, 0, 9, 6], "seed": 0,
    "acc_matrix": [[98.5, None], [80.25, 60.0]], "acc_seen": [98.5, 70.0], "final_acc": 70.0,
    "avg_inc_acc": 84.25, "forgetting": 18.25, "old_acc": [None, 80.25], "new_acc": [98.5, 60.0],
    "task_seconds": [20.0, 65.5], "wall_seconds": 3725.0,
}


def _report(*workdirs):
  return subprocess.run([sys.executable, "-m", "rfd_jax.tools.report", *map(str, workdirs)],
                        cwd=REPO, capture_output=True, text=True, timeout=60, check=False)


def test_prints_the_results_table(tmp_path):
  with open(tmp_path / "results.json", "w") as f:
    json.dump(RESULTS, f)
  proc = _report(tmp_path)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert "abd on digits, 2 tasks of 5/5 classes, seed 0" in lines[1]
  assert "after task |     T1     T2 |    A_t" in lines  # tasks from 1, as in the logs
  assert "         1 |  98.50        |  98.50" in lines
  assert "         2 |  80.25  60.00 |  70.00" in lines
  assert "final accuracy A_T         70.00" in lines
  assert "average incremental acc    84.25" in lines
  assert "forgetting                 18.25" in lines
  assert any(l.startswith("wall time                 1:02:05 (3725 s; per task 20 66 s)")
             for l in lines)


def test_the_wall_time_of_a_resumed_run_is_the_total_over_its_invocations(tmp_path):
  with open(tmp_path / "results.json", "w") as f:
    json.dump({**RESULTS, "wall_seconds": 913.0,
               "wall_seconds_per_invocation": [300.0, 529.0, 84.0]}, f)
  proc = _report(tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert ("wall time                 0:15:13 (913 s over 3 invocations (300 + 529 + 84 s); per "
          "task 20 66 s)") in proc.stdout.splitlines()


def test_missing_results_json_exits_2(tmp_path):
  (tmp_path / "sweep" / "abd" / "seed0").mkdir(parents=True)
  proc = _report(tmp_path / "sweep")  # no finished run anywhere below
  assert proc.returncode == 2 and not proc.stdout
  assert proc.stderr.startswith("error: no results.json in") and "no finished run" in proc.stderr
  proc = _report(tmp_path / "sweep" / "abd" / "seed0")  # a run directory without results.json
  assert proc.returncode == 2 and "no results.json" in proc.stderr
  proc = _report(tmp_path / "nowhere")
  assert proc.returncode == 2 and proc.stderr == f"error: {tmp_path / 'nowhere'} is not a directory.\n"


def _write_run(path, **changes):
  path.mkdir(parents=True)
  with open(path / "results.json", "w") as f:
    json.dump({**RESULTS, **changes}, f)


SEED1 = [6, 8, 9, 7, 5, 3, 0, 4, 1, 2]  # tasks.class_order("seed1", 10)


def test_a_sweep_directory_and_runs_give_the_summary_and_the_paired_table(tmp_path):
  sweep = tmp_path / "sweep"
  _write_run(sweep / "abd" / "seed0", final_acc=70.0)
  _write_run(sweep / "abd" / "seed1", final_acc=60.0, class_order=SEED1)
  _write_run(sweep / "rfd" / "seed0", method="rfd", final_acc=66.0)
  _write_run(sweep / "rfd" / "seed1", method="rfd", final_acc=57.0, class_order=SEED1)
  proc = _report(sweep, "--reference", "rfd")
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout
  assert out.startswith(f"== {sweep}: 4 finished runs (summary below)\n")
  # abd 70, 60: mean 65, sd 7.07, ± 12.706 · 7.071 / √2 = 63.53
  assert "| `abd` |  | seed0, seed1 | 0 | 65.00 ± 7.07 | [1.47, 128.53] |" in out
  assert ("| `abd` − `rfd` | seed0, seed1 | +4.00 / +3.00 | +3.50 ± 0.71 | [-2.85, +9.85] | "
          "2 / 0 / 0 |") in out
  assert "- `abd` − `rfd`: +3.50 ± 0.71 [-2.85, +9.85], higher on 2 of 2 orders." in out


def test_runs_given_one_by_one_pair_by_order_and_a_bad_reference_exits_2(tmp_path):
  _write_run(tmp_path / "abd" / "seed1", final_acc=60.0, class_order=SEED1)
  _write_run(tmp_path / "my-rfd-run", method="rfd", final_acc=57.0, class_order=SEED1)
  proc = _report(tmp_path / "abd" / "seed1", tmp_path / "my-rfd-run", "--reference", "rfd")
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.count("final accuracy A_T") == 2  # each run's own table first
  # the sweep-layout run is labelled abd; the other by its method, paired by its class order
  assert "| `abd` − `rfd` | seed1 | +3.00 | +3.00 | — | 1 / 0 / 0 |" in proc.stdout
  _write_run(tmp_path / "other-rfd-run", method="rfd", final_acc=50.0,
             class_order=[1, 0, 2, 3, 4, 5, 6, 7, 8, 9])
  proc = _report(tmp_path / "abd" / "seed1", tmp_path / "other-rfd-run", "--reference", "rfd")
  assert ("| `abd` − `rfd` | none (no `abd` run: 1.0.2.3.4.5.6.7.8.9; no `rfd` run: seed1) |"
          in proc.stdout)
  proc = _report(tmp_path / "abd" / "seed1", "--reference", "joint")
  assert proc.returncode == 2 and not proc.stdout
  assert proc.stderr == "error: --reference joint: not a label of these runs (abd).\n"
