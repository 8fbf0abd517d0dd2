"""The plan: segments on one global step, positions, learning rates, task ends."""

import math

import numpy as np
import pytest

from rfd_jax.engine import plan


def _dfcil(**overrides):
  kw = dict(num_tasks=3, epoch_steps=[5, 4, 3], epochs=4, ft_epochs=1, has_finetune_phase=True,
            inversion_iterations=6, inversion_block=3, uses_inversion=True, lr=0.05, lr_decay=0.1,
            milestones=(2,), ft_lr=0.005)
  return plan.dfcil_plan(**{**kw, **overrides})


def test_dfcil_segments_lie_end_to_end():
  p = _dfcil()
  got = [(s.name, s.task, s.start, s.num_steps) for s in p.segments]
  assert got == [("main", 0, 0, 15), ("eval", 0, 15, 1),
                 ("inversion", 1, 16, 6), ("main", 1, 22, 12), ("finetune", 1, 34, 4),
                 ("eval", 1, 38, 1),
                 ("inversion", 2, 39, 6), ("main", 2, 45, 9), ("finetune", 2, 54, 3),
                 ("eval", 2, 57, 1)]
  assert p.total_steps == 58
  assert p.task_end_steps() == [16, 39, 58]
  # the fine-tuning continues the task's epoch count; the main phase saves only before it
  assert p.segments[4].first_epoch == 3 and p.segments[4].block_steps == 1
  assert [s.save_at_end for s in p.segments[:2]] == [False, True]
  assert p.segments[3].save_at_end and not p.segments[4].save_at_end


def test_learners_without_inversion_or_finetuning_train_every_epoch():
  p = _dfcil(has_finetune_phase=False, uses_inversion=False)
  assert [(s.name, s.num_steps) for s in p.segments] == [
      ("main", 20), ("eval", 1), ("main", 16), ("eval", 1), ("main", 12), ("eval", 1)]


def test_locate_gives_epoch_step_and_lr():
  p = _dfcil()
  pos = p.locate(22 + 4 * 2 + 1)  # task 1, main, epoch 2 (0-based), step 1
  assert (pos.segment.name, pos.segment.task, pos.epoch, pos.step_in_epoch) == ("main", 1, 2, 1)
  # 0.05 · 0.1 after milestone 2: in float32 exactly 0.005, as PyTorch (optax: 0.0050000004)
  assert np.float32(pos.lr) == np.float32(0.005)
  assert p.locate(22).lr == 0.05
  ft = p.locate(34 + 2)
  assert (ft.segment.name, ft.epoch, ft.step_in_epoch, ft.lr) == ("finetune", 3, 2, 0.005)
  inv = p.locate(16 + 3)
  assert (inv.segment.name, inv.offset, inv.lr) == ("inversion", 3, None)
  with pytest.raises(ValueError):
    p.locate(58)
  assert p.describe(22 + 9) == "task 2/3, main epoch 3 step 1 (step 31 of 58)"
  assert p.describe(19) == "task 2/3, inversion iteration 3 (step 19 of 58)"
  assert p.describe(58) == "all 58 steps done"


def test_lr_schedules_are_pytorch_values():
  assert plan.step_decay_lr(0.1, 0.1, (80, 120), 79) == 0.1
  assert plan.step_decay_lr(0.1, 0.1, (80, 120), 80) == pytest.approx(0.01, rel=1e-15)
  assert plan.step_decay_lr(0.1, 0.1, (80, 120), 120) == pytest.approx(1e-3, rel=1e-15)
  assert plan.cosine_lr(0.1, 0, 200) == pytest.approx(0.1)
  assert plan.cosine_lr(0.1, 100, 200) == pytest.approx(0.05)
  assert plan.cosine_lr(0.1, 150, 200) == pytest.approx(0.05 * (1 + math.cos(math.pi * 0.75)))


def test_teacher_and_dfkd_plans():
  t = plan.teacher_plan(epochs=3, epoch_steps=4, lr=0.1)
  assert [(s.name, s.start, s.num_steps, s.first_epoch) for s in t.segments] == [
      ("train", 0, 4, 0), ("eval", 4, 1, 0), ("train", 5, 4, 1), ("eval", 9, 1, 1),
      ("train", 10, 4, 2), ("eval", 14, 1, 2)]
  assert t.locate(6).lr == pytest.approx(plan.cosine_lr(0.1, 1, 3))
  assert [s.save_at_end for s in t.segments] == [False, True] * 3
  d = plan.dfkd_plan(epochs=2, synthesis_iterations=5, student_steps=3, lr=0.1)
  assert [(s.name, s.num_steps) for s in d.segments] == [("synthesis", 5), ("student", 3),
                                                         ("eval", 1)] * 2
  assert d.locate(9 + 2).epoch == 1 and d.locate(9 + 2).segment.name == "synthesis"
  assert [s.block_steps for s in d.segments] == [1] * 6
  chunked = plan.dfkd_plan(epochs=2, synthesis_iterations=6, synthesis_block=3, student_steps=3,
                           lr=0.1)
  assert [s.block_steps for s in chunked.segments] == [3, 1, 1] * 2
  with pytest.raises(ValueError):  # the chunk must divide the round
    plan.dfkd_plan(epochs=1, synthesis_iterations=5, synthesis_block=3, student_steps=3, lr=0.1)


def test_inconsistent_segments_are_rejected():
  with pytest.raises(ValueError):
    plan.Plan((plan.Segment("main", 0, 0, 10, epoch_steps=3, lrs=(0.1,) * 3),))
  with pytest.raises(ValueError):
    plan.Plan((plan.Segment("inversion", 0, 0, 10, block_steps=4),))
  with pytest.raises(ValueError):
    plan.Plan((plan.Segment("eval", 0, 1, 1),))
