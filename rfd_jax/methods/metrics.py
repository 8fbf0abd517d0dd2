"""Class-incremental metrics: accuracy matrix, A_t, average incremental accuracy, forgetting.

All accuracies are in percent. Notation: a[l, j] = accuracy on the test images of task j's classes
after training task l (class-IL: argmax over every seen class), defined for j <= l.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class EvalRow:
  """Evaluation after one task.

  Attributes:
    per_task: a[l, j] for j = 0..l (length l+1).
    acc_seen: A_l, accuracy over all test images of the classes seen so far.
    old_acc: accuracy over the images of tasks 0..l-1 (None after the first task).
    new_acc: accuracy over the images of task l.
  """
  per_task: list[float]
  acc_seen: float
  old_acc: float | None
  new_acc: float


def _percent(correct: np.ndarray) -> float:
  return float(100.0 * correct.mean()) if correct.size else float("nan")


def evaluate_predictions(*, predictions: np.ndarray, labels: np.ndarray,
                         task_of_label: np.ndarray, task: int) -> EvalRow:
  """Scores predictions after training task `task`.

  Args:
    predictions: int (N,) predicted model labels.
    labels: int (N,) true model labels, all from tasks 0..task.
    task_of_label: int (C,) owning task of each model label.
    task: the task just trained (0-based).
  """
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  if predictions.shape != labels.shape:
    raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} differ in shape")
  correct = predictions == labels
  label_task = np.asarray(task_of_label)[labels]
  if label_task.size and label_task.max() > task:
    raise ValueError(f"labels of unseen tasks passed to the evaluation after task {task}")
  per_task = [_percent(correct[label_task == j]) for j in range(task + 1)]
  return EvalRow(
      per_task=per_task,
      acc_seen=_percent(correct),
      old_acc=_percent(correct[label_task < task]) if task > 0 else None,
      new_acc=_percent(correct[label_task == task]))


def accuracy_matrix(rows: list[EvalRow]) -> list[list[float | None]]:
  """The T×T matrix a[l][j] as nested lists, None above the diagonal (j > l)."""
  num = len(rows)
  return [row.per_task + [None] * (num - len(row.per_task)) for row in rows]


def forgetting(acc_matrix: list[list[float | None]]) -> float | None:
  """Average forgetting F = mean_{j<T} [max_{l<T} a[l,j] − a[T,j]] (T = last task).

  Entries above the diagonal are None and are skipped by the max, so the max runs over l in
  [j, T-1]. Returns None for a single task, where forgetting is undefined.
  """
  num = len(acc_matrix)
  if num < 2:
    return None
  last = acc_matrix[-1]
  drops = []
  for j in range(num - 1):
    best = max(acc_matrix[l][j] for l in range(j, num - 1))
    drops.append(best - last[j])
  return float(np.mean(drops))


def summarize(rows: list[EvalRow]) -> dict:
  """The result keys of results.json computed from the evaluation rows of tasks 0..T-1."""
  matrix = accuracy_matrix(rows)
  acc_seen = [row.acc_seen for row in rows]
  return {
      "acc_matrix": matrix,
      "acc_seen": acc_seen,
      "final_acc": acc_seen[-1],
      "avg_inc_acc": float(np.mean(acc_seen)),
      "forgetting": forgetting(matrix),
      "old_acc": [row.old_acc for row in rows],
      "new_acc": [row.new_acc for row in rows],
  }


def format_table(results: dict) -> str:
  """A plain-text results table: the accuracy matrix with A_t per row, then the summary. Tasks
  are numbered from 1, as in the logs."""
  matrix = results["acc_matrix"]
  num = len(matrix)
  head = "after task | " + " ".join(f"{'T' + str(j + 1):>6}" for j in range(num)) + " |    A_t"
  lines = [head, "-" * len(head)]
  for l, row in enumerate(matrix):
    cells = " ".join(f"{v:6.2f}" if v is not None else f"{'':>6}" for v in row)
    lines.append(f"{l + 1:>10} | {cells} | {results['acc_seen'][l]:6.2f}")
  forget = results["forgetting"]
  lines.append("")
  lines.append(f"final accuracy A_T        {results['final_acc']:6.2f}")
  lines.append(f"average incremental acc   {results['avg_inc_acc']:6.2f}")
  lines.append("forgetting                " + (f"{forget:6.2f}" if forget is not None else "   n/a"))
  return "\n".join(lines)
