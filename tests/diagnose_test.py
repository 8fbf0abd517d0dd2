"""rfd_jax.tools.diagnose on a tiny 2-task rfd run: its evaluations agree with the run's own, and its
replay of task 2 reproduces the logged losses."""

import numpy as np
import pytest

from rfd_jax.tools import diagnose, replay
from rfd_jax.methods import tasks
from rfd_jax.jobs import dfcil
from train_test import tiny_config


@pytest.fixture(scope="module", name="tiny_rfd_run")
def _tiny_rfd_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("rfd"))
  config = tiny_config("rfd")
  config.data.num_tasks = 2
  config.log.every_steps = 1
  config.ckpt.keep = 1000  # every phase boundary stays
  results = dfcil.train_and_evaluate(config, workdir)
  return workdir, results, diagnose.diagnose(workdir, confusion_task=2, grad_task=2,
                                             grad_batches=1, replay=True)


def test_checkpoint_evaluations_match_the_run(tiny_rfd_run):
  _, results, result = tiny_rfd_run
  ends = {c["task"]: c for c in result["checkpoints"] if c["phase"] == "end of task"}
  assert sorted(ends) == [1, 2]
  for task, row in enumerate(results["acc_matrix"]):
    assert ends[task + 1]["acc_seen"] == pytest.approx(results["acc_seen"][task])
  assert ends[2]["old_acc"] == pytest.approx(results["acc_matrix"][1][0])
  assert ends[2]["new_acc"] == pytest.approx(results["acc_matrix"][1][1])
  phases = {(c["saved_in_task"], c["phase"]) for c in result["checkpoints"]}
  assert {(2, "end of inversion"), (2, "end of main")} <= phases
  conf = np.asarray(result["confusion"]["matrix"])
  assert conf.shape == (10, 10)
  assert 100.0 * np.trace(conf) / conf.sum() == pytest.approx(ends[2]["acc_seen"])


def test_replay_reproduces_the_logged_losses_and_the_final_accuracy(tiny_rfd_run):
  _, results, result = tiny_rfd_run
  replay = result["replay"]
  assert replay["logged_loss_max_rel_diff"] is not None
  assert replay["logged_loss_max_rel_diff"] < 1e-5
  assert [e["after"] for e in replay["evaluations"]] == ["main", "finetune"]
  assert replay["evaluations"][-1]["acc_seen"] == pytest.approx(results["acc_seen"][-1])


def test_gradient_norms_per_term(tiny_rfd_run):
  _, _, result = tiny_rfd_run
  by_phase = {g["phase"]: g for g in result["gradients"]}
  assert set(by_phase) == {"main", "finetune"}
  main, finetune = by_phase["main"], by_phase["finetune"]
  for name in ("ce", "lfd", "dist_old/inter", "dist_old/intra", "dist_new/inter",
               "dist_new/intra"):
    assert np.isfinite(main[f"grad/{name}"]) and main[f"grad/{name}"] > 0, name
  assert "grad/ft_ce" not in main and "grad/lfd" not in finetune
  # fine-tuning trains the heads only: all trainable gradient is head gradient
  assert finetune["grad/ft_ce"] == pytest.approx(finetune["grad_head/ft_ce"], rel=1e-5)
  assert main["grad/ce"] > main["grad_head/ce"]  # the main phase also trains the backbone
  text = diagnose.format_diagnosis(result)
  assert "dist_new/inter" in text and "confusion after task 2" in text


def test_accuracy_report_counts_bias_toward_new_classes():
  spec = tasks.make_task_spec(num_classes=4, num_tasks=2, order="identity")
  labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
  preds = np.array([2, 0, 3, 3, 2, 2, 3, 2])
  report = replay.accuracy_report(preds, labels, spec, task=1)
  assert report["old_acc"] == 25.0 and report["new_acc"] == 75.0
  assert report["new_share"] == 87.5 and report["new_share_expected"] == 50.0
  assert report["old_predicted_as_new"] == 75.0
  assert report["confusion"][1][3] == 2 and np.sum(report["confusion"]) == 8
