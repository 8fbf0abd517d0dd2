"""A finished run is recognised from its results.json and config.json, reading only."""

import json
import os

from configs import digits
from rfd_jax.engine import saved_config
from rfd_jax.cli import finished
from rfd_jax.jobs import group


def _write(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f)


def test_single_run(tmp_path):
  config = digits.get_config()
  workdir = str(tmp_path)
  assert finished.finished_results(config, workdir, "dfcil") is None  # nothing there
  _write(os.path.join(workdir, "config.json"), saved_config.config_dict(config))
  assert finished.finished_results(config, workdir, "dfcil") is None  # no results.json yet
  _write(os.path.join(workdir, "results.json"), {"final_acc": 49.63})
  assert finished.finished_results(config, workdir, "dfcil") == {"final_acc": 49.63}
  config.log.every_steps = 3  # a harmless field: still the same run
  assert finished.finished_results(config, workdir, "dfcil") == {"final_acc": 49.63}
  config.optim.lr = 0.02  # a field that changes the result: the usual way (a refused resume)
  assert finished.finished_results(config, workdir, "dfcil") is None


def test_group_needs_every_run(tmp_path):
  config = digits.get_config()
  config.runs.class_orders = "seed0,seed1"
  workdir = str(tmp_path)
  _write(os.path.join(workdir, "config.json"), saved_config.config_dict(config))
  members = group.members(config)
  _write(os.path.join(group.member_dir(workdir, config, members[0]), "results.json"), {"a": 1})
  assert finished.finished_results(config, workdir, "group") is None
  _write(os.path.join(group.member_dir(workdir, config, members[1]), "results.json"), {"a": 2})
  assert finished.finished_results(config, workdir, "group") == {
      members[0].name: {"a": 1}, members[1].name: {"a": 2}}
