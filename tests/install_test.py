"""The installed package (README: `pip install -r requirements.txt -e .`) runs from any directory,
and --config finds the shipped configs by name or as configs/<name>.py from anywhere."""

import json
import os
import subprocess
import sys

from absl import flags
from ml_collections import config_flags
import pytest

from rfd_jax.cli import usage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _outside_env() -> dict[str, str]:
  return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _installed() -> bool:
  """Whether this Python imports rfd_jax from outside the checkout (not through pytest's path)."""
  proc = subprocess.run([sys.executable, "-c", "import rfd_jax"], cwd="/", env=_outside_env(),
                        capture_output=True, check=False)
  return proc.returncode == 0


def _parse(*args):
  argv = ["prog", *args]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=flag_values, sys_argv=argv)
  usage.parse_flags(argv, flag_values=flag_values)
  return flag_values.config


@pytest.mark.parametrize("spec", ["digits", "digits.py", "configs/digits.py"])
def test_shipped_config_by_name_from_another_directory(tmp_path, monkeypatch, spec):
  monkeypatch.chdir(tmp_path)
  config = _parse("--config", spec, "--config.optim.lr=0.2")
  assert config.data.dataset == "digits" and config.optim.lr == 0.2
  assert usage.resolve_config_path(spec) == os.path.join(REPO, "configs", "digits.py")


def test_an_existing_path_wins_over_a_shipped_name(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "digits.py").write_text(
      "import ml_collections\n\ndef get_config():\n  return ml_collections.ConfigDict({'a': 1})\n")
  assert _parse("--config", "configs/digits.py").a == 1
  assert usage.resolve_config_path("elsewhere/digits.py") == "elsewhere/digits.py"  # not a guess


def test_unknown_name_lists_the_shipped_configs(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(SystemExit):
    _parse("--config", "digitz")
  err = capsys.readouterr().err
  assert err.startswith("error: --config digitz: digitz does not exist; pass a config file, or a "
                        "shipped one by name (abd_cifar100, cifar10, ") and err.count("\n") == 1


@pytest.mark.skipif(not _installed(), reason="rfd_jax is not installed in this environment; the "
                    "README's commands (and CI) install it with pip install -e .")
def test_installed_package_runs_from_another_directory(tmp_path):
  """A tiny run (finetune, 2 tasks of one epoch, resnet_tiny at 8 px) with the working directory
  outside the checkout: the package, its configs and its data all come from the install."""
  env = _outside_env()
  proc = subprocess.run(
      [sys.executable, "-m", "rfd_jax.main", "--config", "configs/digits.py", "--workdir", "run",
       "--config.method=finetune", "--config.model.name=resnet_tiny", "--config.data.num_tasks=2",
       "--config.data.image_size=8", "--config.data.batch_size=64", "--config.optim.epochs=1",
       "--config.optim.ft_epochs=0", "--config.optim.milestones=()", "--config.log.images=False",
       "--config.ckpt.enabled=False"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert results["num_tasks"] == 2 and len(results["acc_seen"]) == 2
  assert "final accuracy A_T" in proc.stdout
