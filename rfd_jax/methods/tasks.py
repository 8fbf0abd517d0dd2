"""Class orders, task splits, label remapping and seen-class bookkeeping (numpy only).

Conventions used across the project:
  * `class_order[k]` is the original dataset class id that the model calls label `k`.
  * Task `t` owns model labels `[task_offsets[t], task_offsets[t + 1])`, so the classes of a task
    are contiguous in model-label space and "classes seen after task t" is `range(task_offsets[t+1])`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from collections.abc import Sequence

import numpy as np

NAMED_ORDERS = ("identity", "seed<N>", "imagenet1993")  # seed<N>: any integer N >= 0
TASK_SPLITS = ("equal", "rdfcil")
_SEED = re.compile(r"seed(0|[1-9][0-9]*)")
_SEED_RANGE = re.compile(r"(seed[0-9]+)-(seed[0-9]+)")
_DOTTED = re.compile(r"[0-9]+(\.[0-9]+)+")
_MAX_NAME = 64  # longer explicit orders get a shortened directory name


def _seed_of(name: str) -> int | None:
  """N for "seed<N>" (no leading zeros), else None."""
  match = _SEED.fullmatch(name)
  return int(match.group(1)) if match else None


def class_order(spec: str | Sequence[int], num_classes: int) -> list[int]:
  """Returns the class order named by `spec` as a list of original class ids.

  Args:
    spec: one of
      * "identity": 0..C-1;
      * "seed<N>" for any integer N >= 0 ("seed0", "seed7", ...): `random.seed(N);
        random.shuffle(list(range(C)))` (the ABD / R-DFCIL / RFD protocol, repeat N; RFD's CIFAR-100
        default is seed1, R-DFCIL's is seed0);
      * "imagenet1993": `np.random.seed(1993); np.random.shuffle(list(range(C)))` (PODNet / ABD);
      * an explicit permutation: a sequence of ints, a comma-separated string "3,1,0,2", the same
        in brackets "[3,1,0,2]", or dot-separated "3.1.0.2" (the form of `order_list` and of run
        directory names).
    num_classes: C, the number of classes in the dataset.

  Raises:
    ValueError: unknown name, or an explicit order that is not a permutation of range(C).
  """
  if isinstance(spec, str) and (spec in ("identity", "imagenet1993") or _seed_of(spec) is not None):
    order = list(range(num_classes))
    if spec == "imagenet1993":
      # np.random.shuffle on a list with the legacy global seed; RandomState(1993) is identical.
      np.random.RandomState(1993).shuffle(order)
    elif spec != "identity":
      # random.Random(N) is the state random.seed(N) gives the module's global generator.
      random.Random(_seed_of(spec)).shuffle(order)
    return order

  if isinstance(spec, str):
    text = spec.replace(" ", "")
    if _SEED_RANGE.fullmatch(text):
      raise ValueError(f"config.data.class_order={spec!r} names several class orders; run them "
                       "with config.runs.class_orders or `rfd_jax.tools.sweep --orders`.")
    if text.startswith("[") and text.endswith("]"):
      text = text[1:-1]
    separator = "." if _DOTTED.fullmatch(text) else ","
    try:
      order = [int(tok) for tok in text.split(separator) if tok]
    except ValueError:
      raise ValueError(
          f"config.data.class_order={spec!r} is neither a named order (identity, seed<N> for an "
          "integer N >= 0 such as seed7, imagenet1993) nor a list of class ids (3,1,0,2)."
      ) from None
  else:
    order = [int(c) for c in spec]
  if sorted(order) != list(range(num_classes)):
    raise ValueError(
        f"config.data.class_order must be a permutation of 0..{num_classes - 1} "
        f"({num_classes} distinct ids); got {len(order)} ids: {order[:12]}"
        f"{'...' if len(order) > 12 else ''}.")
  return order


def order_list(text: str, *, where: str) -> list[str]:
  """Expands a comma-separated list of class orders into one spec per order, in order.

  Items: a name ("identity", "seed<N>", "imagenet1993"), a range of seed orders "seed<A>-seed<B>"
  (A <= B, both ends included: "seed0-seed4" is seed0, seed1, ..., seed4), or an explicit order in
  brackets "[3,1,0,2]" or dot-separated "3.1.0.2". An explicit order comes back dot-separated
  (the spec `class_order` reads and the run's directory name, `order_dir_name`). Its length is
  checked against the dataset by `class_order` when the run starts.

  Args:
    text: e.g. "seed0-seed2,seed7,[1,0,3,2]".
    where: the flag or field named in errors, e.g. "--orders".

  Raises:
    ValueError: one line naming `where`, the bad item and how to write it; or an order listed twice.
  """
  out = []
  for item in split_list(text):
    ranged = _SEED_RANGE.fullmatch(item)
    if ranged:
      first, last = (_seed_of(end) for end in ranged.groups())
      if first is None or last is None:
        raise ValueError(f"{where}: {item!r}: write seed numbers without leading zeros, e.g. "
                         "seed0-seed9.")
      if first > last:
        raise ValueError(f"{where}: the range {item!r} runs backwards; write "
                         f"seed{last}-seed{first}.")
      out += [f"seed{n}" for n in range(first, last + 1)]
    elif item in ("identity", "imagenet1993") or _seed_of(item) is not None:
      out.append(item)
    elif (item.startswith("[") and item.endswith("]")) or _DOTTED.fullmatch(item):
      out.append(_explicit(item, where=where))
    else:
      hint = (f" (write seed{int(item[4:])})" if re.fullmatch(r"seed[0-9]+", item) else
              " (an explicit order goes in brackets, e.g. [1,0,3,2], or with dots, 1.0.3.2)"
              if re.fullmatch(r"[0-9]+", item) else "")
      raise ValueError(
          f"{where}: {item!r} is not a class order{hint}; expected identity, seed<N> (N >= 0), a "
          "range seed<A>-seed<B>, imagenet1993, or an explicit order [3,1,0,2] / 3.1.0.2.")
  if not out:
    raise ValueError(f"{where}: no class orders in {text!r}; e.g. seed0-seed4.")
  twice = sorted({o for o in out if out.count(o) > 1})
  if twice:
    raise ValueError(f"{where}: {text!r} lists the class order(s) {', '.join(twice)} twice.")
  return out


def split_list(text: str) -> list[str]:
  """Splits on commas outside brackets: "seed0,[1,0,2],a:x=(1,2)" → ["seed0", "[1,0,2]",
  "a:x=(1,2)"] (items stripped, empty ones dropped)."""
  items, depth, current = [], 0, ""
  for char in str(text):
    depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(char, 0)
    if char == "," and depth == 0:
      items.append(current)
      current = ""
    else:
      current += char
  items.append(current)
  return [item.strip() for item in items if item.strip()]


def _explicit(item: str, *, where: str) -> str:
  """"[3,1,0,2]" or "3.1.0.2" → "3.1.0.2", if it is a permutation of 0..n-1."""
  body = item.replace(" ", "")
  body = body[1:-1] if body.startswith("[") else body.replace(".", ",")
  try:
    ids = [int(tok) for tok in body.split(",")]
  except ValueError:
    raise ValueError(f"{where}: {item!r}: an explicit order lists class ids, e.g. [1,0,3,2]."
                     ) from None
  if sorted(ids) != list(range(len(ids))) or len(ids) < 2:
    raise ValueError(f"{where}: {item!r} is not a permutation of 0..n-1 (each class id once, "
                     "from 0), e.g. [1,0,3,2].")
  return ".".join(map(str, ids))


def order_dir_name(order: str) -> str:
  """The directory name of a class order: its name, or an explicit order dot-separated
  ("3.1.0.2"); one longer than 64 characters is shortened to its first ids and a hash of the
  whole ("53.17.3.20.44.19.40.9...-1a2b3c4d"; the run's results.json has the full order)."""
  if len(order) <= _MAX_NAME:
    return order
  digest = hashlib.sha1(order.encode()).hexdigest()[:8]
  return ".".join(order.split(".")[:8]) + f"...-{digest}"


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
  """A run's directory in a sweep or a group of runs: its class order (`order_dir_name`),
  "-s<seed>" unless seed 0."""
  name = order_dir_name(order)
  return name if seed == 0 else f"{name}-s{seed}"
