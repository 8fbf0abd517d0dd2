"""The command line of rfd_jax.main: every mistake is one `error:` line on stderr, exit status 2,
no traceback, and nothing written; --help exits 0; help piped into a closed reader stays quiet.

Most cases run in-process (usage.parse_flags on a fresh FlagValues, main.run_job, whose checks run
before anything is created); three subprocess tests check the real command line end to end (each
process costs a JAX import, a few seconds).
"""

import os
import subprocess
import sys

from absl import flags
from ml_collections import config_flags
import numpy as np
import pytest

from configs import cifar10, dfkd_digits, digits, teacher_digits, tiny_imagenet
from rfd_jax.cli import usage, preflight
from rfd_jax import main
from rfd_jax.data import sklearn_digits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _one_error_line(capsys, call, *, details: bool = False) -> str:
  """Runs `call`, which must exit with status 2 having printed exactly one `error:` line on stderr
  and nothing else (no log line, nothing on stdout); with `details`, indented lines may follow it
  (the missing-data message's download and prepare commands). Returns the `error:` line."""
  with pytest.raises(SystemExit) as exit_info:
    call()
  assert exit_info.value.code == 2
  out, err = capsys.readouterr()
  first, *rest = err.split("\n")
  assert not out and first.startswith("error: ") and err.endswith("\n"), err
  assert all(line.startswith("  ") for line in rest[:-1]) if details else len(rest) == 1, err
  return first


def _parse(*args):
  """cli.parse_flags of `prog --config configs/digits.py ARGS` on fresh flags (cwd: the repo)."""
  argv = ["prog", *args]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=flag_values, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "", flag_values=flag_values)
  flags.mark_flag_as_required("config", flag_values=flag_values)
  return usage.parse_flags(argv, flag_values=flag_values), flag_values


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
  monkeypatch.chdir(REPO)


@pytest.mark.parametrize("override, expected", [
    ("--config.optim.lrr=0.1", "config.optim has no field 'lrr'; did you mean --config.optim.lr"),
    ("--config.optmi.lr=0.1", "config has no field 'optmi'; did you mean --config.optim.lr?"),
    ("--config.lr=0.1", "config has no field 'lr'; did you mean --config.inversion.lr or "
                        "--config.optim.lr?"),
    ("--config.optim.lr.decay=0.1", "config.optim.lr is a float value and has no field 'decay'"),
])
def test_unknown_field_names_the_closest(capsys, override, expected):
  line = _one_error_line(capsys, lambda: _parse("--config", "configs/digits.py", override))
  assert expected in line


@pytest.mark.parametrize("override, expected", [
    ("--config.optim.lr=abc", "config.optim.lr is a float (now 0.05)"),
    ("--config.data.batch_size=1.5", "config.data.batch_size is an int (now 32)"),
    ("--config.log.progress=maybe", "expected True or False; config.log.progress is a bool"),
    ("--config.optim=3", "config.optim is a group of fields; override them one by one"),
    ("--config.optim.milestones=abc", "'abc' is not one of the numbers that "
                                      "config.optim.milestones holds (now (10, 14))"),
])
def test_wrong_type_in_an_override(capsys, override, expected):
  line = _one_error_line(capsys, lambda: _parse("--config", "configs/digits.py", override))
  assert line.startswith(f"error: {override.split('=')[0]}") and expected in line


@pytest.mark.parametrize("old, new", [
    ("inversion.rgal_triplet", "rgal.triplet"),
    ("inversion.rgal_direction", "rgal.syn_triplet_direction"),
    ("distill.lambda_striplet", "rgal.striplet"),
    ("model.conv_dtype", "dtype"),
])
def test_removed_field_names_its_replacement(capsys, old, new):
  line = _one_error_line(capsys, lambda: _parse("--config", "configs/digits.py",
                                                f"--config.{old}=1"))
  assert line == (f"error: --config.{old}: config.{old} was removed; use --config.{new}=... "
                  "instead.")


def test_removed_field_set_in_a_config_file(capsys, tmp_path):
  """A config of one's own that still sets a removed field fails before anything is written."""
  config = _tiny_digits()
  config.distill.lambda_striplet = 0.5  # (a ConfigDict that is not locked takes new fields)
  line = _fails_without_writing(capsys, config, tmp_path / "run")
  assert line == "error: config.distill.lambda_striplet was removed; use config.rgal.striplet " \
                 "(--config.rgal.striplet=...)."


def test_good_overrides_parse(capsys):
  _, flag_values = _parse("--config", "configs/digits.py", "--config.optim.lr=0.2",
                          "--config.log.progress=False", "--config.optim.milestones=(3,5)")
  config = flag_values.config
  assert config.optim.lr == 0.2 and config.log.progress is False
  assert config.optim.milestones == (3, 5)
  assert "config.optim.lr = 0.2\n" in usage.format_config(config)
  assert not capsys.readouterr().err


@pytest.mark.parametrize("content, argument, expected", [
    (None, "", "does not exist; pass a config file, or a shipped one by name (abd_cifar100, "),
    ("def get_config(:\n", "", "loading it failed: SyntaxError"),
    ("import missing_module_xyz\n", "", "loading it failed: ModuleNotFoundError"),
    ("x = 1\n", "", "defines no get_config() function"),
    ("def get_config():\n  return {'a': 1}\n", "", "returned dict, not an ml_collections"),
    ("def get_config():\n  return 1 / 0\n", "", "ZeroDivisionError: division by zero"),
    ("def get_config():\n  return None\n", ":wrn", "takes no ':wrn' argument"),
])
def test_bad_config_file(capsys, tmp_path, content, argument, expected):
  path = tmp_path / "config.py"
  if content is not None:
    path.write_text(content)
  line = _one_error_line(capsys, lambda: _parse("--config", f"{path}{argument}"))
  assert line.startswith(f"error: --config {path}{argument}: ") and expected in line
  if "ZeroDivision" in expected:
    assert f"({path}, line 2)" in line  # where in the file


def test_missing_config_flag_and_unknown_flag(capsys):
  assert "--config is required" in _one_error_line(capsys, lambda: _parse("--workdir=x"))
  line = _one_error_line(capsys, lambda: _parse("--config", "configs/digits.py", "--bogus=1"))
  assert "Unknown command line flag 'bogus'" in line


def test_help_requests():
  assert usage.help_request(["p", "--help"]) == usage.help_request(["p", "-?"]) == "short"
  assert usage.help_request(["p", "--config", "c.py", "--helpfull"]) == "full"
  assert usage.help_request(["p", "--help=false"]) is None
  assert usage.help_request(["p", "--", "--help"]) is None


# ---- Checks before anything is written (main.run_job → preflight) ----------------------------


def _tiny_digits():
  config = digits.get_config()
  config.data.image_size = 8
  config.log.progress = False
  return config


def _fails_without_writing(capsys, config, workdir, **kwargs) -> str:
  before = sorted(os.listdir(workdir)) if os.path.isdir(workdir) else None
  line = _one_error_line(capsys, lambda: main.run_job(config, str(workdir)), **kwargs)
  if before is None:
    assert not os.path.isdir(workdir)  # not created
  else:
    assert sorted(os.listdir(workdir)) == before  # nothing written
  return line


@pytest.mark.parametrize("field, value, expected", [
    ("data.dataset", "imagenet7", "config.data.dataset"),
    ("method", "icarl", "config.method"),
    ("data.num_tasks", 3, "config.data.num_tasks"),
    ("data.class_order", "0,1,2", "config.data.class_order"),
    ("optim.ft_epochs", 30, "config.optim.ft_epochs"),
    # digits has 1257 training images; task 1/5 of order seed0 has 247
    ("data.batch_size", 248, "config.data.batch_size=248 exceeds the 247 training images of task "
                             "1/5 (the smallest task); lower it to at most 247."),
    ("data.data_dir", "/nonexistent", "digits ships with scikit-learn"),
    ("init_from", "/nonexistent/run", "config.init_from='/nonexistent/run' does not exist"),
    # a milestone the main phase never reaches (16 main epochs: 20 − 4 fine-tuning)
    ("optim.milestones", (30,), "config.optim.milestones=(30,): 30 is not an epoch of the "
                                "16-epoch main phase (config.optim.epochs=20 − "
                                "config.optim.ft_epochs=4 for rfd)"),
    ("optim.milestones", (10, 16), "16 is not an epoch of the 16-epoch main phase"),
    ("inversion.upsample", "nearest", "config.inversion.upsample='nearest': expected 'auto', "
                                      "'phases' or 'repeat'."),
])
def test_config_errors_before_the_workdir_exists(capsys, tmp_path, field, value, expected):
  config = _tiny_digits()
  section, _, key = field.rpartition(".")
  (config[section] if section else config)[key] = value
  assert expected in _fails_without_writing(capsys, config, tmp_path / "run")


def test_batch_size_check_follows_the_method(capsys, tmp_path):
  config = _tiny_digits()
  config.method, config.data.batch_size = "joint", 248  # joint's first task is its smallest too
  assert "task 1/5" in _fails_without_writing(capsys, config, tmp_path / "run")
  config.data.batch_size = 247
  assert preflight.check(config, str(tmp_path / "run")) == "dfcil"
  assert not os.path.exists(tmp_path / "run")


def test_digits_counts_are_those_of_the_loaded_split():
  loaded = sklearn_digits.load_digits(image_size=8)
  np.testing.assert_array_equal(np.bincount(preflight._digits_train_labels(), minlength=10),
                                np.bincount(loaded.train_labels, minlength=10))


def test_init_from_without_a_checkpoint(capsys, tmp_path):
  config = _tiny_digits()
  (tmp_path / "empty_run").mkdir()
  config.init_from = str(tmp_path / "empty_run")
  assert "holds no readable checkpoint" in _fails_without_writing(capsys, config,
                                                                  tmp_path / "run")


def test_unusable_workdir(capsys, tmp_path, monkeypatch):
  config = _tiny_digits()
  regular = tmp_path / "file"
  regular.write_text("keep me")
  assert "is a regular file" in _one_error_line(capsys, lambda: main.run_job(config, str(regular)))
  assert regular.read_text() == "keep me"
  line = _one_error_line(capsys, lambda: main.run_job(config, str(regular / "sub")))
  assert f"cannot be created: {regular} is not a directory" in line
  # not writable (os.access says so; as root a chmod would not stop the writes)
  monkeypatch.setattr(preflight.os, "access", lambda path, mode: False)
  (tmp_path / "readonly").mkdir()
  assert "is not writable" in _fails_without_writing(capsys, config, tmp_path / "readonly")
  line = _fails_without_writing(capsys, config, tmp_path / "readonly" / "run")
  assert f"cannot be created: {tmp_path / 'readonly'} is not writable" in line


@pytest.mark.parametrize("get_config", [cifar10.get_config, tiny_imagenet.get_config])
def test_missing_data(capsys, tmp_path, get_config):
  config = get_config()
  config.data.data_dir = str(tmp_path / "data")
  line = _fails_without_writing(capsys, config, tmp_path / "run", details=True)
  assert "not found" in line


def test_missing_dfkd_teacher(capsys, tmp_path):
  config = dfkd_digits.get_config()
  config.teacher_ckpt = str(tmp_path / "no_teacher")
  line = _fails_without_writing(capsys, config, tmp_path / "run")
  assert "config.teacher_ckpt=" in line and "does not exist" in line
  (tmp_path / "no_teacher").mkdir()
  assert "holds no checkpoint" in _fails_without_writing(capsys, config, tmp_path / "run")


def test_teacher_batch_larger_than_the_training_set(capsys, tmp_path):
  config = teacher_digits.get_config()
  config.data.batch_size = 1258
  assert "exceeds the 1257 training images" in _fails_without_writing(capsys, config,
                                                                      tmp_path / "run")


# ---- The real command line (subprocesses) ------------------------------------------------------


def _main(*args, **kwargs):
  return subprocess.run([sys.executable, "-m", "rfd_jax.main", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120, check=False, **kwargs)


def test_help_exits_0_and_says_how_to_list_the_fields():
  proc = _main("--help")
  assert proc.returncode == 0, proc.stderr
  for text in ("--config", "--workdir", "--print_config", "--config.optim.lr="):
    assert text in proc.stdout


def test_help_into_a_closed_pipe_prints_no_traceback():
  """`python -m rfd_jax.main --help | head`: the reader may go away before the help is written."""
  proc = subprocess.Popen([sys.executable, "-m", "rfd_jax.main", "--help"], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  proc.stdout.close()
  err = proc.stderr.read().decode()
  assert proc.wait(timeout=120) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_command_line_mistakes_are_one_line(tmp_path):
  regular = tmp_path / "file"
  regular.write_text("")
  for args, expected in [
      (["--config.optim.lrr=0.1"], "did you mean --config.optim.lr"),
      (["--workdir", str(regular)], "is a regular file"),
  ]:
    proc = _main("--config", "configs/digits.py", *args)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and expected in errors[0], proc.stderr
    assert proc.stderr == errors[0] + "\n" and not proc.stdout  # the whole output


def test_removed_field_override_is_one_line_and_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  proc = _main("--config", "configs/digits.py", "--config.inversion.rgal_triplet=1",
               "--workdir", str(workdir))
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert proc.returncode == 2 and len(errors) == 1 and proc.stderr == errors[0] + "\n", proc.stderr
  assert "config.inversion.rgal_triplet was removed" in errors[0]
  assert "--config.rgal.triplet=" in errors[0]
  assert "Traceback" not in proc.stderr and not proc.stdout and not workdir.exists()


def test_milestones_follow_the_method(capsys, tmp_path):
  """finetune has no head fine-tuning phase: all 20 epochs are main-phase epochs."""
  config = _tiny_digits()
  config.method, config.optim.milestones = "finetune", (16, 19)
  assert preflight.check(config, str(tmp_path / "run")) == "dfcil"
  config.optim.milestones = (20,)
  line = _fails_without_writing(capsys, config, tmp_path / "run")
  assert "20 is not an epoch of the 20-epoch main phase (config.optim.epochs=20 for finetune)" in line


@pytest.mark.parametrize("args, expected", [
    # each of these used to print the JAX / workdir / XLA_FLAGS log lines before its error
    (["--workdir", "{tmp}/file"], "error: --workdir {tmp}/file is a regular file; pass a directory "
                                  "(created if missing).\n"),
    (["--workdir="], "error: --workdir is empty; pass a directory (created if "
                                     "missing), or leave --workdir out for the default "
                                     "runs/digits-rfd-seed0.\n"),
    (["--workdir", "{tmp}/run", "--config.optim.milestones=(30,)"],
     "error: config.optim.milestones=(30,): 30 is not an epoch of the 16-epoch main phase "
     "(config.optim.epochs=20 − config.optim.ft_epochs=4 for rfd), so the lr would never decay "
     "there; pass epochs below 16, e.g. --config.optim.milestones='(8,)', or "
     "--config.optim.milestones='()' for a constant lr.\n"),
    (["--workdir", "{tmp}/run", "--config.data.num_tasks=3"],
     "error: config.data.num_tasks=3 does not split 10 classes equally; use a divisor of 10 or "
     "--config.data.task_split=rdfcil.\n"),
])
def test_bad_input_is_the_whole_output(tmp_path, args, expected):
  """The whole stderr is the one `error:` line (validation comes before any log line), stdout is
  empty, and nothing is created (the temp dir holds only the file the test made)."""
  (tmp_path / "file").write_text("")
  args = [a.format(tmp=tmp_path) for a in args]
  proc = _main("--config", "configs/digits.py", *args)
  assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", expected.format(tmp=tmp_path))
  assert os.listdir(tmp_path) == ["file"]
