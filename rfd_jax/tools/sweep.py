r"""Runs methods × class orders × seeds into sub-workdirs and summarises them.

  python -m rfd_jax.tools.sweep --config configs/digits.py --workdir runs/sweep_digits \
      --orders seed0,seed1,seed2 \
      --methods finetune,joint,rfd,"rfd-no-lfd:method=rfd:distill.lambda_lfd=0" \
      [--set key=value ...] [--seeds 0,1] [--parallel N] [--devices 0,1,2,3 | auto] \
      [--device_kind gpu | tpu] \
      [--output docs/results.md --section digits] [--reference rfd] [--dry_run] [--summarize_only]

`--orders` is a comma-separated list of class orders: `identity`, `seed<N>` for any N >= 0 (the
`random.seed(N)` shuffle), `imagenet1993`, a range `seed<A>-seed<B>` (both ends included), or an
explicit order in brackets, `[1,0,3,2,5,4,7,6,9,8]` (or with dots, `1.0.3.2.5.4.7.6.9.8`), whose
runs go to the directory `1.0.3.2.5.4.7.6.9.8` (an order longer than 64 characters: its first ids
and a hash, `tasks.order_dir_name`).

A methods entry is `label[:key=value[:key=value ...]]` (config fields without the `config.`
prefix); a bare label, or an entry without a `method=` override, sets `method=label`. `--set`
applies to every run, before the entry's own overrides. Run (label, order, seed) goes to
`WORKDIR/<label>/<order>` (`<order>-s<seed>` for seeds other than 0) and is
`python -m rfd_jax.main --config CONFIG --workdir SUB --config.method=M --config.data.class_order=O
--config.seed=S <overrides>`, logged to `SUB/log.txt`. Runs with a results.json are skipped, so a
sweep resumes, or collects runs made earlier by hand in that layout; a failed run is reported, the
others go on, and the exit status is 1.

`--devices` gives each run a device of its own and runs one per device at a time unless --parallel
says otherwise: on a multi-GPU machine or a TPU VM, runs of a small network (ResNet-32) go faster
side by side than data-parallel over all devices (launch/README.md). Without it, every run sees
every device (with --parallel > 1 on a GPU machine, a warning: each run would preallocate memory on
every GPU). `--device_kind gpu` (default): CUDA_VISIBLE_DEVICES=<id> (`auto`: every GPU
`nvidia-smi -L` lists); with more runs at a time than GPUs, the runs share them round-robin, each
with XLA_PYTHON_CLIENT_MEM_FRACTION = 0.9 / (runs on its GPU). `--device_kind tpu`: one process per
chip of a TPU VM, TPU_VISIBLE_CHIPS=<id> with its bounds and libtpu ports (`auto`: every chip);
at most one run per chip. Each variable is explained in `sweep_devices`.

Then WORKDIR/summary.md, summary.csv, comparison.png and per_order.png: per label, mean ± sample
std over its runs of the final accuracy, average incremental accuracy and forgetting, the 95%
Student-t interval of the two accuracies' means, and the wall time per run. `--reference LABEL` adds
the paired view (summary.md's paired section, paired.csv): for each other label, its per-order
differences to LABEL on the runs both made, their mean ± sample std and 95% interval, and on how many
orders it is higher / equal / lower; per_order.png draws each order's final accuracies across the
labels as one line.
`--output FILE --section NAME` also puts the Markdown table, with the sweep's command line,
between `<!-- sweep:NAME:begin -->` and `<!-- sweep:NAME:end -->` in FILE, keeping the rest of it.
`--summarize_only` rebuilds the summaries from the sub-workdirs without running anything (without
--methods: every `<label>/<run>/results.json` under WORKDIR).

The run layout is `sweep_runs`, the devices `sweep_devices`, the tables and the figure `summaries`;
this module is the command.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import concurrent.futures
import os
import queue
import shlex
import subprocess
import sys
import time

from rfd_jax.methods import tasks
from rfd_jax.tools import summaries, sweep_checks, sweep_devices, sweep_runs


def check_methods(entries: Sequence[sweep_runs.MethodEntry]) -> None:
  """SweepError naming the first entry whose method rfd_jax.main does not know (a dry run would
  print its commands and every run would fail)."""
  # Imported here: config_validation imports JAX, which the summaries do not need.
  from rfd_jax.cli import config_validation  # pylint: disable=g-import-not-at-top
  for entry in entries:
    if entry.method not in config_validation.METHODS:
      raise sweep_runs.SweepError(
          f"--methods: unknown method {entry.method!r} (entry {entry.label!r}); known methods: "
          f"{', '.join(config_validation.METHODS)}. A label that is not a method names its "
          f"method, e.g. {entry.label}:method=rfd.")


def launch(run: sweep_runs.Run, config: str, common: Sequence[tuple[str, str]],
           env: dict[str, str] | None = None) -> tuple[int, float]:
  """Runs one rfd_jax.main subprocess, output appended to SUB/log.txt, with `env` added to this
  process's environment (a device slot, `sweep_devices`). → (exit status, seconds)."""
  os.makedirs(run.workdir, exist_ok=True)
  command = run.command(config, common)
  start = time.time()
  with open(os.path.join(run.workdir, "log.txt"), "a") as log:
    where = "".join(f"{key}={value} " for key, value in (env or {}).items())
    log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {where}{shlex.join(command)}\n")
    log.flush()
    proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False,
                          env=None if env is None else dict(os.environ, **env))
  return proc.returncode, time.time() - start


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m rfd_jax.tools.sweep", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", help="configs/*.py file of every run (not needed with "
                      "--summarize_only)")
  parser.add_argument("--workdir", required=True, help="the sweep's directory")
  parser.add_argument("--methods", help="label[:key=value...],... (a bare label sets method)")
  parser.add_argument("--orders", default="seed0",
                      help="class orders: names, seed ranges, explicit orders in brackets, e.g. "
                      "seed0-seed4,seed7,[1,0,3,2,5,4,7,6,9,8] (tasks.order_list)")
  parser.add_argument("--seeds", default="0", help="config.seed values, e.g. 0,1,2")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a config override for every run (repeatable)")
  parser.add_argument("--parallel", type=int, default=None,
                      help="runs at a time (default: 1, or one per --devices device; more than "
                      "GPUs: they share them)")
  parser.add_argument("--devices", default="", help="GPU or TPU chip ids, each run gets one, "
                      "e.g. 0,1,2,3, or auto (every GPU of nvidia-smi -L / every TPU chip); "
                      "default: all runs see all devices")
  parser.add_argument("--device_kind", choices=sweep_devices.KINDS, default="gpu",
                      help="what --devices lists (default: gpu)")
  parser.add_argument("--output", help="Markdown file to put the table in (e.g. docs/results.md)")
  parser.add_argument("--section", help="marker name in --output (default: the workdir's name)")
  parser.add_argument("--reference", metavar="LABEL",
                      help="a label: the summaries add each other label's per-order differences "
                      "to it (mean ± sd, 95%% interval, higher/equal/lower) and paired.csv")
  parser.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
  parser.add_argument("--summarize_only", action="store_true",
                      help="rebuild the summaries from existing runs")
  args = parser.parse_args(argv)
  if not args.summarize_only and not (args.config and args.methods):
    parser.error("--config and --methods are required unless --summarize_only")
  if args.parallel is not None and args.parallel < 1:
    parser.error("--parallel must be >= 1")
  return args


def plan_from_args(args: argparse.Namespace
                   ) -> tuple[list[sweep_runs.Run], list[tuple[str, str]]]:
  """The sweep's runs and its `--set` overrides; SweepError on a bad argument."""
  common = [sweep_runs.parse_override(s, where="--set") for s in args.set]
  for key, _ in common:
    if key in sweep_runs.RESERVED or key == "method":
      raise sweep_runs.SweepError(
          f"--set {key}=...: use {sweep_runs.RESERVED.get(key, '--methods')} for it.")
  try:
    orders = tasks.order_list(args.orders, where="--orders")
  except ValueError as e:
    raise sweep_runs.SweepError(str(e)) from None
  try:
    seeds = [int(s) for s in sweep_runs.split_list(args.seeds)]
  except ValueError as e:
    raise sweep_runs.SweepError(
        f"--seeds {args.seeds!r}: comma-separated integers expected.") from e
  if args.methods:
    entries = [sweep_runs.parse_method_entry(e) for e in sweep_runs.split_list(args.methods)]
    check_methods(entries)
    labels = [e.label for e in entries]
    if len(set(labels)) < len(labels):
      raise sweep_runs.SweepError(f"--methods: duplicate labels in {labels}.")
    runs = sweep_runs.plan_runs(args.workdir, entries, orders, seeds)
  else:
    if not os.path.isdir(args.workdir):
      raise sweep_runs.SweepError(f"--workdir {args.workdir} does not exist.")
    runs = sweep_runs.discover_runs(args.workdir)
  labels = list(dict.fromkeys(run.entry.label for run in runs))
  if args.reference is not None and args.reference not in labels:
    raise sweep_runs.SweepError(f"--reference {args.reference}: not a label of the sweep "
                                f"({', '.join(labels) or 'no runs found'}).")
  return runs, common


def main(argv: Sequence[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  command = sweep_checks.portable_command(["python", "-m", "rfd_jax.tools.sweep", *argv])
  try:
    runs, common = plan_from_args(args)
    devices = ([] if args.summarize_only else
               sweep_devices.device_ids(args.devices, args.device_kind))
    parallel = args.parallel or max(len(devices), 1)
    slots = sweep_devices.slots(args.device_kind, devices, parallel, os.environ)
  except sweep_runs.SweepError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  warning = (None if args.summarize_only else
             sweep_devices.sharing_warning(args.device_kind, devices, parallel))
  if warning:
    print(warning, file=sys.stderr)
  free_slots: queue.Queue = queue.Queue()  # a run takes a slot and gives it back when done
  for slot in slots:
    free_slots.put(slot)

  failed: list[str] = []  # messages; appended to from the --parallel threads too
  results: dict[str, dict] = {}  # run workdir → its results.json

  def collect(run: sweep_runs.Run) -> bool:
    """Whether the run needs no launch: finished (results kept), or a stray run (an error)."""
    try:
      found = sweep_runs.load_results(run)
    except sweep_runs.SweepError as e:
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
    try:  # every run's config, before any folder is created
      sweep_checks.check_runs(todo, args.config, common)
    except sweep_runs.SweepError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2

    def one(i_run):
      i, run = i_run
      progress = f"[{i + 1}/{len(todo)}]"
      slot = free_slots.get() if slots else None
      print(f"{progress} {run.entry.label} {run.order} seed {run.seed}: running"
            f"{'' if slot is None else f' on {slot.name}'} "
            f"(log: {os.path.join(run.workdir, 'log.txt')})", flush=True)
      try:
        status, seconds = launch(run, args.config, common, None if slot is None else slot.env)
      except OSError as e:  # e.g. an unwritable workdir: this run fails, the others go on
        status, seconds = f"{type(e).__name__}: {e}", 0.0
      finally:
        if slot is not None:
          free_slots.put(slot)
      if status == 0 and collect(run) and run.workdir in results:  # not a stray results.json
        print(f"{progress} {run.workdir}: done in {seconds:.0f}s, final accuracy "
              f"{results[run.workdir]['final_acc']:.2f}", flush=True)
      else:
        failed.append(f"{run.workdir}: exit status {status} (see its log.txt)")
        print(f"{progress} {run.workdir}: FAILED, exit status {status}", flush=True)

    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
      list(pool.map(one, enumerate(todo)))

  if not args.dry_run:
    # The command that ran the runs is kept for the tables --summarize_only rebuilds later.
    os.makedirs(args.workdir, exist_ok=True)
    # One line per distinct command: sweeps run one order at a time into one workdir list each.
    commands_file = os.path.join(args.workdir, "sweep_command.txt")
    recorded = []
    if os.path.isfile(commands_file):
      with open(commands_file) as f:
        recorded = [sweep_checks.portable_command(shlex.split(line))
                    for line in f.read().splitlines() if line.strip()]
    if not args.summarize_only and command not in recorded:
      recorded.append(command)
      with open(commands_file, "w") as f:
        f.write("\n".join(recorded) + "\n")
    commands = recorded if not args.summarize_only else [*recorded, command]
    rows = summaries.summarize(runs, results)
    if rows:
      markdown = summaries.write_summaries(args.workdir, rows, commands, args.output,
                                           args.section, args.reference)
      print(f"\n{markdown}\nwrote {os.path.join(args.workdir, 'summary.md')}, summary.csv, "
            f"{'paired.csv, ' if args.reference else ''}comparison.png, per_order.png"
            + (f" and {args.output}" if args.output else ""))
    else:
      print("no finished runs to summarize")
  for message in failed:
    print(f"error: {message}", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
