"""Run outputs: the metrics.jsonl stream and JSON files in the workdir."""

from __future__ import annotations

import json
import math
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


class MetricWriter:
  """Appends one JSON object per log step to WORKDIR/metrics.jsonl."""

  def __init__(self, workdir: str, *, enabled: bool = True):
    self._file = open(os.path.join(workdir, "metrics.jsonl"), "a") if enabled else None

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if self._file is None:
      return
    record = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
