"""A sweep checks every run's config before it creates anything, and writes command lines without
the paths of the machine that made them."""

import os

import pytest

from rfd_jax.tools import sweep, sweep_checks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
  monkeypatch.chdir(REPO)


@pytest.mark.parametrize("setting, expected", [
    ("optim.epoch=3", "--config.optim.epoch: config.optim has no field 'epoch'; did you mean "
                      "--config.optim.epochs"),
    ("optim.milestones=(30,)", "config.optim.milestones=(30,): 30 is not an epoch of the 16-epoch "
                               "main phase"),
])
def test_a_bad_run_config_fails_before_anything_is_created(tmp_path, capsys, setting, expected):
  workdir = tmp_path / "sweep"
  status = sweep.main(["--config", "configs/digits.py", "--workdir", str(workdir),
                       "--methods", "rfd,finetune", "--set", setting])
  out, err = capsys.readouterr()
  assert status == 2 and not out and not workdir.exists()
  assert err.startswith(f"error: run {workdir}/rfd/seed0 would fail: {expected}"), err
  assert err.endswith("(nothing was created; fix the sweep's arguments)\n") and err.count("\n") == 1


def test_run_error_of_a_good_config_is_none(tmp_path):
  assert sweep_checks.run_error(["--config", "configs/digits.py", "--workdir",
                                 str(tmp_path / "run"), "--config.method=abd"]) is None
  assert not (tmp_path / "run").exists()


def test_portable_command():
  words = ["python", "-m", "rfd_jax.tools.sweep", "--config", f"{REPO}/configs/cifar100.py",
           f"--workdir={REPO}/runs/sweep_c100", "--set", "data.data_dir=/data/tfds", "--set",
           "optim.lr=0.1", "--output", "/elsewhere/table.md"]
  assert sweep_checks.portable_command(words, REPO) == (
      "python -m rfd_jax.tools.sweep --config configs/cifar100.py --workdir=runs/sweep_c100 "
      "--set data.data_dir=DATA_DIR --set optim.lr=0.1 --output /elsewhere/table.md")
