"""SIGTERM / SIGINT as a request to stop at the next step boundary (the loop then saves a
checkpoint and exits with checkpointing.EXIT_PREEMPTED)."""

from __future__ import annotations

import contextlib
import signal
import threading

from absl import logging
import jax
import numpy as np


class StopSignals:
  """Turns SIGTERM / SIGINT into a request to stop after the current step (a second SIGINT
  interrupts at once). A context manager: installs its handlers on entry (main thread only) and
  restores the previous ones on exit.

  In a multi-process run the processes must stop at the same step to save together, so there a
  request only counts at `sync` points (log steps, epoch and segment ends), where the processes
  agree by an all-gather. Orbax's own agreement (`CheckpointManager.reached_preemption`, JAX's
  preemption sync manager) was considered: it needs `jax.distributed`'s preemption service, which
  installs its own SIGTERM handler, does not cover SIGINT or single-process runs, and must be
  called at every step; one all-gather per log interval does the same job for every launch here.
  """

  def __init__(self):
    self.received: str | None = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.received == "SIGINT" and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.received = name
    logging.warning("received %s: finishing the current step, then saving a checkpoint and "
                    "stopping", name)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def requested(self, *, sync: bool) -> bool:
    """Whether to stop now. `sync`: every process is at the same point and may all-gather."""
    if jax.process_count() == 1:
      return self.received is not None
    if not sync:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    flags = multihost_utils.process_allgather(np.int32(self.received is not None))
    if np.any(flags) and self.received is None:
      self.received = "a signal on another process"
    return bool(np.any(flags))


@contextlib.contextmanager
def no_stop_signals():
  """A StopSignals stand-in that never requests a stop (checkpointing disabled)."""
  class _Never:
    received = None
    def requested(self, *, sync: bool) -> bool:
      del sync
      return False
  yield _Never()
