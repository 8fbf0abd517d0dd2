"""A sweep checks every run's config before it creates anything, and writes command lines without
the paths of the machine that made them."""

import json
import os

import pytest

from rfd_jax.methods import tasks
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


def test_summarize_only_shows_the_stored_command_without_machine_paths(tmp_path, capsys):
  """A sweep_command.txt written with absolute paths (by an older sweep) goes into the table
  portable: paths relative to the repository, the data folder as DATA_DIR."""
  workdir = tmp_path / "sw"
  (workdir / "rfd" / "seed0").mkdir(parents=True)
  (workdir / "rfd" / "seed0" / "results.json").write_text(json.dumps({
      "method": "rfd", "dataset": "digits", "num_tasks": 2, "task_sizes": [5, 5],
      "class_order": tasks.class_order("seed0", 10), "seed": 0,
      "acc_matrix": [[99.0, None], [50.0, 70.0]], "acc_seen": [99.0, 60.0], "final_acc": 60.0,
      "avg_inc_acc": 79.5, "forgetting": 49.0, "task_seconds": [50, 50], "wall_seconds": 100}))
  (workdir / "sweep_command.txt").write_text(
      f"python -m rfd_jax.tools.sweep --config {REPO}/configs/digits.py --workdir "
      f"{REPO}/runs/sweep_digits --methods rfd --set data.data_dir=/home/me/tfds\n")
  assert sweep.main(["--workdir", str(workdir), "--summarize_only"]) == 0
  table = (workdir / "summary.md").read_text()
  assert ("python -m rfd_jax.tools.sweep --config configs/digits.py --workdir runs/sweep_digits "
          "--methods rfd --set data.data_dir=DATA_DIR\n") in table
  assert REPO not in table.replace(str(tmp_path), "")


def test_portable_command():
  words = ["python", "-m", "rfd_jax.tools.sweep", "--config", f"{REPO}/configs/cifar100.py",
           f"--workdir={REPO}/runs/sweep_c100", "--set", "data.data_dir=/data/tfds", "--set",
           "optim.lr=0.1", "--output", "/elsewhere/table.md"]
  assert sweep_checks.portable_command(words, REPO) == (
      "python -m rfd_jax.tools.sweep --config configs/cifar100.py --workdir=runs/sweep_c100 "
      "--set data.data_dir=DATA_DIR --set optim.lr=0.1 --output /elsewhere/table.md")
