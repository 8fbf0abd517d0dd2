"""A run as a plan: segments laid end to end on ONE global step counter.

Every job is a sequence of segments (class-incremental: per task the inversion, the main phase, the
head fine-tuning and the evaluation; teacher: per epoch training and evaluation; dfkd: per epoch
synthesis, student training and evaluation). Global step s means "s steps of the plan done": an
inversion iteration, a train step and an evaluation each count one. A checkpoint is keyed by its
step, and `Plan.locate(s)` says where step s falls — task, segment, epoch, step in the epoch, the
learning rate — so resuming is "restore the state at step s and continue the plan from s". The jobs
derive their data order and random keys from that position, i.e. from (seed, s).

The learning rates are computed here in float64 and rounded once to float32, as PyTorch does with
its Python-float lr. (optax's schedules multiply in float32: its piecewise-constant schedule gives
0.0050000004 for 0.05·0.1 and its cosine schedule differs by an ulp at 130 of 200 epochs; RFD's
results move with such roundings, see README "Protocol".)
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class Segment:
  """`num_steps` consecutive steps of one kind, starting at global step `start`.

  name: the kind ("inversion", "main", "finetune", "eval"; "train"; "synthesis", "student").
  task: the class-incremental task (0-based; 0 for the epoch jobs).
  epoch_steps: steps per epoch of an epoch-based segment (`num_steps` a multiple of it); 0 if the
    segment has no epochs.
  first_epoch: the task's (or the run's) epoch number of the segment's first epoch.
  lrs: the learning rate of each of the segment's epochs (empty if it has none).
  block_steps: steps run by one call of the segment's function (an inversion chunk, a scanned
    epoch); divides num_steps.
  save_at_end: whether a checkpoint is written when the segment ends.
  """
  name: str
  task: int
  start: int
  num_steps: int
  epoch_steps: int = 0
  first_epoch: int = 0
  lrs: tuple[float, ...] = ()
  block_steps: int = 1
  save_at_end: bool = True

  @property
  def end(self) -> int:
    return self.start + self.num_steps

  @property
  def num_epochs(self) -> int:
    return self.num_steps // self.epoch_steps if self.epoch_steps else 0


@dataclasses.dataclass(frozen=True)
class Position:
  """Where a global step falls: the step is the `offset`-th (0-based) of `segment`."""
  step: int
  segment_index: int
  segment: Segment
  offset: int

  @property
  def epoch(self) -> int:
    """The task's (or the run's) epoch number."""
    s = self.segment
    return s.first_epoch + (self.offset // s.epoch_steps if s.epoch_steps else 0)

  @property
  def step_in_epoch(self) -> int:
    return self.offset % self.segment.epoch_steps if self.segment.epoch_steps else self.offset

  @property
  def lr(self) -> float | None:
    s = self.segment
    return s.lrs[self.epoch - s.first_epoch] if s.lrs else None


@dataclasses.dataclass(frozen=True)
class Plan:
  """The segments of a run, contiguous from step 0."""
  segments: tuple[Segment, ...]

  def __post_init__(self):
    step = 0
    for s in self.segments:
      if s.start != step or s.num_steps < 1 or s.num_steps % s.block_steps or (
          s.epoch_steps and (s.num_steps % s.epoch_steps or len(s.lrs) != s.num_epochs)):
        raise ValueError(f"inconsistent segment {s} at step {step}")
      step = s.end

  @property
  def total_steps(self) -> int:
    return self.segments[-1].end if self.segments else 0

  def locate(self, step: int) -> Position:
    """The position of the step run after `step` steps are done (0 <= step < total_steps)."""
    if not 0 <= step < self.total_steps:
      raise ValueError(f"step {step} is outside the plan's [0, {self.total_steps})")
    index = bisect.bisect_right([s.start for s in self.segments], step) - 1
    segment = self.segments[index]
    return Position(step, index, segment, step - segment.start)

  def task_end_steps(self) -> list[int]:
    """The global step at which each task ends (the end of its last segment), by task."""
    ends: dict[int, int] = {}
    for s in self.segments:
      ends[s.task] = s.end
    return [ends[t] for t in sorted(ends)]

  def describe(self, step: int) -> str:
    """E.g. "task 2/5, main epoch 3 step 4 (step 212 of 1048)"; "done" at the end."""
    if step >= self.total_steps:
      return f"all {self.total_steps} steps done"
    p = self.locate(step)
    tasks = self.segments[-1].task + 1
    where = f"task {p.segment.task + 1}/{tasks}, " if tasks > 1 else ""
    if p.segment.epoch_steps:
      what = f"{p.segment.name} epoch {p.epoch + 1} step {p.step_in_epoch}"
    elif p.segment.num_steps > 1:
      what = f"{p.segment.name} iteration {p.offset}"
    else:
      what = p.segment.name
    return f"{where}{what} (step {step} of {self.total_steps})"


# ---- Learning-rate schedules (per epoch, restarted with every task). ----------------------------


def step_decay_lr(base_lr: float, decay: float, milestones: Sequence[int], epoch: int) -> float:
  """base_lr · decay^(number of milestones <= epoch) (PyTorch MultiStepLR)."""
  return float(base_lr * decay ** sum(epoch >= m for m in milestones))


def cosine_lr(base_lr: float, epoch: int, num_epochs: int) -> float:
  """PyTorch CosineAnnealingLR (eta_min 0) stepped once per epoch: lr·(1 + cos(π·epoch/E))/2."""
  return float(base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / num_epochs)))


# ---- The plans of the three jobs. ---------------------------------------------------------------


class _Builder:
  def __init__(self):
    self.segments: list[Segment] = []

  def add(self, name: str, task: int, num_steps: int, **kw) -> None:
    start = self.segments[-1].end if self.segments else 0
    self.segments.append(Segment(name, task, start, num_steps, **kw))

  def plan(self) -> Plan:
    return Plan(tuple(self.segments))


def dfcil_plan(*, num_tasks: int, epoch_steps: Sequence[int], epochs: int, ft_epochs: int,
               has_finetune_phase: bool, inversion_iterations: int, inversion_block: int,
               uses_inversion: bool, lr: float, lr_decay: float, milestones: Sequence[int],
               ft_lr: float, scan_epochs: bool = False) -> Plan:
  """Per task t: inversion (t >= 1, if the learner inverts), main phase, head fine-tuning (t >= 1,
  learners that have one), evaluation.

  Learners with head fine-tuning (rdfcil, rfd) train E − E_ft main epochs and E_ft fine-tuning
  epochs (spec §3; task 0 has the E − E_ft main epochs only, as the original); the others train all
  E epochs as main phase. epoch_steps[t]: train steps per epoch of task t. scan_epochs: a train
  block is a whole epoch (one jitted scan), else one step.
  """
  b = _Builder()
  main_epochs = epochs - ft_epochs if has_finetune_phase else epochs
  for task in range(num_tasks):
    finetunes = has_finetune_phase and task > 0 and ft_epochs > 0
    if uses_inversion and task > 0:
      b.add("inversion", task, inversion_iterations, block_steps=inversion_block)
    block = epoch_steps[task] if scan_epochs else 1
    b.add("main", task, main_epochs * epoch_steps[task], epoch_steps=epoch_steps[task],
          block_steps=block, lrs=tuple(step_decay_lr(lr, lr_decay, milestones, e) for e in range(main_epochs)),
          save_at_end=finetunes)  # else the evaluation follows at once and saves
    if finetunes:
      b.add("finetune", task, ft_epochs * epoch_steps[task], epoch_steps=epoch_steps[task],
            block_steps=block, first_epoch=main_epochs, lrs=(float(ft_lr),) * ft_epochs, save_at_end=False)
    b.add("eval", task, 1)
  return b.plan()


def teacher_plan(*, epochs: int, epoch_steps: int, lr: float) -> Plan:
  """Per epoch: training (cosine lr), then the evaluation (which checkpoints)."""
  b = _Builder()
  for epoch in range(epochs):
    b.add("train", 0, epoch_steps, epoch_steps=epoch_steps, first_epoch=epoch,
          lrs=(cosine_lr(lr, epoch, epochs),), save_at_end=False)
    b.add("eval", 0, 1, first_epoch=epoch)
  return b.plan()


def dfkd_plan(*, epochs: int, synthesis_iterations: int, student_steps: int, lr: float,
              synthesis_block: int = 1) -> Plan:
  """Per epoch: one synthesis round (in blocks of `synthesis_block` iterations), the student's
  training on the pool (cosine lr), the evaluation (which checkpoints)."""
  b = _Builder()
  for epoch in range(epochs):
    b.add("synthesis", 0, synthesis_iterations, first_epoch=epoch, block_steps=synthesis_block,
          save_at_end=False)
    b.add("student", 0, student_steps, epoch_steps=student_steps, first_epoch=epoch,
          lrs=(cosine_lr(lr, epoch, epochs),), save_at_end=False)
    b.add("eval", 0, 1, first_epoch=epoch)
  return b.plan()
