r"""Runs methods × class orders × seeds into sub-workdirs and summarises them.

  python -m rfd_jax.sweep --config configs/digits.py --workdir runs/sweep_digits \
      --orders seed0,seed1,seed2 \
      --methods finetune,joint,rfd,"rfd-no-lfd:method=rfd:distill.lambda_lfd=0" \
      [--set key=value ...] [--seeds 0,1] [--parallel N] \
      [--output docs/results.md --section digits] [--dry_run] [--summarize_only]

A methods entry is `label[:key=value[:key=value ...]]` (config fields without the `config.`
prefix); a bare label, or an entry without a `method=` override, sets `method=label`. `--set`
applies to every run, before the entry's own overrides. Run (label, order, seed) goes to
`WORKDIR/<label>/<order>` (`<order>-s<seed>` for seeds other than 0) and is
`python -m rfd_jax.main --config CONFIG --workdir SUB --config.method=M --config.data.class_order=O
--config.seed=S <overrides>`, logged to `SUB/log.txt`. Runs with a results.json are skipped, so a
sweep resumes, or collects runs made earlier by hand in that layout; a failed run is reported, the
others go on, and the exit status is 1.

Then WORKDIR/summary.md, summary.csv and comparison.png: per label, mean ± sample std over its
runs of the final accuracy, average incremental accuracy and forgetting, and the wall time per run.
`--output FILE --section NAME` also puts the Markdown table, with the sweep's command line,
between `<!-- sweep:NAME:begin -->` and `<!-- sweep:NAME:end -->` in FILE, keeping the rest of it.
`--summarize_only` rebuilds the summaries from the sub-workdirs without running anything (without
--methods: every `<label>/<run>/results.json` under WORKDIR).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import concurrent.futures
import csv
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import time

import numpy as np

from rfd_jax import tasks

RESERVED = {"data.class_order": "--orders", "seed": "--seeds"}
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class SweepError(ValueError):
  """A bad sweep argument or output file."""


@dataclasses.dataclass(frozen=True)
class MethodEntry:
  """One `--methods` entry: a label (its sub-directory and table row) and its config overrides."""
  label: str
  overrides: tuple[tuple[str, str], ...]  # (config field, value), method first

  @property
  def method(self) -> str:
    return dict(self.overrides)["method"]

  @property
  def settings(self) -> str:
    """The overrides as shown in the table: empty for a bare label."""
    if self.overrides == (("method", self.label),):
      return ""
    return " ".join(f"{k}={v}" for k, v in self.overrides)


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of the sweep."""
  entry: MethodEntry
  order: str
  seed: int
  workdir: str

  def command(self, config: str, common: Sequence[tuple[str, str]]) -> list[str]:
    """The rfd_jax.main command line: method, order, seed, then `--set`, then the entry's
    overrides (later ones win)."""
    overrides = [("method", self.entry.method), ("data.class_order", self.order),
                 ("seed", str(self.seed)), *common,
                 *[(k, v) for k, v in self.entry.overrides if k != "method"]]
    return [sys.executable, "-m", "rfd_jax.main", "--config", config, "--workdir", self.workdir,
            *[f"--config.{k}={v}" for k, v in overrides]]


def split_list(text: str) -> list[str]:
  """Splits on commas outside brackets: "a,b:optim.milestones=(1,2)" → ["a", "b:...=(1,2)"]."""
  items, depth, current = [], 0, ""
  for char in text:
    depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(char, 0)
    if char == "," and depth == 0:
      items.append(current)
      current = ""
    else:
      current += char
  items.append(current)
  return [item.strip() for item in items if item.strip()]


def parse_override(text: str, *, where: str) -> tuple[str, str]:
  """"optim.lr=0.05" → ("optim.lr", "0.05"); a leading "config." is dropped."""
  key, sep, value = text.partition("=")
  key = key.strip().removeprefix("config.")
  if not sep or not _KEY.fullmatch(key):
    raise SweepError(f"{where}: {text!r} is not key=value (e.g. optim.lr=0.05).")
  return key, value.strip()


def parse_method_entry(text: str) -> MethodEntry:
  """`label[:key=value[:key=value ...]]` → MethodEntry; method=label unless overridden."""
  label, *parts = text.split(":")
  if not _LABEL.fullmatch(label):
    raise SweepError(f"--methods: label {label!r} must be letters, digits, '.', '_', '+', '-'.")
  overrides = dict(parse_override(p, where=f"--methods entry {text!r}") for p in parts)
  for key, flag in RESERVED.items():
    if key in overrides:
      raise SweepError(f"--methods entry {text!r}: set {key} with {flag}, not per method.")
  method = overrides.pop("method", label)
  return MethodEntry(label, (("method", method), *overrides.items()))


def check_methods(entries: Sequence[MethodEntry]) -> None:
  """SweepError naming the first entry whose method rfd_jax.main does not know (a dry run would
  print its commands and every run would fail)."""
  # Imported here: config_validation imports JAX, which the summaries do not need.
  from rfd_jax import config_validation  # pylint: disable=g-import-not-at-top
  for entry in entries:
    if entry.method not in config_validation.METHODS:
      raise SweepError(
          f"--methods: unknown method {entry.method!r} (entry {entry.label!r}); known methods: "
          f"{', '.join(config_validation.METHODS)}. A label that is not a method names its "
          f"method, e.g. {entry.label}:method=rfd.")


def run_dir(workdir: str, label: str, order: str, seed: int) -> str:
  """WORKDIR/<label>/<order>, with -s<seed> appended for seeds other than 0."""
  return os.path.join(workdir, label, order if seed == 0 else f"{order}-s{seed}")


def plan_runs(workdir: str, entries: Sequence[MethodEntry], orders: Sequence[str],
              seeds: Sequence[int]) -> list[Run]:
  return [Run(entry, order, seed, run_dir(workdir, entry.label, order, seed))
          for entry in entries for order in orders for seed in seeds]


def discover_runs(workdir: str) -> list[Run]:
  """Every `<label>/<run>/results.json` under workdir, as runs (for --summarize_only)."""
  runs = []
  for label in sorted(os.listdir(workdir)):
    for name in sorted(os.listdir(os.path.join(workdir, label))
                       if os.path.isdir(os.path.join(workdir, label)) else []):
      sub = os.path.join(workdir, label, name)
      if os.path.isfile(os.path.join(sub, "results.json")):
        with open(os.path.join(sub, "results.json")) as f:
          results = json.load(f)
        order, _, seed = name.partition("-s")
        entry = MethodEntry(label, (("method", results["method"]),))
        runs.append(Run(entry, order, int(seed or results.get("seed", 0)), sub))
  return runs


def load_results(run: Run) -> dict | None:
  """The run's results.json, or None if it has none. SweepError if it belongs to another
  method, seed or class order than the sweep expects (a stray run in the layout)."""
  path = os.path.join(run.workdir, "results.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    results = json.load(f)
  found = (results.get("method"), results.get("seed"))
  if found != (run.entry.method, run.seed):
    raise SweepError(f"{path} is a run of method={found[0]} seed={found[1]}, not the expected "
                     f"method={run.entry.method} seed={run.seed}.")
  order = results.get("class_order", [])
  try:
    expected = tasks.class_order(run.order, len(order))
  except ValueError:
    expected = order  # not a name the sweep can check
  if order != expected:
    raise SweepError(f"{path} has class order {order}, not {run.order}'s {expected}.")
  return results


def launch(run: Run, config: str, common: Sequence[tuple[str, str]]) -> tuple[int, float]:
  """Runs one rfd_jax.main subprocess, output appended to SUB/log.txt. → (exit status, seconds)."""
  os.makedirs(run.workdir, exist_ok=True)
  command = run.command(config, common)
  start = time.time()
  with open(os.path.join(run.workdir, "log.txt"), "a") as log:
    log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(command)}\n")
    log.flush()
    proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
  return proc.returncode, time.time() - start


@dataclasses.dataclass(frozen=True)
class SummaryRow:
  """Mean ± sample std over one label's finished runs (std None for a single run)."""
  label: str
  settings: str
  runs: list[Run]
  planned: int
  final_acc: tuple[float, float | None]
  avg_inc_acc: tuple[float, float | None]
  forgetting: tuple[float, float | None] | None
  wall_seconds: list[float]
  acc_seen: list[list[float]]
  classes_seen: list[int]


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else None


def summarize(runs: Sequence[Run], results: dict[str, dict]) -> list[SummaryRow]:
  """One row per label (in sweep order) that has finished runs; results: run workdir → dict."""
  rows = []
  labels = list(dict.fromkeys(run.entry.label for run in runs))
  for label in labels:
    planned = [run for run in runs if run.entry.label == label]
    done = [run for run in planned if run.workdir in results]
    if not done:
      continue
    res = [results[run.workdir] for run in done]
    forgetting = [r["forgetting"] for r in res if r.get("forgetting") is not None]
    rows.append(SummaryRow(
        label=label, settings=planned[0].entry.settings, runs=done, planned=len(planned),
        final_acc=mean_std([r["final_acc"] for r in res]),
        avg_inc_acc=mean_std([r["avg_inc_acc"] for r in res]),
        forgetting=mean_std(forgetting) if forgetting else None,
        wall_seconds=[r.get("wall_seconds", float("nan")) for r in res],
        acc_seen=[r["acc_seen"] for r in res],
        classes_seen=np.cumsum(res[0]["task_sizes"]).tolist()))
  return rows


def plus_minus(value: tuple[float, float | None] | None) -> str:
  if value is None:
    return "n/a"
  mean, std = value
  return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _wall(seconds: Sequence[float]) -> str:
  if len(seconds) <= 5:
    return " / ".join(f"{s:.0f}" for s in seconds)
  return f"{np.mean(seconds):.0f} (mean of {len(seconds)})"


def _runs_text(row: SummaryRow) -> tuple[str, str]:
  orders = ", ".join(dict.fromkeys(run.order for run in row.runs))
  if len(row.runs) < row.planned:
    orders += f" ({len(row.runs)}/{row.planned} runs)"
  seeds = ", ".join(dict.fromkeys(str(run.seed) for run in row.runs))
  return orders, seeds


def format_markdown(rows: Sequence[SummaryRow], commands: Sequence[str]) -> str:
  """The summary table, after the sweep commands that made the runs and the table, as Markdown."""
  lines = ["Generated by", "", "```", *commands, "```", "",
           "Accuracies in percent after the last task, mean ± sample standard deviation over the "
           "runs listed; wall time of each run in seconds (over all its invocations).", "",
           "| label | settings | class orders | seeds | final acc A_T | avg. incremental acc "
           "| forgetting | wall time per run (s) |",
           "|---|---|---|---|---:|---:|---:|---:|"]
  for row in rows:
    orders, seeds = _runs_text(row)
    settings = f"`{row.settings}`" if row.settings else ""
    lines.append(f"| `{row.label}` | {settings} | {orders} | {seeds} | "
                 f"{plus_minus(row.final_acc)} | {plus_minus(row.avg_inc_acc)} | "
                 f"{plus_minus(row.forgetting)} | {_wall(row.wall_seconds)} |")
  lines += ["", "Per run: A_t, the accuracy over the classes seen after each task t = 1..T (the "
            "last is the final accuracy).", "", "| label | class order | seed | A_t |",
            "|---|---|---|---|"]
  for row in rows:
    for run, acc_seen in zip(row.runs, row.acc_seen):
      lines.append(f"| `{row.label}` | {run.order} | {run.seed} | "
                   f"{' / '.join(f'{a:.2f}' for a in acc_seen)} |")
  return "\n".join(lines) + "\n"


def write_csv(path: str, rows: Sequence[SummaryRow]) -> None:
  fields = ["label", "settings", "runs", "orders", "seeds", "final_acc_mean", "final_acc_std",
            "avg_inc_acc_mean", "avg_inc_acc_std", "forgetting_mean", "forgetting_std",
            "wall_seconds_mean", "wall_seconds"]
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(fields)
    for row in rows:
      orders, seeds = _runs_text(row)
      forgetting = row.forgetting or ("", None)
      opt = lambda v: "" if v is None else v
      writer.writerow([row.label, row.settings, len(row.runs), orders, seeds,
                       row.final_acc[0], opt(row.final_acc[1]), row.avg_inc_acc[0],
                       opt(row.avg_inc_acc[1]), forgetting[0], opt(forgetting[1]),
                       float(np.mean(row.wall_seconds)),
                       " ".join(f"{s:.1f}" for s in row.wall_seconds)])


def replace_section(path: str, name: str, text: str) -> None:
  """Puts `text` between the `<!-- sweep:NAME:begin/end -->` markers of the file at `path`,
  keeping everything else; appends the markers (creating the file) when absent."""
  begin, end = f"<!-- sweep:{name}:begin -->", f"<!-- sweep:{name}:end -->"
  block = f"{begin}\n{text.rstrip()}\n{end}"
  content = ""
  if os.path.exists(path):
    with open(path) as f:
      content = f.read()
  if begin in content:
    start = content.index(begin)
    stop = content.find(end, start)
    if stop < 0:
      raise SweepError(f"{path} has {begin} but no {end}.")
    content = content[:start] + block + content[stop + len(end):]
  else:
    content = (content.rstrip() + "\n\n" if content.strip() else "") + block + "\n"
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(f"{path}.tmp", "w") as f:
    f.write(content)
  os.replace(f"{path}.tmp", path)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m rfd_jax.sweep", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", help="configs/*.py file of every run (not needed with "
                      "--summarize_only)")
  parser.add_argument("--workdir", required=True, help="the sweep's directory")
  parser.add_argument("--methods", help="label[:key=value...],... (a bare label sets method)")
  parser.add_argument("--orders", default="seed0", help="class orders, e.g. seed0,seed1,seed2")
  parser.add_argument("--seeds", default="0", help="config.seed values, e.g. 0,1,2")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a config override for every run (repeatable)")
  parser.add_argument("--parallel", type=int, default=1, help="runs at a time")
  parser.add_argument("--output", help="Markdown file to put the table in (e.g. docs/results.md)")
  parser.add_argument("--section", help="marker name in --output (default: the workdir's name)")
  parser.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
  parser.add_argument("--summarize_only", action="store_true",
                      help="rebuild the summaries from existing runs")
  args = parser.parse_args(argv)
  if not args.summarize_only and not (args.config and args.methods):
    parser.error("--config and --methods are required unless --summarize_only")
  if args.parallel < 1:
    parser.error("--parallel must be >= 1")
  return args


def plan_from_args(args: argparse.Namespace) -> tuple[list[Run], list[tuple[str, str]]]:
  """The sweep's runs and its `--set` overrides; SweepError on a bad argument."""
  common = [parse_override(s, where="--set") for s in args.set]
  for key, _ in common:
    if key in RESERVED or key == "method":
      raise SweepError(f"--set {key}=...: use {RESERVED.get(key, '--methods')} for it.")
  orders = split_list(args.orders)
  for order in orders:
    if order not in tasks.NAMED_ORDERS:
      raise SweepError(f"--orders: {order!r} is not one of the named class orders "
                       f"{tasks.NAMED_ORDERS}.")
  try:
    seeds = [int(s) for s in split_list(args.seeds)]
  except ValueError as e:
    raise SweepError(f"--seeds {args.seeds!r}: comma-separated integers expected.") from e
  if args.methods:
    entries = [parse_method_entry(e) for e in split_list(args.methods)]
    check_methods(entries)
    labels = [e.label for e in entries]
    if len(set(labels)) < len(labels):
      raise SweepError(f"--methods: duplicate labels in {labels}.")
    return plan_runs(args.workdir, entries, orders, seeds), common
  if not os.path.isdir(args.workdir):
    raise SweepError(f"--workdir {args.workdir} does not exist.")
  return discover_runs(args.workdir), common


def write_summaries(workdir: str, rows: Sequence[SummaryRow], commands: Sequence[str],
                    output: str | None, section: str | None) -> str:
  """summary.md, summary.csv, comparison.png, and the section of `output`. → the Markdown."""
  markdown = format_markdown(rows, commands)
  with open(os.path.join(workdir, "summary.md"), "w") as f:
    f.write(markdown)
  write_csv(os.path.join(workdir, "summary.csv"), rows)
  from rfd_jax import plots  # pylint: disable=g-import-not-at-top  (matplotlib: only when needed)
  plots.save_comparison(os.path.join(workdir, "comparison.png"),
                        {row.label: row.acc_seen for row in rows}, rows[0].classes_seen)
  if output:
    replace_section(output, section or os.path.basename(os.path.normpath(workdir)), markdown)
  return markdown


def main(argv: Sequence[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  command = shlex.join(["python", "-m", "rfd_jax.sweep", *argv])
  try:
    runs, common = plan_from_args(args)
  except SweepError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2

  failed: list[str] = []  # messages; appended to from the --parallel threads too
  results: dict[str, dict] = {}  # run workdir → its results.json

  def collect(run: Run) -> bool:
    """Whether the run needs no launch: finished (results kept), or a stray run (an error)."""
    try:
      found = load_results(run)
    except SweepError as e:
      failed.append(str(e))
      return True
    if found is not None:
      results[run.workdir] = found
    return found is not None

  todo = [run for run in runs if not collect(run)]
  if args.summarize_only:
    for run in todo:
      print(f"missing {run.workdir}: no results.json")
  else:
    for run in runs:
      if run.workdir in results:
        print(f"skip {run.workdir}: results.json exists")
    if args.dry_run:
      for run in todo:
        print(shlex.join(run.command(args.config, common)))
      todo = []

    def one(i_run):
      i, run = i_run
      progress = f"[{i + 1}/{len(todo)}]"
      print(f"{progress} {run.entry.label} {run.order} seed {run.seed}: running "
            f"(log: {os.path.join(run.workdir, 'log.txt')})", flush=True)
      try:
        status, seconds = launch(run, args.config, common)
      except OSError as e:  # e.g. an unwritable workdir: this run fails, the others go on
        status, seconds = f"{type(e).__name__}: {e}", 0.0
      if status == 0 and collect(run):
        print(f"{progress} {run.workdir}: done in {seconds:.0f}s, final accuracy "
              f"{results[run.workdir]['final_acc']:.2f}", flush=True)
      else:
        failed.append(f"{run.workdir}: exit status {status} (see its log.txt)")
        print(f"{progress} {run.workdir}: FAILED, exit status {status}", flush=True)

    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
      list(pool.map(one, enumerate(todo)))

  if not args.dry_run:
    # The command that ran the runs is kept for the tables --summarize_only rebuilds later.
    os.makedirs(args.workdir, exist_ok=True)
    commands_file = os.path.join(args.workdir, "sweep_command.txt")
    commands = [command]
    if not args.summarize_only:
      with open(commands_file, "w") as f:
        f.write(command + "\n")
    elif os.path.isfile(commands_file):
      with open(commands_file) as f:
        commands = [f.read().strip(), command]
    rows = summarize(runs, results)
    if rows:
      markdown = write_summaries(args.workdir, rows, commands, args.output, args.section)
      print(f"\n{markdown}\nwrote {os.path.join(args.workdir, 'summary.md')}, summary.csv, "
            "comparison.png" + (f" and {args.output}" if args.output else ""))
    else:
      print("no finished runs to summarize")
  for message in failed:
    print(f"error: {message}", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
