r"""Entry point: `python -m rfd_jax.main --config configs/digits.py [--workdir DIR] [--config.x=y]`.

Runs (or resumes, from WORKDIR/checkpoints) the job of the config (`config.job`):
  dfcil (default; configs without a `job` field): the class-incremental experiment;
  teacher: a classifier trained on real data (configs/teacher_*.py), the teacher of dfkd;
  dfkd: RGAL data-free knowledge distillation teacher → student (configs/dfkd_*.py).
It writes config.json, metrics.jsonl and results.json under the workdir and prints the results.

Exit status: 0 done; 2 config error or refused resume (config differs from the checkpoint's);
3 (checkpointing.EXIT_NON_FINITE) a loss became NaN/inf, nothing saved after the last good
checkpoint; 75 (checkpointing.EXIT_PREEMPTED) stopped by SIGTERM/SIGINT after saving a checkpoint:
rerun the same command to resume.
"""

import os
import sys

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from rfd_jax import checkpointing, config_validation, jobs, metrics, parallel, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory (default: runs/<dataset>-<method>-<class_order>).")
flags.mark_flags_as_required(["config"])


def default_workdir(config) -> str:
  job = config.get("job", "dfcil")  # validated later, where a bad value is reported cleanly
  if job != "dfcil":
    return os.path.join("runs", f"{job}-{config.data.dataset}-{config.model.name}")
  order = config.data.class_order
  order = order if isinstance(order, str) and "," not in order else "custom"
  return os.path.join("runs", f"{config.data.dataset}-{config.method}-{order}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  parallel.maybe_initialize_distributed()  # first JAX call: multi-host runs join their cluster here
  config = _CONFIG.value
  workdir = _WORKDIR.value or default_workdir(config)
  logging.info("JAX %s: process %d of %d, %d local / %d global devices: %s", jax.__version__,
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices())
  logging.info("workdir %s", os.path.abspath(workdir))
  try:
    job = jobs.job_of(config)
    if job == "teacher":
      from rfd_jax import teacher  # pylint: disable=g-import-not-at-top
      results = teacher.train_teacher(config, workdir)
    elif job == "dfkd":
      from rfd_jax import dfkd  # pylint: disable=g-import-not-at-top
      results = dfkd.train_dfkd(config, workdir)
    else:
      results = train.train_and_evaluate(config, workdir)
  except (config_validation.ConfigError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except checkpointing.NonFiniteError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(checkpointing.EXIT_NON_FINITE)
  except checkpointing.Preempted as e:
    print(f"preempted: {e}", file=sys.stderr)
    sys.exit(checkpointing.EXIT_PREEMPTED)
  if not parallel.is_main_process():
    return
  if job == "teacher":
    print(f"\nteacher {results['model']} on {results['dataset']}: test accuracy "
          f"{results['accuracy']:.2f}% after {len(results['accuracies'])} epochs "
          f"(results in {os.path.join(workdir, 'results.json')})")
    return
  if job == "dfkd":
    print(f"\ndfkd {results['teacher']} → {results['student']} on {results['dataset']}: teacher "
          f"{results['teacher_accuracy']:.2f}%, student {results['accuracy']:.2f}% after the last "
          f"epoch, best {results['best_accuracy']:.2f}% (results in "
          f"{os.path.join(workdir, 'results.json')})")
    return
  print(f"\n{results['method']} on {results['dataset']}, {results['num_tasks']} tasks "
        f"(results in {os.path.join(workdir, 'results.json')})\n")
  print(metrics.format_table(results))


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  app.run(main)
