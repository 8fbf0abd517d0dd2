"""End-to-end: a tiny digits run in a temp dir, in-process and through the CLI."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
from writers_test import read_events, scalars

from configs import digits
from rfd_jax.methods import learners, tasks
from rfd_jax.jobs import dfcil

TINY_OVERRIDES = ["--config.method=finetune", "--config.model.name=resnet_tiny",
                  "--config.data.image_size=8", "--config.data.batch_size=64",
                  "--config.optim.epochs=3", "--config.optim.ft_epochs=1",
                  "--config.optim.milestones=(1,)", "--config.log.progress=False",
                  "--config.log.images=False"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(method="finetune"):
  config = digits.get_config()
  config.method = method
  config.model.name = "resnet_tiny"  # one block per stage: the suite traces and compiles less
  config.data.image_size = 8
  config.data.batch_size = 64
  config.optim.epochs = 3
  config.optim.ft_epochs = 1
  config.optim.milestones = (1,)
  config.inversion.iterations = 2
  config.inversion.chunk_steps = 1
  config.log.progress = False
  config.log.images = False  # PNGs cost seconds; the tiny_run fixture and one learner test check them
  return config


def _without_timing(results):
  return {k: v for k, v in results.items() if "seconds" not in k}


@pytest.fixture(scope="module", name="tiny_run")
def _tiny_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("digits"))
  config = tiny_config()
  config.log.images = True
  return workdir, dfcil.train_and_evaluate(config, workdir)


def test_results_json_has_the_documented_keys(tiny_run):
  workdir, results = tiny_run
  with open(os.path.join(workdir, "results.json")) as f:
    on_disk = json.load(f)
  assert _without_timing(on_disk) == _without_timing(results)
  assert results["method"] == "finetune" and results["dataset"] == "digits"
  assert results["num_tasks"] == 5
  assert results["class_order"] == tasks.class_order("seed0", 10)
  matrix = results["acc_matrix"]
  assert len(matrix) == 5 and all(len(row) == 5 for row in matrix)
  for l, row in enumerate(matrix):
    assert all(v is None for v in row[l + 1:]) and all(0 <= v <= 100 for v in row[:l + 1])
  assert results["final_acc"] == results["acc_seen"][-1]
  assert results["avg_inc_acc"] == pytest.approx(np.mean(results["acc_seen"]))
  last = matrix[-1]
  expected_forgetting = np.mean([max(matrix[l][j] for l in range(j, 4)) - last[j]
                                 for j in range(4)])
  assert results["forgetting"] == pytest.approx(expected_forgetting)
  assert results["old_acc"][0] is None and len(results["new_acc"]) == 5


def test_config_and_metrics_files(tiny_run):
  workdir, _ = tiny_run
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["data"]["image_size"] == 8
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = [json.loads(line) for line in f]
  train_lines = [l for l in lines if "train/loss" in l]
  eval_lines = [l for l in lines if "eval/acc_seen" in l]
  assert train_lines and all(np.isfinite(l["train/loss"]) for l in train_lines)
  # accuracies in percent, like eval/*: 2 classes per task, so well above 1% at some step
  assert all(0 <= l["train/acc"] <= 100 for l in train_lines)
  assert max(l["train/acc"] for l in train_lines) > 1
  assert [l["task"] for l in eval_lines] == [0, 1, 2, 3, 4]
  assert [l["step"] for l in train_lines] == sorted(l["step"] for l in train_lines)


def test_pngs_and_tensorboard_events(tiny_run):
  workdir, results = tiny_run
  assert Image.open(os.path.join(workdir, "accuracy_matrix.png")).size == (640, 480)
  assert Image.open(os.path.join(workdir, "accuracy_curve.png")).size == (640, 480)
  assert not any(name.startswith("synthetic_task") for name in os.listdir(workdir))  # finetune
  events = read_events(workdir)
  values = scalars(events)
  assert [v for _, v in values["eval/acc_seen"]] == pytest.approx(results["acc_seen"])
  assert {"train/loss", "train/acc", "train/lr"} <= set(values)
  assert not {"task", "epoch", "phase"} & set(values)  # bookkeeping stays in metrics.jsonl
  hparams = [v for e in events for v in e.summary.value if v.tag == "_hparams_/session_start_info"]
  assert len(hparams) == 1 and b"data.image_size" in hparams[0].metadata.plugin_data.content


def test_cli_run_reproduces_in_process_results(tiny_run, tmp_path):
  """Same config + seed → same metrics, through a separate process."""
  _, results = tiny_run
  # The same XLA settings as this process: main.py would otherwise set its faster CPU flag,
  # which changes float rounding (rfd_jax/cli/xla_env.py).
  env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", ""))
  proc = subprocess.run(
      [sys.executable, "-m", "rfd_jax.main", "--config", "configs/digits.py",
       "--workdir", str(tmp_path), *TINY_OVERRIDES],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "final accuracy A_T" in proc.stdout
  with open(tmp_path / "results.json") as f:
    assert _without_timing(json.load(f)) == _without_timing(results)


def test_train_indices_finetune_vs_joint():
  spec = tasks.make_task_spec(num_classes=6, num_tasks=3, order="identity")
  labels = np.array([0, 1, 2, 3, 4, 5, 2, 0])
  for method, expected in (("finetune", [2, 3, 6]), ("joint", [0, 1, 2, 3, 6, 7]),
                           ("rfd", [2, 3, 6])):
    learner = learners.get_learner(tiny_config(method))
    np.testing.assert_array_equal(learner.train_indices(labels, spec.offsets, 1), expected)
