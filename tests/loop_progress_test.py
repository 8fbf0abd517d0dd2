"""The ETA's rates leave compile time out, and a "compiling …" line precedes each new kind of step."""

import jax
import pytest

from rfd_jax.engine import loop, plan as plan_lib, timing, writers
from tests import fake_jobs


class _Clock:
  def __init__(self):
    self.now = 1000.0

  def time(self):
    return self.now


class _Job(fake_jobs.NullJob):
  """Each step takes 1 s on the fake clock; the first step of epoch 2 also "compiles" for 1.5 s
  (reported to jax.monitoring like a real compile)."""

  def __init__(self, clock):
    self.clock = clock

  def run_block(self, position, num_steps):
    self.clock.now += num_steps
    if position.step == 2:
      self.clock.now += 1.5
      jax.monitoring.record_event_duration_secs("/jax/core/compile/backend_compile_duration", 1.5)
    return None


def test_compile_seconds_are_not_step_time(tmp_path, monkeypatch):
  clock = _Clock()
  monkeypatch.setattr(loop.time, "time", clock.time)
  lines = []
  monkeypatch.setattr(loop.logging, "info", lambda fmt, *args: lines.append(fmt % args))
  plan = plan_lib.dfcil_plan(num_tasks=1, epoch_steps=[2], epochs=3, ft_epochs=0,
                             has_finetune_phase=False, inversion_iterations=1, inversion_block=1,
                             uses_inversion=False, lr=0.1, lr_decay=0.1, milestones=(),
                             ft_lr=0.0)
  writer = writers.MetricWriter(str(tmp_path), hparams={})
  runner = loop.Loop(plan, checkpoints=None, writer=writer, signals=None, config_dict={},
                     log_every_steps=0, ckpt_every_steps=0, progress=True, invocation_start=0.0)
  runner.run(_Job(clock), start_step=0)
  writer.close()
  # epoch 1 is skipped (first of its kind); epoch 2 took 3.5 s for 2 steps, 1.5 s of it compiling;
  # epoch 3 took 2 s: 1 s per step both times (2.5 s of wall time would have said 1.75)
  assert runner.seconds_per_step["main"] == pytest.approx(1.0)
  assert lines.count("main: compiling …") == 1 and lines.count("eval: compiling …") == 1
  # the listener is gone after the run: later compiles are not counted
  before = runner.compile_clock.seconds
  jax.monitoring.record_event_duration_secs("/jax/core/compile/backend_compile_duration", 9.0)
  assert runner.compile_clock.seconds == before == pytest.approx(1.5)


def test_compile_kind_tells_the_first_task_from_the_later_ones():
  plan = plan_lib.dfcil_plan(num_tasks=2, epoch_steps=[2, 2], epochs=2, ft_epochs=1,
                             has_finetune_phase=True, inversion_iterations=2, inversion_block=1,
                             uses_inversion=True, lr=0.1, lr_decay=0.1, milestones=(),
                             ft_lr=0.0)
  kinds = [timing.compile_kind(s) for s in plan.segments]
  assert kinds == [("main", False), ("eval", False), ("inversion", True), ("main", True),
                   ("finetune", True), ("eval", True)]
