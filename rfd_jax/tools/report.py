r"""`python -m rfd_jax.tools.report WORKDIR [WORKDIR ...] [--reference LABEL]`: the results of
finished runs.

A WORKDIR is a run (it holds results.json: its accuracy matrix with A_t per row, the final and
average incremental accuracy, forgetting and wall time are printed), or a sweep or group of runs
(it holds `<label>/<run>/results.json`, the layout of rfd_jax.tools.sweep and rfd_jax.jobs.group).
With two runs or more, the summary of rfd_jax.tools.sweep follows: per label mean ± sample std and
the 95% Student-t interval, and with `--reference LABEL` each other label's per-order differences
to LABEL (mean ± sd, 95% interval, on how many orders it is higher / equal / lower). A run's label
is its sweep label (the directory above it) when it lies in that layout, else its method.

A WORKDIR without results.json or runs (a run still going or a wrong path), or a --reference that
is no label of the runs, exits with status 2 and one `error:` line, before anything is printed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from absl import app, flags

from rfd_jax.methods import metrics, tasks
from rfd_jax.tools import summaries, sweep_runs

_REFERENCE = flags.DEFINE_string(
    "reference", None, "a label: the summary adds each other label's per-order differences to it")


def load_results(workdir: str) -> dict:
  """The parsed WORKDIR/results.json; FileNotFoundError with a message saying what to do."""
  path = os.path.join(workdir, "results.json")
  if not os.path.isfile(path):
    if not os.path.isdir(workdir):
      raise FileNotFoundError(f"{workdir} is not a directory.")
    raise FileNotFoundError(f"no results.json in {workdir}: it holds no finished run "
                            "(results.json is written when the last task ends).")
  with open(path) as f:
    return json.load(f)


def as_run(workdir: str, results: dict) -> sweep_runs.Run:
  """The run of a run directory: in the sweep layout (`<label>/<order>[-s<seed>]` with the order
  of its results), its label and order name; else its method and its order written out."""
  name = os.path.basename(os.path.normpath(workdir))
  seed = int(results.get("seed", 0))
  order = ".".join(map(str, results.get("class_order", [])))
  label = results["method"]
  for candidate in (name, name.rsplit("-s", 1)[0]):
    try:
      in_layout = (tasks.run_name(candidate, seed) == name and
                   tasks.class_order(candidate, len(results["class_order"]))
                   == results["class_order"])
    except (ValueError, KeyError):
      in_layout = False
    if in_layout:
      order = candidate
      label = os.path.basename(os.path.dirname(os.path.abspath(workdir))) or label
      break
  return sweep_runs.Run(sweep_runs.MethodEntry(label, (("method", results["method"]),)), order,
                        seed, workdir)


def collect(workdirs: list[str]) -> tuple[list[tuple[str, dict | None]], list[sweep_runs.Run],
                                          dict[str, dict]]:
  """(what to print per argument: (workdir, its results or None for a sweep), the runs, their
  results by run workdir). FileNotFoundError for an argument with no finished run."""
  shown, runs, results = [], [], {}
  for workdir in workdirs:
    if not os.path.isfile(os.path.join(workdir, "results.json")) and os.path.isdir(workdir):
      found = sweep_runs.discover_runs(workdir)
      if found:
        for run in found:
          runs.append(run)
          with open(os.path.join(run.workdir, "results.json")) as f:
            results[run.workdir] = json.load(f)
        shown.append((workdir, None))
        continue
    res = load_results(workdir)
    runs.append(as_run(workdir, res))
    results[workdir] = res
    shown.append((workdir, res))
  # A run outside the layout takes the name another run gives its class order, so the two pair.
  names = {tuple(results[run.workdir]["class_order"]): run.order for run in runs
           if "." not in run.order}
  runs = [dataclasses.replace(
      run, order=names.get(tuple(results[run.workdir].get("class_order", [])), run.order))
          for run in runs]
  return shown, runs, results


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
    raise app.UsageError(
        "usage: python -m rfd_jax.tools.report WORKDIR [WORKDIR ...] [--reference LABEL]")
  try:
    shown, runs, results = collect(argv[1:])
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  labels = list(dict.fromkeys(run.entry.label for run in runs))
  if _REFERENCE.value is not None and _REFERENCE.value not in labels:
    print(f"error: --reference {_REFERENCE.value}: not a label of these runs "
          f"({', '.join(labels)}).", file=sys.stderr)
    sys.exit(2)
  for i, (workdir, res) in enumerate(shown):
    if i:
      print()
    if res is None:
      count = sum(run.workdir.startswith(os.path.join(workdir, "")) for run in runs)
      print(f"== {workdir}: {count} finished runs (summary below)")
    else:
      print(f"== {workdir}")
      print(format_report(res))
  if len(runs) > 1 or any(res is None for _, res in shown):
    print("\n" + summaries.format_tables(summaries.summarize(runs, results), _REFERENCE.value),
          end="")


if __name__ == "__main__":
  app.run(main)
