"""Class orders, task splits, label remapping and seen-class bookkeeping (numpy only).

Conventions used across the project:
  * `class_order[k]` is the original dataset class id that the model calls label `k`.
  * Task `t` owns model labels `[task_offsets[t], task_offsets[t + 1])`, so the classes of a task
    are contiguous in model-label space and "classes seen after task t" is `range(task_offsets[t+1])`.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import numpy as np

NAMED_ORDERS = ("identity", "seed0", "seed1", "seed2", "imagenet1993")
TASK_SPLITS = ("equal", "rdfcil")


def class_order(spec: str | Sequence[int], num_classes: int) -> list[int]:
  """Returns the class order named by `spec` as a list of original class ids.

  Args:
    spec: one of
      * "identity": 0..C-1;
      * "seed0" | "seed1" | "seed2": `random.seed(s); random.shuffle(list(range(C)))` (the ABD /
        R-DFCIL / RFD protocol; RFD's CIFAR-100 default is seed1, R-DFCIL's is seed0);
      * "imagenet1993": `np.random.seed(1993); np.random.shuffle(list(range(C)))` (PODNet / ABD);
      * an explicit permutation, as a sequence of ints or a comma-separated string "3,1,0,2".
    num_classes: C, the number of classes in the dataset.

  Raises:
    ValueError: unknown name, or an explicit order that is not a permutation of range(C).
  """
  if isinstance(spec, str) and spec in NAMED_ORDERS:
    order = list(range(num_classes))
    if spec.startswith("seed"):
      random.Random(int(spec[len("seed"):])).shuffle(order)
    elif spec == "imagenet1993":
      # np.random.shuffle on a list with the legacy global seed; RandomState(1993) is identical.
      np.random.RandomState(1993).shuffle(order)
    return order

  if isinstance(spec, str):
    try:
      order = [int(tok) for tok in spec.replace(" ", "").split(",") if tok]
    except ValueError:
      raise ValueError(
          f"config.data.class_order={spec!r} is neither a named order {NAMED_ORDERS} nor a "
          "comma-separated list of class ids.") from None
  else:
    order = [int(c) for c in spec]
  if sorted(order) != list(range(num_classes)):
    raise ValueError(
        f"config.data.class_order must be a permutation of 0..{num_classes - 1} "
        f"({num_classes} distinct ids); got {len(order)} ids: {order[:12]}"
        f"{'...' if len(order) > 12 else ''}.")
  return order


def split_sizes(num_classes: int, num_tasks: int, split: str = "equal") -> list[int]:
  """Number of classes in each task.

  "equal": C / T classes per task (C must be divisible by T).
  "rdfcil": R-DFCIL's `split_task`: a first task of `C//T + (C - C//T) % (T-1)` classes, then equal
    increments of `(C - init) / (T-1)`; e.g. C=10, T=6 gives 5,1,1,1,1,1.
  """
  if split not in TASK_SPLITS:
    raise ValueError(f"config.data.task_split={split!r}: expected one of {TASK_SPLITS}.")
  if not 1 <= num_tasks <= num_classes:
    raise ValueError(
        f"config.data.num_tasks={num_tasks} must be between 1 and the number of classes "
        f"({num_classes}).")
  if num_tasks == 1:
    return [num_classes]
  if split == "equal":
    if num_classes % num_tasks:
      raise ValueError(
          f"config.data.num_tasks={num_tasks} does not split {num_classes} classes equally; "
          f"use a divisor of {num_classes} or --config.data.task_split=rdfcil.")
    return [num_classes // num_tasks] * num_tasks
  init = num_classes // num_tasks + (num_classes - num_classes // num_tasks) % (num_tasks - 1)
  inc = (num_classes - init) // (num_tasks - 1)
  return [init] + [inc] * (num_tasks - 1)


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """The class-incremental protocol of one run.

  Attributes:
    class_order: original class ids in model-label order, length C.
    sizes: classes per task, length T, summing to C.
  """
  class_order: tuple[int, ...]
  sizes: tuple[int, ...]

  @property
  def num_tasks(self) -> int:
    return len(self.sizes)

  @property
  def num_classes(self) -> int:
    return len(self.class_order)

  @property
  def offsets(self) -> np.ndarray:
    """int (T+1,): model-label boundaries; task t owns [offsets[t], offsets[t+1])."""
    return np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)

  def num_seen(self, task: int) -> int:
    """Number of classes seen after training task `task` (0-based)."""
    return int(self.offsets[task + 1])

  def task_of_label(self) -> np.ndarray:
    """int (C,): the task that owns each model label."""
    return np.repeat(np.arange(self.num_tasks), self.sizes)

  def to_model_labels(self, original_labels: np.ndarray) -> np.ndarray:
    """Maps original dataset labels (N,) to model labels (N,) by position in the class order."""
    lookup = np.empty(self.num_classes, np.int64)
    lookup[np.asarray(self.class_order)] = np.arange(self.num_classes)
    return lookup[np.asarray(original_labels)]

  def task_classes(self, task: int) -> np.ndarray:
    """Model labels of task `task`."""
    return np.arange(self.offsets[task], self.offsets[task + 1])


def make_task_spec(*, num_classes: int, num_tasks: int, order: str | Sequence[int],
                   split: str = "equal") -> TaskSpec:
  """Builds the TaskSpec from config values; raises ValueError naming the bad field."""
  return TaskSpec(class_order=tuple(class_order(order, num_classes)),
                  sizes=tuple(split_sizes(num_classes, num_tasks, split)))


def run_name(order: str, seed: int) -> str:
  """A run's directory in a sweep or a group of runs: its class order, "-s<seed>" unless seed 0."""
  return order if seed == 0 else f"{order}-s{seed}"
