"""A group of runs in one process (config.runs; the class-incremental job over R runs,
rfd_jax.jobs.dfcil): a 3-order digits group against the three single runs, a group of one against
its single run, its layout and summary, an exact resume, and its config errors."""

import json
import os
import shutil

import numpy as np
import pytest

from configs import digits
from rfd_jax.jobs import group, dfcil
from rfd_jax.engine import errors

ORDERS = ("seed0", "seed1", "seed2")


def tiny_config(**overrides):
  """RFD on digits, 2 tasks (inversion, main phase, head fine-tuning), a few steps each."""
  config = digits.get_config()
  config.method = "rfd"
  config.model.name = "resnet_tiny"
  config.data.num_tasks = 2
  config.data.image_size = 8
  config.data.batch_size = 64
  config.optim.epochs = 2
  config.optim.ft_epochs = 1
  config.optim.milestones = ()  # the main phase has 1 epoch: no lr decay
  config.inversion.iterations = 4
  config.inversion.chunk_steps = 2
  config.log.progress = False
  config.log.images = False
  for key, value in overrides.items():
    section, field = key.split(".")
    config[section][field] = value
  return config


def _records(path):
  with open(os.path.join(path, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _without_timing(results):
  return {k: v for k, v in results.items() if "seconds" not in k}


@pytest.fixture(scope="module", name="grouped")
def _grouped(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("group"))
  results = dfcil.train_and_evaluate(
      tiny_config(**{"runs.class_orders": ",".join(ORDERS), "ckpt.keep": 100}), workdir)
  return workdir, results


@pytest.fixture(scope="module", name="singles")
def _singles(tmp_path_factory):
  out = {}
  for order in ORDERS:
    workdir = str(tmp_path_factory.mktemp(order))
    out[order] = (workdir, dfcil.train_and_evaluate(
        tiny_config(**{"data.class_order": order}), workdir))
  return out


def test_each_run_of_a_group_gives_its_single_runs_results(grouped, singles):
  workdir, results = grouped
  assert sorted(results) == sorted(ORDERS)
  for order in ORDERS:
    single_dir, single = singles[order]
    member = results[order]
    for key in ("class_order", "task_end_steps", "seed", "method"):
      assert member[key] == single[key], (order, key)
    # Task 1 bit for bit: the vmapped ResNet steps round as the single ones. The vmapped inversion
    # (the generator's batched matmuls and convolutions) rounds differently, ~1e-5 relative, and
    # training amplifies that, as any rounding change (README "Protocol"): measured, the losses
    # stay within 1e-2 relative and an accuracy moves by at most one test image (0.37 points).
    assert member["acc_matrix"][0] == single["acc_matrix"][0], order
    np.testing.assert_allclose(member["acc_seen"], single["acc_seen"], atol=1.0)
    got, want = _records(os.path.join(workdir, "rfd", order)), _records(single_dir)
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for g, w in zip(got, want):
      for k, v in w.items():
        if k.startswith("train/loss") and w.get("task") == 0:
          assert g[k] == v, (order, w["step"], k)
        elif k in ("train/loss", "inversion/loss"):
          assert g[k] == pytest.approx(v, rel=1e-2), (order, w["step"], k)
  # the orders are really different runs
  assert len({json.dumps(results[o]["acc_matrix"]) for o in ORDERS}) > 1


def test_a_group_of_one_run_is_the_single_run_bit_for_bit(singles, tmp_path):
  """The same job steps one run the same way whether it is a plain run or a group of one (its
  files in the group's layout): the same results and every metrics.jsonl value."""
  workdir = tmp_path / "one"
  results = dfcil.train_and_evaluate(tiny_config(**{"runs.class_orders": "seed1"}), str(workdir))
  single_dir, single = singles["seed1"]
  assert _without_timing(results["seed1"]) == _without_timing(single)
  strip = lambda records: [{k: v for k, v in r.items() if "seconds" not in k} for r in records]
  assert strip(_records(workdir / "rfd" / "seed1")) == strip(_records(single_dir))


def test_a_group_writes_the_sweep_layout_and_summary(grouped):
  workdir, results = grouped
  for order in ORDERS:
    run_dir = os.path.join(workdir, "rfd", order)
    with open(os.path.join(run_dir, "results.json")) as f:
      assert _without_timing(json.load(f)) == _without_timing(results[order])
    with open(os.path.join(run_dir, "config.json")) as f:
      saved = json.load(f)
    assert saved["data"]["class_order"] == order and saved["runs"]["class_orders"] == ""
  from rfd_jax.tools import sweep_runs  # the sweep's --summarize_only reads the group
  runs = sweep_runs.discover_runs(workdir)
  assert sorted(r.order for r in runs) == sorted(ORDERS)
  assert all(sweep_runs.load_results(r) is not None for r in runs)


def test_a_group_resumes_exactly_from_its_stacked_checkpoint(grouped, tmp_path):
  """The group's checkpoint at the end of task 2's inversion (every run's stacked state, teacher,
  generator and records), copied into a new workdir and resumed there: the uninterrupted group's
  results and metrics, bit for bit."""
  reference_dir, reference = grouped
  with open(os.path.join(reference_dir, "checkpoints", "14", "meta", "metadata")) as f:
    meta = json.load(f)
  assert meta["segment"] == "main" and sorted(meta["arrays"]) == [
      "class_weights", "generator", "state", "teacher"]
  assert len(meta["rows"]) == 1 and len(meta["rows"][0]) == len(ORDERS)  # task 1, per run
  workdir = tmp_path / "resumed"
  shutil.copytree(os.path.join(reference_dir, "checkpoints", "14"),
                  workdir / "checkpoints" / "14")
  config = tiny_config(**{"runs.class_orders": ",".join(ORDERS), "ckpt.keep": 100})
  resumed = dfcil.train_and_evaluate(config, str(workdir))
  for order in ORDERS:
    assert _without_timing(resumed[order]) == _without_timing(reference[order])
    # the records after the checkpoint (the copy has no metrics.jsonl of its own before them)
    want = [r for r in _records(os.path.join(reference_dir, "rfd", order)) if r["step"] > 14]
    assert _records(workdir / "rfd" / order) == want


@pytest.mark.parametrize("overrides, message", [
    ({"runs.seeds": "0,x"}, "config.runs.seeds='0,x'"),
    ({"runs.class_orders": "seed0,seed0"}, "lists the class order(s) seed0 twice"),
    ({"runs.class_orders": "seed0-seed2,seed1"}, "lists the class order(s) seed1 twice"),
    ({"runs.class_orders": "seed0,nope"}, "config.runs.class_orders: 'nope' is not a class order"),
    ({"runs.class_orders": "seed3-seed1"}, "runs backwards; write seed1-seed3"),
    ({"runs.class_orders": "[1,0,2]"}, "config.data.class_order must be a permutation of 0..9"),
    ({"runs.class_orders": "seed0,seed1", "data.device_resident": False},
     "device_resident=True"),
])
def test_bad_groups_are_refused_naming_the_field(overrides, message, tmp_path):
  with pytest.raises(errors.ConfigError, match=message.replace("(", r"\(")
                     .replace(")", r"\)")):
    dfcil.train_and_evaluate(tiny_config(**overrides), str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad")  # refused before anything was written


def test_members_are_every_order_and_seed():
  config = tiny_config(**{"runs.class_orders": "seed1,seed2", "runs.seeds": "0,3"})
  names = [m.name for m in group.members(config)]
  assert names == ["seed1", "seed1-s3", "seed2", "seed2-s3"]
  ranged = group.members(tiny_config(**{"runs.class_orders": "seed2-seed4,[1,0,3,2,5,4,7,6,9,8]"}))
  assert [m.name for m in ranged] == ["seed2", "seed3", "seed4", "1.0.3.2.5.4.7.6.9.8"]
  assert [m.spec.class_order for m in ranged][-1] == (1, 0, 3, 2, 5, 4, 7, 6, 9, 8)
  assert [m.config.seed for m in group.members(config)] == [0, 3, 0, 3]
  assert not group.is_group(tiny_config())
  assert np.all([group.is_group(tiny_config(**{"runs.seeds": "1"}))])
