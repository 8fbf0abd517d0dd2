"""Time accounting: the seconds JAX spends compiling (left out of step rates), durations as
H:MM:SS, and the wall time of a run across its invocations (a killed and resumed run counts each
one: WORKDIR/wall_time.json and the seconds a checkpoint's record carries)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax

from rfd_jax.engine.plan import Segment

# WORKDIR/wall_time.json: how long the current invocation has run, rewritten at every metrics
# record and save, so that a resume can count what a killed invocation ran after its checkpoint.
WALL_TIME_FILE = "wall_time.json"


def invocation_seconds(earlier: list[float], start: float) -> list[float]:
  """The wall seconds of each invocation of a run: those recorded in the checkpoint it resumed
  from (`earlier`, with `earlier_invocations`' correction), then this one's so far (since
  `start`, its time.time() when its job started).

  Stored in every checkpoint's record, so that the count follows the run state: a resume from an
  older checkpoint (the newest unreadable, or killed before its save finished) counts the
  invocations that led to that state, and the work redone is counted in the current invocation.
  """
  return [*earlier, time.time() - start]


def wall_record(start: float, earlier: list[float], resumed_from: list | None) -> dict[str, Any]:
  """WALL_TIME_FILE's content: the invocation (its start), its seconds so far, the earlier
  invocations' seconds it resumed with, and the checkpoint it resumed from ([step, start of the
  invocation that saved it]; None: from scratch or another workdir)."""
  return {"invocation_start": start, "seconds": time.time() - start, "earlier": list(earlier),
          "resumed_from": resumed_from}


def read_wall_record(workdir: str) -> dict[str, Any] | None:
  try:
    with open(os.path.join(workdir, WALL_TIME_FILE)) as f:
      record = json.load(f)
  except (OSError, ValueError):
    return None
  return record if isinstance(record, dict) else None


def earlier_invocations(meta: dict[str, Any], record: dict[str, Any] | None) -> list[float]:
  """The seconds of the invocations before a resume from the checkpoint of record `meta`, counting
  what the last invocation ran after that checkpoint, up to its last metrics record or save
  (`record`, WALL_TIME_FILE as it left it): when it saved that checkpoint, its time is extended to
  the record's; when it had resumed from that same checkpoint and saved nothing after it, its
  recorded time is added as an invocation of its own. Otherwise (no record, or a resume that fell
  back past the checkpoint the last invocation started from) the checkpoint's own count."""
  earlier = [float(s) for s in meta.get("invocation_seconds", [])]
  if not record or "invocation_start" not in record or "step" not in meta:
    return earlier
  seconds = float(record.get("seconds", 0.0))
  if earlier and record["invocation_start"] == meta.get("invocation_start"):
    return [*earlier[:-1], max(earlier[-1], seconds)]
  if record.get("resumed_from") == [meta["step"], meta.get("invocation_start")]:
    return [*[float(s) for s in record.get("earlier", earlier)], seconds]
  return earlier


def wall_times(earlier: list[float], start: float) -> dict[str, Any]:
  """results.json's wall time: the total over the run's invocations, and each one's."""
  per_invocation = invocation_seconds(earlier, start)
  return {"wall_seconds": sum(per_invocation), "wall_seconds_per_invocation": per_invocation}


# The durations JAX reports for tracing, lowering and compiling a function (jax.monitoring).
COMPILE_EVENTS = "/jax/core/compile/"

def format_duration(seconds: float) -> str:
  """H:MM:SS."""
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class CompileClock:
  """Seconds JAX spent compiling while `with` it is active (jax.monitoring duration events): the
  loop subtracts them from the step rates. `seconds` only grows."""

  def __init__(self):
    self.seconds = 0.0

  def _listen(self, event: str, duration: float, **_) -> None:
    if event.startswith(COMPILE_EVENTS):
      self.seconds += duration

  def __enter__(self) -> "CompileClock":
    jax.monitoring.register_event_duration_secs_listener(self._listen)
    return self

  def __exit__(self, *exc) -> None:
    jax.monitoring.unregister_event_duration_listener(self._listen)


def compile_kind(segment: Segment) -> tuple[str, bool]:
  """What decides whether a segment's steps compile anew: its name, and for the plans with tasks
  whether it is past the first task (the class-incremental steps of task 1 distil, those of task
  0 do not: other functions). The first block of each kind in a process compiles."""
  return segment.name, segment.task > 0
