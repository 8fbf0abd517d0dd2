"""A finished run: rerunning its command prints its results and changes nothing.

A run is finished when its workdir holds the results.json the end of the run writes (every run's,
for a group) and a config.json whose config differs from the current one in harmless fields at
most (saved_config.config_differences). Any other difference goes the usual way: a resume, which
refuses a config that changes the result.
"""

from __future__ import annotations

import json
import os
from typing import Any

from rfd_jax.engine import saved_config


def _read_json(path: str) -> Any | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def finished_results(config, workdir: str, job: str) -> dict | None:
  """The results of the finished run of `config` in `workdir` (for a group: {run name: results}),
  or None if it has not finished there. Reads only."""
  saved = _read_json(os.path.join(workdir, "config.json"))
  if not isinstance(saved, dict):
    return None
  relevant, _ = saved_config.config_differences(saved, saved_config.config_dict(config))
  if relevant:
    return None
  if job == "group":
    from rfd_jax.jobs import group  # pylint: disable=g-import-not-at-top  (JAX models, only here)
    results = {m.name: _read_json(os.path.join(group.member_dir(workdir, config, m),
                                               "results.json"))
               for m in group.members(config)}
    return results if all(isinstance(r, dict) for r in results.values()) else None
  results = _read_json(os.path.join(workdir, "results.json"))
  return results if isinstance(results, dict) else None
