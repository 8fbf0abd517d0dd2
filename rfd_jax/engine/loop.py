"""The one loop every job runs: a plan's segments, block by block, from a global step to the end.

A job (`Job`) says what a segment does: `enter` (at the segment's first step, never when resuming
inside it), `run_block` (the next steps; returns their mean metrics, on device), `end_epoch`,
`exit`, and `checkpoint` (its live arrays and record). The loop owns everything around the steps:
  metrics   summed on device over the steps of a log interval, written to metrics.jsonl /
            TensorBoard every `log_every_steps` global steps and at every segment end (one host
            sync each), and over each epoch for the progress line;
  finite    every written interval and epoch is checked for NaN/inf (NonFiniteError), and the
            parameters before every save, so a diverged run never overwrites a good checkpoint;
  checkpoints  every `ckpt_every_steps` global steps and where a segment says so (task ends and
            phase boundaries), keyed by the global step, with the rates the ETA needs;
  preemption   SIGTERM/SIGINT: save at the current step and raise Preempted;
  progress  the epoch and inversion lines, with an ETA over the rest of the plan that weighs each
            kind of segment by its measured seconds per step (restored with the checkpoint, so it
            is right just after a resume too). Compilation is not step time: the seconds JAX
            reports compiling (jax.monitoring) are left out of the rates, and a "compiling …"
            line says why the first block of a new kind of segment takes long.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from typing import Any, Protocol

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from rfd_jax.engine import checkpointing, preemption, timing, writers
from rfd_jax.engine.plan import Plan, Position, Segment

# Test-only hook: "<global step>[:<KILL|TERM|INT>]" makes the run send itself the signal (default
# SIGKILL) right after the block that reaches that step, once any checkpoint due there has been
# started (not necessarily finished). Read once, when the loop is built. tests/checkpointing_test.py interrupts runs at exact points with it.
ENV_TEST_KILL_AT = "RFD_JAX_TEST_KILL_AT"


class Job(Protocol):
  """What a job tells the loop; see the module docstring."""

  def enter(self, segment: Segment) -> None: ...
  def run_block(self, position: Position, num_steps: int) -> dict[str, jax.Array] | None: ...
  def end_epoch(self, segment: Segment, epoch: int, means: dict[str, float], eta: str
                ) -> None: ...
  def exit(self, segment: Segment) -> None: ...
  def checkpoint(self) -> tuple[dict[str, Any], dict[str, Any]]: ...


@jax.jit
def _accumulate(total: dict[str, jax.Array], metrics: dict[str, jax.Array], weight: jax.Array):
  return jax.tree.map(lambda t, m: t + weight * m.astype(jnp.float32), total, metrics)


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _host_value(value: np.ndarray) -> float | np.ndarray:
  """A metric read back: a float, or float64 (R,) for the per-run metrics of a group."""
  value = np.asarray(value, np.float64)
  return float(value) if value.ndim == 0 else value


def is_finite(value) -> bool:
  return bool(np.all(np.isfinite(value)))


def display(value) -> float:
  """A metric as one number for a progress line: itself, or the mean over a group's runs."""
  return float(np.mean(value))


class _Sums:
  """Step-weighted sums of block metrics, kept on device until read (one sync per read). A metric
  is a scalar, or (R,) with one value per run (rfd_jax.jobs.dfcil)."""

  def __init__(self, saved: dict | None = None):
    self.total, self.steps, self.first = None, 0, None
    if saved:  # from a checkpoint's record (`to_json`): a resume inside an interval continues it
      self.total = {k: jnp.asarray(v, jnp.float32) for k, v in saved["total"].items()}
      self.steps, self.first = saved["steps"], saved["first"]

  def to_json(self) -> dict | None:
    if self.total is None:
      return None
    return {"total": {k: np.asarray(v, np.float64).tolist()
                      for k, v in jax.device_get(self.total).items()},
            "steps": self.steps, "first": self.first}

  def add(self, metrics: dict[str, jax.Array], num_steps: int, first_step: int) -> None:
    if self.total is None:
      self.total = jax.tree.map(lambda m: jnp.zeros(m.shape, jnp.float32), metrics)
      self.first = first_step
    self.total = _accumulate(self.total, metrics, jnp.float32(num_steps))
    self.steps += num_steps

  def bad(self) -> dict[str, float]:
    """The metrics whose sum so far is NaN/inf (a host sync)."""
    if self.total is None:
      return {}
    return {k: _host_value(v) for k, v in jax.device_get(self.total).items()
            if not is_finite(v)}

  def pop_means(self) -> tuple[dict[str, float], int] | None:
    """({name: mean}, first step) of what was added since the last pop, or None if nothing."""
    if self.total is None:
      return None
    means = {k: _host_value(v) / self.steps for k, v in jax.device_get(self.total).items()}
    first = self.first
    self.total, self.steps, self.first = None, 0, None
    return means, first


def _parse_kill_at(value: str) -> tuple[int, int] | None:
  if not value:
    return None
  step, _, name = value.partition(":")
  return int(step), getattr(signal, "SIG" + (name or "KILL"))


class Loop:
  """Runs a job's plan (see the module docstring).

  checkpoints: checkpointing.Checkpoints or None (disabled). writer: writers.MetricWriter.
  signals: preemption.StopSignals (or the never-stopping stand-in). meta: the record of the
  checkpoint resumed ({} when starting afresh), for its seconds_per_step and invocation_seconds.
  wall_record: timing.WALL_TIME_FILE as the previous invocation left it (a resume in the
  same workdir), or None. wall_path: where this invocation keeps that file (None: nowhere).
  saved_step: the step of that checkpoint if it is in this workdir (not saved again).
  config_dict: the config stored in every checkpoint.
  """

  def __init__(self, plan: Plan, *, checkpoints, writer, signals, config_dict: dict,
               log_every_steps: int, ckpt_every_steps: int, progress: bool,
               invocation_start: float, meta: dict | None = None,
               saved_step: int | None = None, wall_record: dict | None = None,
               wall_path: str | None = None):
    self.plan, self.checkpoints, self.writer, self.signals = plan, checkpoints, writer, signals
    self.config_dict = config_dict
    self.log_every, self.ckpt_every, self.progress = log_every_steps, ckpt_every_steps, progress
    meta = meta or {}
    self.invocation_start = invocation_start
    self.earlier_invocations = timing.earlier_invocations(meta, wall_record)
    self.wall_path = wall_path
    self._resumed_from = [meta["step"], meta.get("invocation_start")] if "step" in meta else None
    self.seconds_per_step = dict(meta.get("seconds_per_step", {}))  # by segment name
    self.saved_step = saved_step  # the step of the checkpoint resumed, if from this workdir
    self.step = 0
    self._kill_at = _parse_kill_at(os.environ.get(ENV_TEST_KILL_AT, ""))
    self._measured: set[str] = set()  # segment names whose first (compiling) interval is over
    self._compiled: set[tuple[str, bool]] = set()  # timing.compile_kind()s announced (compiling …)
    self.compile_clock = timing.CompileClock()
    self._sums: tuple[Segment, _Sums, _Sums] | None = None
    # the metric sums of a checkpoint taken inside a log interval or epoch, so that the resumed
    # run writes the same means as the uninterrupted one
    self._resumed_step, self._resumed_sums = meta.get("step"), meta.get("metric_sums") or {}
    self._mark = (time.time(), 0, 0.0)  # (time, step, compile seconds) of the last host sync

  # ---- The run. --------------------------------------------------------------------------------

  def run(self, job: Job, start_step: int) -> None:
    """Runs the plan from `start_step` (steps done) to its end."""
    self.step = start_step
    if start_step >= self.plan.total_steps:
      return
    first = self.plan.locate(start_step).segment_index
    with self.compile_clock:
      self._mark = (time.time(), start_step, self.compile_clock.seconds)
      for segment in self.plan.segments[first:]:
        self._run_segment(job, segment)

  def _run_segment(self, job: Job, segment: Segment) -> None:
    if self.step == segment.start:
      job.enter(segment)
    saved = self._resumed_sums if self.step == self._resumed_step else {}
    interval, epoch_sums = _Sums(saved.get("interval")), _Sums(saved.get("epoch"))
    self._sums = (segment, interval, epoch_sums)  # checked and stored by a save
    while self.step < segment.end:
      position = self.plan.locate(self.step)
      # to the next block boundary: a whole block, except after a resume inside one (a checkpoint
      # of the host loop resumed by the scanned one)
      num_steps = segment.block_steps - position.offset % segment.block_steps
      if self.progress and timing.compile_kind(segment) not in self._compiled:
        self._compiled.add(timing.compile_kind(segment))
        logging.info("%s%s: compiling …", self._task_label(segment), segment.name)
      metrics = job.run_block(position, num_steps)
      previous, self.step = self.step, self.step + num_steps
      if metrics is not None:
        interval.add(metrics, num_steps, previous)
        epoch_sums.add(metrics, num_steps, previous)
      synced = False
      if self.log_every and self.step // self.log_every > previous // self.log_every:
        self._write(segment, interval, position.lr)
        synced = True
      if segment.epoch_steps and (self.step - segment.start) % segment.epoch_steps == 0:
        means = self._check(segment, epoch_sums)
        self._note_rate(segment)
        synced = True
        job.end_epoch(segment, position.epoch, means or {}, self.eta())
      elif segment.block_steps > 1:  # chunked (inversion): a line per chunk
        means = self._check(segment, epoch_sums)
        self._note_rate(segment)
        synced = True
        if self.progress and means:
          self._block_line(segment, means)
      if self.step == segment.end:
        self._write(segment, interval, position.lr)
        job.exit(segment)
        self._note_rate(segment)
        synced = True
      self._after_block(job, segment, previous, synced)

  def _after_block(self, job: Job, segment: Segment, previous: int, synced: bool) -> None:
    due = self.ckpt_every and self.step // self.ckpt_every > previous // self.ckpt_every
    if due or (self.step == segment.end and segment.save_at_end):
      self.save(job)
    if self._kill_at is not None and previous < self._kill_at[0] <= self.step:
      logging.warning("%s: sending %s to myself at step %d", ENV_TEST_KILL_AT,
                      signal.Signals(self._kill_at[1]).name, self.step)
      logging.flush()
      os.kill(os.getpid(), self._kill_at[1])
    if self.signals is not None and self.step < self.plan.total_steps and (
        self.signals.requested(sync=synced or self.step == segment.end)):
      self.save(job)
      self.checkpoints.wait()
      raise checkpointing.Preempted(
          f"stopped on {self.signals.received} at {self.plan.describe(self.step)}; checkpoint "
          f"saved in {self.checkpoints.directory}. Rerun the same command to resume.")

  # ---- Metrics, finiteness, progress. -----------------------------------------------------------

  def _where(self, segment: Segment, first: int) -> str:
    tasks = self.plan.segments[-1].task + 1
    task = f"task {segment.task + 1}/{tasks}, " if tasks > 1 else ""
    return f"steps {first + 1}-{self.step} ({task}{segment.name}{self._epoch_label(first)})"

  def _epoch_label(self, step: int) -> str:
    p = self.plan.locate(step)
    return f" epoch {p.epoch + 1}" if p.segment.epoch_steps else ""

  def _check(self, segment: Segment, sums: _Sums) -> dict[str, float] | None:
    popped = sums.pop_means()
    if popped is None:
      return None
    means, first = popped
    self._raise_if_bad(segment, first, {k: v for k, v in means.items() if not is_finite(v)})
    return means

  def _raise_if_bad(self, segment: Segment, first: int, bad: dict[str, float]) -> None:
    if bad:
      raise checkpointing.NonFiniteError(
          f"non-finite loss in {self._where(segment, first)}: "
          + ", ".join(f"{k}={v}" for k, v in bad.items()) + self._last_good_checkpoint())

  def _write(self, segment: Segment, interval: _Sums, lr: float | None) -> None:
    first = interval.first
    means = self._check(segment, interval)
    if means is None:
      return
    record = {"task": segment.task, "phase": segment.name, **means}
    if segment.epoch_steps:
      record["epoch"] = self.plan.locate(first).epoch
    if lr is not None:
      record["train/lr"] = lr
    self.writer.write(self.step, record)
    self._write_wall_time()

  def _write_wall_time(self) -> None:
    """Rewrites WALL_TIME_FILE: this invocation's seconds so far (see checkpointing)."""
    if self.wall_path is not None:
      writers.write_json(self.wall_path, timing.wall_record(
          self.invocation_start, self.earlier_invocations, self._resumed_from))

  def _note_rate(self, segment: Segment) -> None:
    """Seconds per step of `segment`'s kind since the last host sync, less the seconds JAX spent
    compiling meanwhile (the first interval of each kind in this process is skipped too: its
    first calls also place constants and warm caches)."""
    now, compiling = time.time(), self.compile_clock.seconds
    then, since, compiled_before = self._mark
    self._mark = (now, self.step, compiling)
    if self.step > since:
      if segment.name in self._measured:
        seconds = max(now - then - (compiling - compiled_before), 0.0)
        self.seconds_per_step[segment.name] = seconds / (self.step - since)
      self._measured.add(segment.name)

  def eta_seconds(self) -> float:
    """Seconds left: each remaining segment's steps × its kind's seconds per step (a kind not yet
    measured counts as the mean of the known ones)."""
    known = list(self.seconds_per_step.values())
    default = sum(known) / len(known) if known else 0.0
    left = 0.0
    for s in self.plan.segments:
      steps = s.end - max(s.start, self.step)
      if steps > 0:
        left += steps * self.seconds_per_step.get(s.name, default)
    return left

  def eta(self) -> str:
    return timing.format_duration(self.eta_seconds()) if self.seconds_per_step else "?"

  def _task_label(self, segment: Segment) -> str:
    tasks = self.plan.segments[-1].task + 1
    return f"task {segment.task + 1}/{tasks} " if tasks > 1 else ""

  def _block_line(self, segment: Segment, means: dict[str, float]) -> None:
    """The progress line of a chunk (inversion, synthesis): its total loss (the terms are in
    metrics.jsonl), iterations per second and the ETA of the whole run."""
    rate = self.seconds_per_step.get(segment.name)
    losses = [k for k in means if k.split("/")[-1] == "loss"] or list(means)[:1]
    loss = "  ".join(f"{k.split('/')[-1]} {display(means[k]):.4f}" for k in losses)
    logging.info("%s%s %5d/%d  %s  %s it/s  ETA %s", self._task_label(segment), segment.name,
                 self.step - segment.start, segment.num_steps, loss,
                 f"{1 / rate:.1f}" if rate else "?", self.eta())

  # ---- Checkpoints. ------------------------------------------------------------------------------

  def _last_good_checkpoint(self) -> str:
    if self.checkpoints is None:
      return "; checkpointing is off"
    self.checkpoints.wait()
    ids = self.checkpoints.all_ids()
    return (f"; stopped without saving, the last checkpoint is "
            f"{os.path.join(self.checkpoints.directory, str(ids[-1]))}" if ids else
            "; stopped without saving (no checkpoint yet)")

  def invocation_seconds(self) -> list[float]:
    return timing.invocation_seconds(self.earlier_invocations, self.invocation_start)

  def save(self, job: Job) -> None:
    """Starts an asynchronous save of the job's state at the current step (once per step), after
    checking the metrics since the last write and the parameters are finite."""
    if self.checkpoints is None or self.step == self.saved_step:
      return
    sums = {}
    if self._sums is not None:
      segment, interval, epoch_sums = self._sums
      self._raise_if_bad(segment, interval.first, interval.bad())
      sums = {"interval": interval.to_json(), "epoch": epoch_sums.to_json()}
    arrays, meta = job.checkpoint()
    params = [a.params for a in arrays.values() if hasattr(a, "params")]
    if params and not bool(_all_finite(params)):
      raise checkpointing.NonFiniteError(
          f"non-finite parameters at {self.plan.describe(self.step)} (its logged losses were "
          "finite)" + self._last_good_checkpoint())
    meta = {**meta, "step": self.step, "position": self.plan.describe(self.step),
            "metric_sums": sums,
            "seconds_per_step": self.seconds_per_step, "metrics_records": self.writer.records,
            "invocation_seconds": self.invocation_seconds(),
            "invocation_start": self.invocation_start, "arrays": sorted(arrays),
            "config": self.config_dict}
    self.checkpoints.save(self.step, arrays, meta)
    self._write_wall_time()
    self.saved_step = self.step
    logging.info("checkpoint %d: %s", self.step, self.plan.describe(self.step))


@dataclasses.dataclass(frozen=True)
class LoopSettings:
  """What the loop reads of a config (a job builds it: rfd_jax.jobs.settings)."""
  ckpt_enabled: bool  # config.ckpt.enabled
  keep: int  # config.ckpt.keep: the last checkpoints kept
  ckpt_every_steps: int  # config.ckpt.every_steps (0: only where the plan says)
  log_every_steps: int  # config.log.every_steps (0: at segment ends only)
  progress: bool  # config.log.progress
  config_dict: dict  # saved_config.config_dict(config), stored in every checkpoint


def run_plan(plan: Plan, job: Job, *, settings: LoopSettings, workdir: str,
             resumed: checkpointing.Resume, writer, invocation_start: float,
             keep_steps=()) -> Loop:
  """Runs `plan` from the resumed step to its end with checkpoints in WORKDIR/checkpoints (the
  last settings.keep, `keep_steps` for good), SIGTERM/SIGINT handling; returns the loop."""
  checkpoints = None
  if settings.ckpt_enabled:
    checkpoints = checkpointing.Checkpoints(os.path.join(workdir, "checkpoints"),
                                            keep=settings.keep, keep_steps=keep_steps)
  signals = preemption.StopSignals() if checkpoints else preemption.no_stop_signals()
  try:
    with signals as stop:
      runner = Loop(plan, checkpoints=checkpoints, writer=writer, signals=stop,
                    config_dict=settings.config_dict, log_every_steps=settings.log_every_steps,
                    ckpt_every_steps=settings.ckpt_every_steps, progress=settings.progress,
                    invocation_start=invocation_start, meta=resumed.meta,
                    saved_step=resumed.step if resumed.from_workdir else None,
                    wall_record=(timing.read_wall_record(workdir) if resumed.from_workdir
                                 else None),
                    wall_path=(os.path.join(workdir, timing.WALL_TIME_FILE)
                               if checkpoints is not None and jax.process_index() == 0 else None))
      runner.run(job, resumed.step)
  finally:
    if checkpoints is not None:
      checkpoints.close()
  return runner
