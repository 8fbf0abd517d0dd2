"""The console's log format: compact on a terminal, absl's full prefix where the log is a file."""

import io
import logging as std_logging
import sys

from absl import logging
import pytest

from rfd_jax.cli import console


def _record(level, message):
  return std_logging.LogRecord("absl", level, "/x/train.py", 211, message, (), None)


def test_compact_format():
  formatter = console.CompactFormatter()
  line = formatter.format(_record(std_logging.INFO, "task 1/5 main     epoch   1/16  loss 0.6963"))
  assert line[8:] == " task 1/5 main     epoch   1/16  loss 0.6963" and line[2] == line[5] == ":"
  assert formatter.format(_record(std_logging.WARNING, "moved")).endswith(" warning: moved")


class _Terminal(io.StringIO):
  def isatty(self):
    return True


@pytest.mark.parametrize("log_format, stream, compact", [
    ("auto", _Terminal(), True), ("auto", io.StringIO(), False), ("compact", io.StringIO(), True),
    ("full", _Terminal(), False)])
def test_wants_compact(log_format, stream, compact):
  assert console.wants_compact(log_format, stream) is compact


def test_set_console_format_keeps_the_full_format_of_a_file_log(monkeypatch):
  handler = logging.get_absl_handler().python_handler
  terminal = _Terminal()
  monkeypatch.setattr(sys, "stderr", terminal)
  monkeypatch.setattr(handler, "stream", terminal)
  previous = handler.formatter
  try:
    assert console.set_console_format("auto")
    assert isinstance(handler.formatter, console.CompactFormatter)
    handler.setFormatter(previous)
    monkeypatch.setattr(handler, "stream", io.StringIO())  # absl logs to a file (--log_dir)
    assert not console.set_console_format("compact")
    assert handler.formatter is previous
  finally:
    handler.setFormatter(previous)
