"""Which runs a class-incremental job steps together: every combination of
config.runs.class_orders and config.runs.seeds (a group), or the config's own run.

  python -m rfd_jax.main --config configs/digits.py --config.runs.class_orders=seed0,seed1,seed2

config.runs.class_orders is a list of class orders as `sweep --orders` takes it (tasks.order_list):
names, ranges (`seed0-seed9`) and explicit orders in brackets (`[1,0,3,2,...]`).

The job (rfd_jax.jobs.dfcil) carries a leading run axis on every array (R = 1 for a plain run):
the runs share the plan, the jitted functions (vmapped over the runs when R > 1: one call steps
every run) and the device-resident images; each has its own class order (labels, task data,
batches) and seed (keys, batch order), and its own model, optimizer, teacher and generator. A
group's run axis is split over the devices of the mesh (a multiple of the device count of runs),
each run's batches are whole on its device: the alternative to data parallelism for small
networks (launch/README.md).

Layout of a group, that of rfd_jax.tools.sweep (so its --summarize_only and `report` read it):
  WORKDIR/config.json                       the group's config
  WORKDIR/checkpoints/<step>                the stacked state of every run, one global step
  WORKDIR/<method>/<order>[-s<seed>]/       per run: config.json (the single run's config),
                                            metrics.jsonl, results.json, PNGs
A plain run writes those files in WORKDIR itself.
A run of a group of several computes what the single run of its order and seed computes, in
another float rounding: vmapped convolutions are batched differently (parameters ~1e-8 apart
after a few steps), so long runs drift apart as any two roundings of this training do (README
"Protocol"). A group of one runs the single run's functions: the same numbers bit for bit.
Restrictions of a group: in-memory datasets (device-resident data), one process, and the class
orders must give every task the same number of batches per epoch (one plan for the group).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from rfd_jax.engine import errors
from rfd_jax.methods import tasks
from rfd_jax.data import datasets


def is_group(config) -> bool:
  """Whether config.runs lists class orders or seeds (per-run folders, the group's checks)."""
  runs = config.get("runs")
  return bool(runs is not None and (runs.class_orders or runs.seeds))


@dataclasses.dataclass(frozen=True)
class Member:
  """One run: its directory name, its single-run config and task split."""
  name: str
  config: Any
  spec: tasks.TaskSpec


def task_spec(data_config) -> tasks.TaskSpec:
  """The run's class order and task split (config.data); ConfigError names a bad order or split."""
  try:
    return tasks.make_task_spec(
        num_classes=datasets.dataset_info(data_config.dataset).num_classes,
        num_tasks=data_config.num_tasks, order=data_config.class_order,
        split=data_config.task_split)
  except ValueError as e:
    raise errors.ConfigError(str(e)) from None


def _split(text: str) -> list[str]:
  return [t.strip() for t in str(text).split(",") if t.strip()]


def members(config) -> list[Member]:
  """The job's runs: for a group every (class order, seed) of config.runs (an empty list there:
  the config's own), each validated; else the config's own run (its config unchanged). Raises
  ConfigError naming the field."""
  if not is_group(config):
    return [Member(tasks.run_name(config.data.class_order, config.seed), config,
                   task_spec(config.data))]
  try:
    orders = (tasks.order_list(config.runs.class_orders, where="config.runs.class_orders")
              if _split(config.runs.class_orders) else [config.data.class_order])
  except ValueError as e:
    raise errors.ConfigError(str(e)) from None
  try:
    seeds = [int(s) for s in _split(config.runs.seeds)] or [int(config.seed)]
  except ValueError:
    raise errors.ConfigError(
        f"config.runs.seeds={config.runs.seeds!r}: expected comma-separated integers, e.g. "
        "0,1,2.") from None
  for field, values in (("class_orders", orders), ("seeds", seeds)):
    if len(set(values)) != len(values):
      raise errors.ConfigError(f"config.runs.{field} lists a value twice: {values}.")
  out = []
  for order in orders:
    for seed in seeds:
      member = config.copy_and_resolve_references()
      member.data.class_order, member.seed = order, seed
      member.runs.class_orders, member.runs.seeds = "", ""
      out.append(Member(tasks.run_name(order, seed), member, task_spec(member.data)))
  return out


def check(config, group: list[Member], num_devices: int, *, num_processes: int = 1) -> None:
  """A group's restrictions (nothing for a plain run): ConfigError, one line each."""
  if not is_group(config):
    return
  if num_processes > 1:
    raise errors.ConfigError(
        "config.runs: a group of runs runs in one process; start one process per group.")
  if len(group) % num_devices:
    raise errors.ConfigError(
        f"config.runs: {len(group)} runs on {num_devices} devices: the runs are split over "
        f"the devices; use a multiple of {num_devices} runs, or fewer devices "
        "(CUDA_VISIBLE_DEVICES).")
  if not config.data.get("device_resident", True):
    raise errors.ConfigError(
        "config.runs: a group of runs needs config.data.device_resident=True.")
  sizes = {tuple(m.spec.sizes) for m in group}
  if len(sizes) > 1:
    raise errors.ConfigError(f"config.runs: the runs' task sizes differ: {sizes}.")


def member_dir(workdir: str, config, member: Member) -> str:
  """Where a run of a group writes its files."""
  return os.path.join(workdir, config.method, member.name)


def run_dirs(workdir: str, config, group: list[Member]) -> list[str]:
  """Each run's output folder: WORKDIR itself for a plain run, member_dir in a group."""
  if not is_group(config):
    return [workdir]
  return [member_dir(workdir, config, m) for m in group]
