"""Tests for rfd_jax.methods.metrics against hand-computed values."""

import numpy as np
import pytest

from rfd_jax.methods import metrics

# Labels 0..5, two classes per task: task_of_label = [0, 0, 1, 1, 2, 2].
TASK_OF_LABEL = np.array([0, 0, 1, 1, 2, 2])


def test_evaluate_predictions_by_hand():
  labels = np.array([0, 1, 1, 0, 2, 3, 3, 2])
  preds = np.array([0, 1, 2, 2, 2, 3, 0, 0])
  # task 0 images: idx 0..3 → correct 1,1,0,0 = 50%; task 1 images: idx 4..7 → 1,1,0,0 = 50%
  row = metrics.evaluate_predictions(predictions=preds, labels=labels,
                                     task_of_label=TASK_OF_LABEL, task=1)
  assert row.per_task == [50.0, 50.0]
  assert row.acc_seen == 50.0 and row.old_acc == 50.0 and row.new_acc == 50.0
  preds2 = np.array([0, 1, 1, 0, 0, 0, 3, 2])  # task 0 all right, task 1 half right
  row2 = metrics.evaluate_predictions(predictions=preds2, labels=labels,
                                      task_of_label=TASK_OF_LABEL, task=1)
  assert row2.per_task == [100.0, 50.0]
  assert row2.acc_seen == 75.0 and row2.old_acc == 100.0 and row2.new_acc == 50.0


def test_first_task_has_no_old_accuracy():
  row = metrics.evaluate_predictions(predictions=np.array([0, 0]), labels=np.array([0, 1]),
                                     task_of_label=TASK_OF_LABEL, task=0)
  assert row.old_acc is None and row.new_acc == 50.0 and row.per_task == [50.0]


def test_unseen_labels_are_rejected():
  with pytest.raises(ValueError, match="unseen"):
    metrics.evaluate_predictions(predictions=np.array([4]), labels=np.array([4]),
                                 task_of_label=TASK_OF_LABEL, task=1)


def _rows(matrix):
  return [metrics.EvalRow(per_task=r, acc_seen=float(np.mean(r)), old_acc=None, new_acc=r[-1])
          for r in matrix]


def test_summary_by_hand():
  matrix = [[90.0], [60.0, 80.0], [70.0, 40.0, 95.0]]
  results = metrics.summarize(_rows(matrix))
  assert results["acc_matrix"] == [[90.0, None, None], [60.0, 80.0, None], [70.0, 40.0, 95.0]]
  assert results["acc_seen"] == [90.0, 70.0, 205.0 / 3]
  assert results["final_acc"] == pytest.approx(205.0 / 3)
  assert results["avg_inc_acc"] == pytest.approx((90.0 + 70.0 + 205.0 / 3) / 3)
  # F = mean(max(90, 60) - 70, 80 - 40) = mean(20, 40) = 30
  assert results["forgetting"] == pytest.approx(30.0)


def test_forgetting_uses_max_over_earlier_rows_only():
  # the max for task 0 runs over rows 0..T-2, so the last row's 100 does not count
  matrix = [[50.0, None, None], [80.0, 60.0, None], [100.0, 30.0, 10.0]]
  assert metrics.forgetting(matrix) == pytest.approx(((80 - 100) + (60 - 30)) / 2)
  assert metrics.forgetting([[99.0]]) is None


def test_format_table_shows_matrix_and_summary():
  text = metrics.format_table(metrics.summarize(_rows([[90.0], [60.0, 80.0]])))
  assert "final accuracy A_T" in text and "70.00" in text and "forgetting" in text
  assert len(text.splitlines()) == 2 + 2 + 4
