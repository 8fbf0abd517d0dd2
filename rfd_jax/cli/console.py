"""How log lines look on the console: compact (`HH:MM:SS message`) on a terminal, absl's full
format (`I1207 07:57:44.625252 140643037346688 train.py:211] message`) where the log is kept in a
file (stderr redirected, `--log_dir`), so that a file log still says where each line came from.
"""

from __future__ import annotations

import logging as std_logging
import sys
import time

from absl import logging

FORMATS = ("auto", "compact", "full")
_LEVEL_WORDS = {std_logging.WARNING: "warning: ", std_logging.ERROR: "error: ",
                std_logging.CRITICAL: "fatal: "}


class CompactFormatter(std_logging.Formatter):
  """`HH:MM:SS message`; warnings and errors say so after the time."""

  def format(self, record: std_logging.LogRecord) -> str:
    clock = time.strftime("%H:%M:%S", time.localtime(record.created))
    level = _LEVEL_WORDS.get(record.levelno, "")
    return f"{clock} {level}{record.getMessage()}"


def wants_compact(log_format: str, stream) -> bool:
  """Whether the console gets the compact format: "compact", or "auto" and `stream` is a terminal
  (not a file or a pipe that keeps the log)."""
  if log_format == "auto":
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
  return log_format == "compact"


def set_console_format(log_format: str = "auto") -> bool:
  """Gives absl's stderr handler the compact format when `wants_compact` says so and absl logs to
  no file of its own (`--log_dir`: that file keeps the full format). Returns whether it did."""
  handler = logging.get_absl_handler().python_handler
  if handler.stream is not sys.stderr or not wants_compact(log_format, sys.stderr):
    return False
  handler.setFormatter(CompactFormatter())
  return True
