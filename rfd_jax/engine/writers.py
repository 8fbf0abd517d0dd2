"""Run outputs: metrics.jsonl, TensorBoard event files and JSON files in the workdir."""

from __future__ import annotations

import json
import math
import numbers
import os
from typing import Any

import numpy as np


def _jsonable(value: Any) -> Any:
  """JSON-safe scalars: numpy scalars/0-d arrays to Python, non-finite floats to None."""
  if isinstance(value, np.ndarray) and value.ndim == 0:
    value = value.item()
  if isinstance(value, (np.floating, float)):
    value = float(value)
    return value if math.isfinite(value) else None
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, np.ndarray):
    return value.tolist()
  return value


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` as indented JSON atomically (temp file + rename)."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, default=_jsonable)
    f.write("\n")
  os.replace(tmp, path)


def flatten_config(tree: dict[str, Any], prefix: str = "", *,
                   json_values: bool = False) -> dict[str, Any]:
  """{"optim": {"lr": 0.1}} → {"optim.lr": 0.1}.

  Leaf values: with json_values, as after a JSON round trip (tuples become lists, None stays None,
  other objects their str()), to compare a config with one read back from JSON; otherwise
  bool/int/float/str, anything else (tuples, None) its str(), as TensorBoard's hparams plugin takes
  only those types.
  """
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      flat.update(flatten_config(value, prefix=f"{name}.", json_values=json_values))
    elif json_values:
      flat[name] = json.loads(json.dumps(value, default=str))
    elif isinstance(value, (bool, int, float, str)):
      flat[name] = value
    else:
      flat[name] = str(value)
  return flat


def is_tensorboard_scalar(name: str, value: Any) -> bool:
  """Whether a metric goes to TensorBoard: real numbers named "<phase>/<name>" (train/loss_ce,
  inversion/loss_bn, eval/acc_seen). Unprefixed bookkeeping (task, epoch, iteration, phase)
  stays in metrics.jsonl only."""
  if "/" not in name or isinstance(value, (bool, np.bool_, str)):
    return False
  if isinstance(value, np.ndarray):
    return value.ndim == 0 and np.issubdtype(value.dtype, np.number)
  return isinstance(value, numbers.Real)


def _keep_first_lines(path: str, keep: int | None) -> int:
  """Cuts the file at `path` (if any) to its first `keep` complete lines (all if None), by writing
  them to a temporary file renamed over it; returns the number of lines kept."""
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    lines = f.read().split("\n")
  complete, partial = lines[:-1], lines[-1]  # a killed writer may leave a partial last line
  if not partial and (keep is None or len(complete) <= keep):
    return len(complete)
  kept = complete[:keep] if keep is not None else complete
  write_text(path, "".join(line + "\n" for line in kept))
  return len(kept)


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` atomically (temp file + rename)."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


class MetricWriter:
  """Writes each log step to WORKDIR/metrics.jsonl (one JSON object per line) and, as scalars, to
  TensorBoard event files in WORKDIR (tensorboardX: no TensorFlow needed).

  Only the writer with `enabled` (process 0) touches the workdir. `hparams` (a nested config dict)
  is written once, to TensorBoard's hparams dashboard, with the eval metrics as its metrics.

  `keep_records`: a resumed run passes the number of records of the state it resumed from (a
  checkpoint records `records`); the lines after them, written by an invocation that was stopped
  past that checkpoint and about to be written again, are dropped (atomically) so that each record
  is in metrics.jsonl once. None appends to the file as it is. TensorBoard needs no such care: it
  drops a tag's points from the step where that tag's steps go back (purge_orphaned_data).
  """

  HPARAM_METRICS = ("eval/acc_seen", "eval/old_acc", "eval/new_acc")

  def __init__(self, workdir: str, *, enabled: bool = True,
               hparams: dict[str, Any] | None = None, keep_records: int | None = None):
    self._file, self._tb = None, None
    self.records = 0  # lines in metrics.jsonl
    if not enabled:
      return
    path = os.path.join(workdir, "metrics.jsonl")
    self.records = _keep_first_lines(path, keep_records)
    self._file = open(path, "a")
    # Imported here: processes other than 0 never need it.
    import tensorboardX  # pylint: disable=g-import-not-at-top
    self._tb = tensorboardX.SummaryWriter(logdir=workdir, flush_secs=30)
    if hparams is not None:
      self.write_hparams(hparams)

  def write_hparams(self, hparams: dict[str, Any]) -> None:
    """Records the run's (nested) config for TensorBoard's hparams dashboard."""
    if self._tb is None:
      return
    from tensorboardX.summary import hparams as hparams_summary  # pylint: disable=g-import-not-at-top
    metric_names = {name: 0.0 for name in self.HPARAM_METRICS}  # names only; values come later
    for summary in hparams_summary(flatten_config(hparams), metric_names):
      self._tb.file_writer.add_summary(summary)
    self._tb.flush()

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if self._file is None:
      return
    record = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    self.records += 1
    for name, value in metrics.items():
      if is_tensorboard_scalar(name, value):
        self._tb.add_scalar(name, float(value), global_step=int(step))
    self._tb.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


class RunWriters:
  """One MetricWriter per run of a job with a run axis (its records' (R,) values split by run,
  the other values written to every run), in the order of the run axis."""

  def __init__(self, runs: list[MetricWriter]):
    self.runs = runs

  @property
  def records(self) -> list[int]:
    """Each run's metrics.jsonl lines so far (what a checkpoint keeps)."""
    return [w.records for w in self.runs]

  def write(self, step: int, record: dict[str, Any]) -> None:
    for r, w in enumerate(self.runs):
      w.write(step, {k: (float(v[r]) if isinstance(v, np.ndarray) else v)
                     for k, v in record.items()})

  def close(self) -> None:
    for w in self.runs:
      w.close()
