"""The run layout of a sweep: `--methods` entries, runs (label, order, seed) and their directories.

Run (label, order, seed) lives in `WORKDIR/<label>/<order>` (`<order>-s<seed>` for seeds other than
0) and has finished when it holds a results.json; `discover_runs` finds those, `load_results` reads
one and checks that it is the run the sweep expects.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import json
import os
import re
import sys

from rfd_jax.methods import tasks

RESERVED = {"data.class_order": "--orders", "seed": "--seeds"}
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class SweepError(ValueError):
  """A bad sweep argument, run directory or output file."""


@dataclasses.dataclass(frozen=True)
class MethodEntry:
  """One `--methods` entry: a label (its sub-directory and table row) and its config overrides."""
  label: str
  overrides: tuple[tuple[str, str], ...]  # (config field, value), method first

  @property
  def method(self) -> str:
    return dict(self.overrides)["method"]

  @property
  def settings(self) -> str:
    """The overrides as shown in the table: empty for a bare label."""
    if self.overrides == (("method", self.label),):
      return ""
    return " ".join(f"{k}={v}" for k, v in self.overrides)


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of the sweep."""
  entry: MethodEntry
  order: str
  seed: int
  workdir: str

  def command(self, config: str, common: Sequence[tuple[str, str]]) -> list[str]:
    """The rfd_jax.main command line: method, order, seed, then `--set`, then the entry's
    overrides (later ones win)."""
    overrides = [("method", self.entry.method), ("data.class_order", self.order),
                 ("seed", str(self.seed)), *common,
                 *[(k, v) for k, v in self.entry.overrides if k != "method"]]
    return [sys.executable, "-m", "rfd_jax.main", "--config", config, "--workdir", self.workdir,
            *[f"--config.{k}={v}" for k, v in overrides]]


split_list = tasks.split_list  # commas outside brackets: "a,b:optim.milestones=(1,2)"


def parse_override(text: str, *, where: str) -> tuple[str, str]:
  """"optim.lr=0.05" → ("optim.lr", "0.05"); a leading "config." is dropped."""
  key, sep, value = text.partition("=")
  key = key.strip().removeprefix("config.")
  if not sep or not _KEY.fullmatch(key):
    raise SweepError(f"{where}: {text!r} is not key=value (e.g. optim.lr=0.05).")
  return key, value.strip()


def parse_method_entry(text: str) -> MethodEntry:
  """`label[:key=value[:key=value ...]]` → MethodEntry; method=label unless overridden."""
  label, *parts = text.split(":")
  if not _LABEL.fullmatch(label):
    raise SweepError(f"--methods: label {label!r} must be letters, digits, '.', '_', '+', '-'.")
  overrides = dict(parse_override(p, where=f"--methods entry {text!r}") for p in parts)
  for key, flag in RESERVED.items():
    if key in overrides:
      raise SweepError(f"--methods entry {text!r}: set {key} with {flag}, not per method.")
  method = overrides.pop("method", label)
  return MethodEntry(label, (("method", method), *overrides.items()))


def run_dir(workdir: str, label: str, order: str, seed: int) -> str:
  """WORKDIR/<label>/<order>, with -s<seed> appended for seeds other than 0."""
  return os.path.join(workdir, label, tasks.run_name(order, seed))


def plan_runs(workdir: str, entries: Sequence[MethodEntry], orders: Sequence[str],
              seeds: Sequence[int]) -> list[Run]:
  return [Run(entry, order, seed, run_dir(workdir, entry.label, order, seed))
          for entry in entries for order in orders for seed in seeds]


def discover_runs(workdir: str) -> list[Run]:
  """Every `<label>/<run>/results.json` under workdir, as runs (for --summarize_only)."""
  runs = []
  for label in sorted(os.listdir(workdir)):
    for name in sorted(os.listdir(os.path.join(workdir, label))
                       if os.path.isdir(os.path.join(workdir, label)) else []):
      sub = os.path.join(workdir, label, name)
      if os.path.isfile(os.path.join(sub, "results.json")):
        with open(os.path.join(sub, "results.json")) as f:
          results = json.load(f)
        with_seed = re.fullmatch(r"(.+)-s([0-9]+)", name)
        order, seed = with_seed.groups() if with_seed else (name, "")
        entry = MethodEntry(label, (("method", results["method"]),))
        runs.append(Run(entry, order, int(seed or results.get("seed", 0)), sub))
  return runs


def load_results(run: Run) -> dict | None:
  """The run's results.json, or None if it has none. SweepError if it belongs to another
  method, seed or class order than the sweep expects (a stray run in the layout)."""
  path = os.path.join(run.workdir, "results.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    results = json.load(f)
  found = (results.get("method"), results.get("seed"))
  if found != (run.entry.method, run.seed):
    raise SweepError(f"{path} is a run of method={found[0]} seed={found[1]}, not the expected "
                     f"method={run.entry.method} seed={run.seed}.")
  order = results.get("class_order", [])
  try:
    expected = tasks.class_order(run.order, len(order))
  except ValueError:
    expected = order  # not a name the sweep can check
  if order != expected:
    raise SweepError(f"{path} has class order {order}, not {run.order}'s {expected}.")
  return results
