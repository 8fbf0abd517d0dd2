"""Checkpoints and the resume policy: one Orbax CheckpointManager in WORKDIR/checkpoints.

A checkpoint is everything the run needs to continue exactly where it stood: the arrays (e.g. the
student TrainState, class weights, frozen teacher, generator and its Adam state) and a JSON record
(the global step, the results so far, the config). It is keyed by the run's global step (see
rfd_jax.engine.plan): checkpoints/<step>. RNG keys and data shuffles are pure functions of (config.seed,
step) and are not stored. The last `keep` checkpoints are kept, and in addition the `keep_steps`
ones for good (the end of every task, so that `config.init_from=<workdir>/checkpoints/<step>` can
branch after any task).

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a crash
mid-save leaves the previous checkpoints intact; `restore` also falls back from an unreadable
newest checkpoint to older ones, newest first, and refuses (UnreadableCheckpointsError) a workdir
whose checkpoints are all unreadable rather than start from scratch and rotate them away.
"""

from __future__ import annotations

import dataclasses
import gc
import logging as std_logging
import os
import sys
import time
from typing import Any

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from rfd_jax.engine import errors, saved_config

# Exit codes of rfd_jax.main beyond 0 (done) and 2 (config error, including a refused resume).
EXIT_NON_FINITE = 3  # a loss (or the parameters) became NaN/inf; the last good checkpoint is kept
EXIT_PREEMPTED = 75  # SIGTERM/SIGINT: a checkpoint was saved; rerun the same command to resume
                     # (75 = EX_TEMPFAIL of sysexits.h: "temporary failure, retry later")

class Preempted(Exception):
  """The run stopped on SIGTERM/SIGINT after saving a checkpoint."""


class NonFiniteError(Exception):
  """A loss term or the parameters became non-finite; nothing was saved after the last check."""


class UnreadableCheckpointsError(errors.ConfigError):
  """The workdir holds checkpoints but none can be read: resuming is impossible, and starting from
  scratch there would let the checkpoint rotation delete them, so the run refuses."""


@dataclasses.dataclass
class Restored:
  """A checkpoint read back: its step and directory, the arrays and the JSON record."""
  checkpoint_id: int
  directory: str
  arrays: dict[str, Any]
  meta: dict[str, Any]


# Orbax warns this whenever a CheckpointManager is opened read-only, which the resume does on
# purpose (it reads the workdir's and config.init_from's checkpoints and must not clean them).
ORBAX_READ_ONLY_WARNING = "Given directory is read only=%s"


def _quiet_orbax_info_logs() -> None:
  """Orbax logs a dozen INFO lines per save through absl; keep its warnings and errors only, but
  the warning that a manager opened read-only (on purpose) is read-only."""
  absl_logger = logging.get_absl_logger()
  if not any(getattr(f, "is_orbax_filter", False) for f in absl_logger.filters):
    def orbax_filter(record):
      if f"{os.sep}orbax{os.sep}" not in record.pathname:
        return True
      return (record.levelno >= logging.converter.STANDARD_WARNING
              and record.msg != ORBAX_READ_ONLY_WARNING)
    orbax_filter.is_orbax_filter = True
    absl_logger.addFilter(orbax_filter)


def _first_line(error: Exception) -> str:
  """The root cause's type and first line: Orbax wraps TensorStore's OUT_OF_RANGE / DATA_LOSS
  errors, which name the array and the file, in a generic "Encountered error while reading"."""
  while error.__cause__ is not None:
    error = error.__cause__
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0][:300] if text else ''}"


def _quiet_read(read) -> tuple[Any, str | None]:
  """(read(), None), or (None, why in one line) if it raised, without the flood a failed Orbax
  read leaves behind.

  Orbax reads every array in asyncio tasks on a fresh event loop, and on the first error closes
  that loop with the other reads still pending (asyncio_utils._run_sync_via_new_loop). Each orphan
  then reports itself once it finishes or is garbage-collected: "Task exception was never
  retrieved" / "Task was destroyed but it is pending!" through the `asyncio` logger, TensorStore's
  completion callback failing with "RuntimeError: Event loop is closed" and Orbax's coroutine
  re-raising on close ("Exception ignored in ...") through sys.unraisablehook; each with a
  traceback and the array's whole TensorStore spec (tens of thousands of lines for a model).
  Those are consequences of the one error reported here, so they are silenced while the read runs
  and while its orphans drain (their reads finish within milliseconds on a local disk; at most 5 s
  is waited), then the hooks are put back.
  """
  silenced = []  # monotonic times of the silenced reports
  def silence(record):
    del record
    silenced.append(time.monotonic())
    return False
  asyncio_logger = std_logging.getLogger("asyncio")
  asyncio_logger.addFilter(silence)
  previous_hook = sys.unraisablehook
  sys.unraisablehook = silence
  try:
    try:
      return read(), None
    except Exception as e:  # pylint: disable=broad-except
      why = _first_line(e)
    # `e` and its traceback, which hold the orphaned tasks, are released here
    start = time.monotonic()
    while time.monotonic() - start < 5.0:
      gc.collect()
      time.sleep(0.05)
      last = max(silenced, default=start)
      if time.monotonic() - last > 0.25 and time.monotonic() - start > 0.25:
        break
    return None, why
  finally:
    sys.unraisablehook = previous_hook
    asyncio_logger.removeFilter(silence)


class Checkpoints:
  """The run's checkpoints in `directory`: asynchronous saves keeping the last `keep`, and
  fault-tolerant restore. Every process must make the same calls (Orbax coordinates the writes;
  only process 0 writes replicated arrays and the JSON record)."""

  def __init__(self, directory: str, *, keep: int, keep_steps=(), read_only: bool = False):
    self.directory = os.path.abspath(directory)
    self._read_only = read_only
    _quiet_orbax_info_logs()
    preservation = ocp.checkpoint_managers
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            preservation_policy=preservation.AnyPreservationPolicy(
                [preservation.LatestN(keep), preservation.CustomSteps(list(keep_steps))]),
            create=not read_only, read_only=read_only,
            # a read-only manager saves nothing: 0 up front, or Orbax warns that it sets it
            save_interval_steps=0 if read_only else 1,
            cleanup_tmp_directories=not read_only, enable_async_checkpointing=True))

  def all_ids(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, arrays: dict[str, Any], meta: dict[str, Any]) -> None:
    """Starts writing the checkpoint of global step `step`. Blocks only until the arrays are
    copied to the host (they may then be donated), and until the previous save has finished. An
    unreadable checkpoint already at `step` (a resume fell back past it) is first moved aside to
    unreadable/<step>, not deleted."""
    if step in self._manager.all_steps():
      self._manager.wait_until_finished()
      aside = os.path.join(self.directory, "unreadable")
      os.makedirs(aside, exist_ok=True)
      target = os.path.join(aside, f"{step}.{int(time.time())}")
      os.rename(os.path.join(self.directory, str(step)), target)
      self._manager.reload()
      logging.warning("moved the unreadable checkpoint %d aside to %s", step, target)
    self._manager.save(step, force=True, args=ocp.args.Composite(
        arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)))

  def read_meta(self, checkpoint_id: int) -> dict[str, Any]:
    return self._manager.restore(
        checkpoint_id, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def read_arrays(self, checkpoint_id: int, abstract: dict[str, Any]) -> dict[str, Any]:
    return self._manager.restore(
        checkpoint_id, args=ocp.args.Composite(arrays=ocp.args.StandardRestore(abstract)))["arrays"]

  def restore(self, abstract_arrays, *, check_meta=None, only_id: int | None = None,
              refuse_unreadable: bool | None = None) -> Restored | None:
    """The newest readable checkpoint (or checkpoint `only_id`), or None if there is none.

    abstract_arrays(meta) → the abstract (jax.ShapeDtypeStruct) tree of the arrays recorded in
    `meta`. check_meta(meta) may raise (e.g. ConfigMismatchError) to refuse a checkpoint; that
    error propagates. A checkpoint that cannot be read is reported and the next older one tried.
    Raises UnreadableCheckpointsError when the directory holds checkpoints and none is readable
    (`refuse_unreadable`, by default unless `read_only` or `only_id`, where the caller reports it):
    None means no checkpoint at all.
    """
    ids = self.all_ids() if only_id is None else [only_id]
    unreadable = []  # (checkpoint id, why) of the checkpoints tried and failed
    for position, checkpoint_id in enumerate(reversed(ids)):
      older = ids[:len(ids) - position - 1]
      meta, why = _quiet_read(lambda: self.read_meta(checkpoint_id))
      if why is None:
        if check_meta is not None:
          check_meta(meta)
        arrays, why = _quiet_read(lambda: self.read_arrays(checkpoint_id, abstract_arrays(meta)))
      if why is not None:
        unreadable.append((checkpoint_id, why))
        self._report_unreadable(checkpoint_id, why, older)
        continue
      return Restored(checkpoint_id, os.path.join(self.directory, str(checkpoint_id)), arrays,
                      meta)
    if refuse_unreadable is None:
      refuse_unreadable = only_id is None and not self._read_only
    if unreadable and refuse_unreadable:
      # Starting from scratch here would save new checkpoints whose rotation (`keep`) deletes
      # these: a user's checkpoints are never deleted without being asked.
      # One short line first (what, that nothing was deleted, what to do), then one per checkpoint.
      raise UnreadableCheckpointsError(
          f"every checkpoint in {self.directory} is unreadable; nothing was deleted. Pass a new "
          f"--workdir to start afresh (or move or delete {self.directory} yourself).\n"
          + "\n".join(f"checkpoint {i}: {why}" for i, why in sorted(unreadable)))
    return None

  def _report_unreadable(self, checkpoint_id: int, why: str, older: list[int]) -> None:
    logging.error("checkpoint %s/%d is corrupted or incomplete (%s); %s", self.directory,
                  checkpoint_id, why,
                  f"falling back to checkpoint {older[-1]}" if older else "no older checkpoint")

  def wait(self) -> None:
    """Blocks until the last save is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def locate(path: str) -> tuple[str, int | None]:
  """`config.init_from` → (checkpoints directory, checkpoint id or None for its newest).

  Accepts a run's workdir, its checkpoints directory, or one checkpoint (checkpoints/<id>).
  """
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return os.path.join(path, "checkpoints"), None
  if os.path.basename(path).isdigit() and os.path.isdir(path):
    return os.path.dirname(path), int(os.path.basename(path))
  if os.path.isdir(path):
    return path, None
  raise errors.ConfigError(
      f"config.init_from={path!r} does not exist; expected a run's workdir, its checkpoints "
      "directory or one checkpoint in it.")


def abstract_like(tree: Any, sharding) -> Any:
  """jax.ShapeDtypeStruct leaves with `sharding`, the restore target of arrays shaped as `tree`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding),
                      tree)


@dataclasses.dataclass
class Resume:
  """Where a run starts: the checkpoint restored (None: from scratch) and what follows from it."""
  restored: Restored | None
  from_workdir: bool  # False: config.init_from (another run's checkpoint) or scratch
  enabled: bool  # config.ckpt.enabled

  @property
  def step(self) -> int:
    """The global step to continue from."""
    return self.restored.meta["step"] if self.restored is not None else 0

  @property
  def meta(self) -> dict[str, Any]:
    return self.restored.meta if self.restored is not None else {}

  @property
  def metrics_records(self) -> int | None:
    """The metrics.jsonl lines to keep (writers.MetricWriter): those of the state resumed; none
    from another workdir or from scratch; the whole file (None) when checkpointing is off."""
    if self.restored is not None:
      return self.meta.get("metrics_records") if self.from_workdir else 0
    return 0 if self.enabled else None


@dataclasses.dataclass(frozen=True)
class ResumeSettings:
  """What the resume policy reads of a config (a job builds it: rfd_jax.jobs.settings)."""
  enabled: bool  # config.ckpt.enabled
  init_from: str  # config.init_from ("" none)
  allow_config_change: bool  # config.ckpt.allow_config_change
  config_dict: dict  # saved_config.config_dict(config): compared with a checkpoint's


def resume(settings: ResumeSettings, workdir: str, abstract_arrays, *,
           check_meta=None) -> Resume:
  """The latest readable checkpoint in WORKDIR/checkpoints, else settings.init_from's (if set),
  else none. abstract_arrays(meta) → the restore targets of the arrays listed in meta["arrays"].
  check_meta(meta, source) may refuse a checkpoint the job cannot continue (ConfigError).

  Raises:
    ConfigMismatchError: the checkpoint's config differs in fields that change the result (unless
      settings.allow_config_change).
    UnreadableCheckpointsError: the workdir's checkpoints are all unreadable.
    errors.ConfigError: settings.init_from holds no readable checkpoint; check_meta's refusal.
  """
  current = settings.config_dict

  def checker(source):
    def check(meta):
      if "step" not in meta:
        raise errors.ConfigError(
            f"{source} holds checkpoints of an older rfd_jax (before checkpoints were keyed by the "
            "run's global step), which this version cannot continue. Nothing was deleted; pass a "
            "new --workdir to start afresh.")
      if check_meta is not None:
        check_meta(meta, source)
      saved_config.check_config(meta["config"], current,
                                allow_change=settings.allow_config_change, source=source)
    return check

  enabled = settings.enabled
  directory = os.path.join(workdir, "checkpoints")
  if enabled and os.path.isdir(directory):
    own = Checkpoints(directory, keep=1, read_only=True)
    try:  # an all-unreadable workdir is refused, not started over
      restored = own.restore(abstract_arrays, check_meta=checker(own.directory),
                             refuse_unreadable=True)
    finally:
      own.close()
    if restored is not None:
      logging.info("resuming from checkpoint %s", restored.directory)
      return Resume(restored, True, enabled)
  init_from = settings.init_from
  if init_from:
    directory, only_id = locate(init_from)
    source = Checkpoints(directory, keep=1, read_only=True)
    try:
      restored = source.restore(abstract_arrays, check_meta=checker(init_from), only_id=only_id)
    finally:
      source.close()
    if restored is None:
      raise errors.ConfigError(
          f"config.init_from={init_from!r} holds no readable checkpoint.")
    logging.info("initialising from config.init_from: checkpoint %s", restored.directory)
    return Resume(restored, False, enabled)
  logging.info("no checkpoint in %s%s: starting from scratch", directory,
               "" if enabled else " (config.ckpt.enabled=False)")
  return Resume(None, False, enabled)
