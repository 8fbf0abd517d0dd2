"""What a sweep checks and writes before it runs anything: every run's config, checked as
rfd_jax.main would (`check_runs`), and its command line as it goes into the generated tables, with
no path of the machine that made them (`portable_command`).
"""

from __future__ import annotations

from collections.abc import Sequence
import contextlib
import io
import os
import re
import shlex

from rfd_jax.tools import sweep_runs
from rfd_jax.engine import errors

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA_DIR = "DATA_DIR"  # what a command shows instead of the machine's data folder
_DATA_DIR_VALUE = re.compile(r"^((?:--)?(?:config\.)?data\.data_dir=)(.+)$")


def run_error(argv: Sequence[str]) -> str | None:
  """The `error:` line rfd_jax.main would print for `argv` (its arguments, after the program
  name) before running anything, or None if its config, workdir and data pass every check.
  Nothing is created or written."""
  # Imported here: these import JAX, which the summaries do not need.
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from rfd_jax.cli import preflight, usage  # pylint: disable=g-import-not-at-top
  argv = ["rfd_jax.main", *argv]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=flag_values, sys_argv=argv,
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "", flag_values=flag_values)
  stderr = io.StringIO()
  try:
    with contextlib.redirect_stderr(stderr):
      usage.parse_flags(argv, flag_values=flag_values)
    config = flag_values["config"].value
    workdir = flag_values["workdir"].value or usage.default_workdir(config)
    preflight.check(config, workdir)
  except SystemExit:  # usage.fail: its `error:` line is in `stderr`
    return stderr.getvalue().strip().splitlines()[0]
  except (errors.ConfigError, FileNotFoundError) as e:
    return f"error: {str(e).strip().splitlines()[0]}"
  return None


def check_runs(runs: Sequence[sweep_runs.Run], config: str,
               common: Sequence[tuple[str, str]]) -> None:
  """SweepError with the first failing run's directory and `error:` line, so that a sweep whose
  runs would all fail says so before it creates any folder."""
  checked: dict[tuple[str, ...], str | None] = {}
  for run in runs:
    args = run.command(config, common)[3:]  # after `python -m rfd_jax.main`
    # the run's own directory does not change the checks of its config: checked once per config
    key = tuple(a for a in args if a != run.workdir)
    if key not in checked:
      checked[key] = run_error(args)
    if checked[key] is not None:
      raise sweep_runs.SweepError(
          f"run {run.workdir} would fail: {checked[key].removeprefix('error: ')} (nothing was "
          "created; fix the sweep's arguments)")


def portable_path(path: str, repo: str = REPO) -> str:
  """`path` relative to the repository if it lies inside it, else as given."""
  absolute = os.path.abspath(path)
  if os.path.isabs(path) and (absolute == repo or absolute.startswith(repo + os.sep)):
    return os.path.relpath(absolute, repo)
  return path


def portable_command(words: Sequence[str], repo: str = REPO) -> str:
  """A command line as the generated tables show it: absolute paths inside the repository relative
  to it (runs/..., configs/...), the data folder (config.data.data_dir) as DATA_DIR."""
  out = []
  previous = ""
  for word in words:
    match = _DATA_DIR_VALUE.match(word)
    if match:
      word = match.group(1) + DATA_DIR
    elif previous in ("--data_dir",):
      word = DATA_DIR
    elif "=" in word and word.startswith("--"):
      name, _, value = word.partition("=")
      word = f"{name}={portable_path(value, repo)}"
    else:
      word = portable_path(word, repo)
    out.append(word)
    previous = word
  return shlex.join(out)
