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
  with open(tmp_path / "sweep" / "abd" / "seed0" / "results.json", "w") as f:
    json.dump(RESULTS, f)
  proc = _report(tmp_path / "sweep")
  assert proc.returncode == 2 and not proc.stdout
  assert proc.stderr.startswith("error: no results.json in") and "--summarize_only" in proc.stderr
  proc = _report(tmp_path / "sweep" / "abd")  # a run directory without results.json
  assert proc.returncode == 2 and "no results.json" in proc.stderr
