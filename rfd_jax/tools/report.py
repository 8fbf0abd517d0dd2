r"""`python -m rfd_jax.tools.report WORKDIR [WORKDIR ...]`: the results table of finished runs.

Reads WORKDIR/results.json: the accuracy matrix with A_t per row, the final and average incremental
accuracy, forgetting and wall time. A workdir without results.json (a run still going or a wrong
path) exits with status 2 and one `error:` line.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app

from rfd_jax import metrics


def load_results(workdir: str) -> dict:
  """The parsed WORKDIR/results.json; FileNotFoundError with a message saying what to do."""
  path = os.path.join(workdir, "results.json")
  if not os.path.isfile(path):
    if not os.path.isdir(workdir):
      raise FileNotFoundError(f"{workdir} is not a directory.")
    hint = ("it holds no finished run (results.json is written when the last task ends)")
    if any(os.path.isfile(os.path.join(root, "results.json")) for root, _, _ in os.walk(workdir)):
      hint = ("it holds runs in sub-directories: run `python -m rfd_jax.tools.report` on one of "
              "them, or `python -m rfd_jax.tools.sweep --workdir " + workdir + " --summarize_only`")
    raise FileNotFoundError(f"no results.json in {workdir}: {hint}.")
  with open(path) as f:
    return json.load(f)


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def format_report(results: dict) -> str:
  """The run's description, metrics.format_table and the wall time, as printed text."""
  sizes = results.get("task_sizes", [])
  order = results.get("class_order", [])
  order_text = " ".join(map(str, order[:20])) + (" ..." if len(order) > 20 else "")
  lines = [f"{results['method']} on {results['dataset']}, {results['num_tasks']} tasks of "
           f"{'/'.join(map(str, sizes))} classes, seed {results.get('seed')}",
           f"class order: {order_text}", "", metrics.format_table(results)]
  if "wall_seconds" in results:
    task_times = " ".join(f"{s:.0f}" for s in results.get("task_seconds", []))
    invocations = results.get("wall_seconds_per_invocation", [])
    over = (f" over {len(invocations)} invocations ("
            + " + ".join(f"{s:.0f}" for s in invocations) + " s)") if len(invocations) > 1 else ""
    lines.append(f"wall time                 {_duration(results['wall_seconds'])} "
                 f"({results['wall_seconds']:.0f} s{over}; per task {task_times} s)")
  return "\n".join(lines)


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("usage: python -m rfd_jax.tools.report WORKDIR [WORKDIR ...]")
  for i, workdir in enumerate(argv[1:]):
    try:
      results = load_results(workdir)
    except FileNotFoundError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    if i:
      print()
    print(f"== {workdir}")
    print(format_report(results))


if __name__ == "__main__":
  app.run(main)
