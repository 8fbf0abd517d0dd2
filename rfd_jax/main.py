r"""Runs an experiment: python -m rfd_jax.main --config configs/<name>.py [--workdir DIR]
[--config.<field>=<value> ...]   (from any directory; --config <name> names a shipped config)

Runs (or resumes, from WORKDIR/checkpoints) the job of the config (`config.job`):
  dfcil (default; configs without a `job` field): the class-incremental experiment;
  teacher: a classifier trained on real data (configs/teacher_*.py), the teacher of dfkd;
  dfkd: RGAL data-free knowledge distillation teacher → student (configs/dfkd_*.py).
It writes config.json, metrics.jsonl and results.json under the workdir and prints the results.

A config's fields, with their values after any overrides (nothing runs):
  python -m rfd_jax.main --config configs/digits.py --print_config
Any of them can be overridden, e.g. --config.optim.lr=0.05 --config.data.class_order=seed1.
The config, the workdir, the data, config.init_from and the dfkd teacher are checked before
anything is created or written. On CPU (jaxlib 0.10.x, no accelerator plugin) the program sets
XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= (faster); set XLA_FLAGS yourself, even empty,
to turn that off.

Exit status: 0 done; 2 a usage or config error (one `error:` line) or a refused resume (config
differs from the checkpoint's, or the workdir's checkpoints are all unreadable: nothing is deleted,
and a new --workdir starts afresh); 3 (checkpointing.EXIT_NON_FINITE) a loss became NaN/inf, nothing
saved after the last good checkpoint; 75 (checkpointing.EXIT_PREEMPTED) stopped by SIGTERM/SIGINT
after saving a checkpoint: rerun the same command to resume.
"""

import os
import sys

from absl import flags, logging
import jax
from ml_collections import config_flags

from rfd_jax.engine import checkpointing, errors, parallel
from rfd_jax.cli import usage, console, finished, preflight, xla_env
from rfd_jax.jobs import group, dfcil
from rfd_jax.methods import metrics

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config file, or a shipped config by name from any directory (digits, "
    "configs/digits.py, ...).", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory (default: runs/<dataset>-<method>-<class_order>).")
_PRINT_CONFIG = flags.DEFINE_bool(
    "print_config", False, "Print the config's fields and values (after the overrides); run nothing.")
_LOG_FORMAT = flags.DEFINE_enum(
    "log_format", "auto", console.FORMATS, "Console log lines: compact (HH:MM:SS message), full "
    "(absl's level, date, thread, file:line), auto: compact on a terminal, full when redirected.")
flags.mark_flags_as_required(["config"])


def checked_job(config, workdir: str) -> str:
  """preflight.check, quietly (a JAX backend it starts logs nothing at INFO): the job, or one
  `error:` line and exit status 2 before anything is logged, created or written."""
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.WARNING)
  try:
    return preflight.check(config, workdir)
  except (errors.ConfigError, FileNotFoundError) as e:
    usage.fail(str(e))
  finally:
    logging.set_verbosity(verbosity)


def run_job(config, workdir: str, job: str | None = None) -> tuple[str, dict]:
  """Checks everything checkable before the workdir is touched (unless `job`, the checks' result,
  is given), then runs the config's job. A config, data or workdir error ends the program: one
  `error:` line, exit status 2."""
  job = job or checked_job(config, workdir)
  try:
    if job == "teacher":
      from rfd_jax.jobs import teacher  # pylint: disable=g-import-not-at-top
      return job, teacher.train_teacher(config, workdir)
    if job == "dfkd":
      from rfd_jax.jobs import dfkd  # pylint: disable=g-import-not-at-top
      return job, dfkd.train_dfkd(config, workdir)
    return ("group" if group.is_group(config) else job), dfcil.train_and_evaluate(config, workdir)
  except (errors.ConfigError, FileNotFoundError) as e:
    usage.fail(str(e))


def workdir_of(config, flag_value: str | None) -> str:
  """--workdir, or the default; an empty --workdir= is an error (not the default)."""
  if flag_value is None:
    return usage.default_workdir(config)
  if not flag_value.strip():
    usage.fail("--workdir is empty; pass a directory (created if missing), or leave --workdir out "
             f"for the default {usage.default_workdir(config)}.")
  return flag_value


def main(argv):
  if len(argv) > 1:
    usage.fail(f"unexpected arguments {argv[1:]}; flags take the form --name=value (see --help).")
  config = _CONFIG.value
  if _PRINT_CONFIG.value:
    usage.write_stdout(usage.format_config(config))
    return
  workdir = workdir_of(config, _WORKDIR.value)
  # before JAX creates its backend, which reads it; logged once the checks have passed
  xla_notes = []
  xla_env.set_fast_cpu_flags(log=lambda fmt, *args: xla_notes.append(fmt % args))
  parallel.maybe_initialize_distributed()  # first JAX call: multi-host runs join their cluster here
  job = checked_job(config, workdir)
  kind = "group" if job == "dfcil" and group.is_group(config) else job
  done = finished.finished_results(config, workdir, kind)
  if done is not None:  # nothing to run, and nothing in the workdir changes
    usage.write_stdout(f"{workdir} holds the finished run of this config: nothing to do (a new "
                     f"--workdir runs it again).\n{summary(kind, done, workdir, write=False)}\n")
    return
  console.set_console_format(_LOG_FORMAT.value)
  for note in xla_notes:
    logging.info("%s", note)
  logging.info("JAX %s: process %d of %d, %d local / %d global devices: %s", jax.__version__,
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices())
  logging.info("workdir %s", os.path.abspath(workdir))
  try:
    job, results = run_job(config, workdir, job)
  except checkpointing.NonFiniteError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(checkpointing.EXIT_NON_FINITE)
  except checkpointing.Preempted as e:
    print(f"preempted: {e}", file=sys.stderr)
    sys.exit(checkpointing.EXIT_PREEMPTED)
  if parallel.is_main_process():
    print(summary(job, results, workdir))


def summary(job: str, results: dict, workdir: str, *, write: bool = True) -> str:
  """The text printed at the end of a run (write: a group's summary files too)."""
  where = f"results in {os.path.join(workdir, 'results.json')}"
  if job == "teacher":
    return (f"\nteacher {results['model']} on {results['dataset']}: test accuracy "
            f"{results['accuracy']:.2f}% after {len(results['accuracies'])} epochs ({where})")
  if job == "dfkd":
    return (f"\ndfkd {results['teacher']} → {results['student']} on {results['dataset']}: teacher "
            f"{results['teacher_accuracy']:.2f}%, student {results['accuracy']:.2f}% after the "
            f"last epoch, best {results['best_accuracy']:.2f}% ({where})")
  if job == "group":
    return group_summary(results, workdir, write=write)
  return (f"\n{results['method']} on {results['dataset']}, {results['num_tasks']} tasks "
          f"({where})\n\n{metrics.format_table(results)}")


def group_summary(results: dict[str, dict], workdir: str, *, write: bool = True) -> str:
  """Each run's table, then the group's mean ± std (summary.md, summary.csv and comparison.png,
  written with rfd_jax.tools.sweep's summaries, unless not `write`)."""
  from rfd_jax.tools import summaries, sweep_checks, sweep_runs  # pylint: disable=g-import-not-at-top
  tables = "\n\n".join(f"{name}:\n{metrics.format_table(r)}" for name, r in results.items())
  if not write:
    return f"\n{len(results)} runs in {workdir}\n\n{tables}"
  runs = sweep_runs.discover_runs(workdir)
  found = {run.workdir: sweep_runs.load_results(run) for run in runs}
  rows = summaries.summarize(runs, {k: v for k, v in found.items() if v is not None})
  command = sweep_checks.portable_command(["python", "-m", "rfd_jax.main", *sys.argv[1:]])
  markdown = summaries.write_summaries(workdir, rows, [command], None, None)
  return (f"\n{len(results)} runs in {workdir}\n\n{tables}\n\n{markdown}\nwrote "
          f"{os.path.join(workdir, 'summary.md')}, summary.csv, comparison.png")


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  usage.run(main)
