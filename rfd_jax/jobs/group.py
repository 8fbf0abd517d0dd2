"""A group of class-incremental runs in one process: every combination of config.runs.class_orders
and config.runs.seeds, the runs stacked on a leading axis and stepped together (jax.vmap).

  python -m rfd_jax.main --config configs/digits.py --config.runs.class_orders=seed0,seed1,seed2

config.runs.class_orders is a list of class orders as `sweep --orders` takes it (tasks.order_list):
names, ranges (`seed0-seed9`) and explicit orders in brackets (`[1,0,3,2,...]`).

The runs share the plan, the jitted functions (vmapped: one call steps every run) and the
device-resident images; each has its own class order (labels, task data, batches) and seed (keys,
batch order), and its own model, optimizer, teacher and generator, stacked on axis 0. The run axis
is split over the devices of the mesh (a multiple of the device count of runs), each run's batches
are whole on its device: the alternative to data parallelism for small networks (launch/README.md).

Layout, that of rfd_jax.tools.sweep (so its --summarize_only and `report` read it):
  WORKDIR/config.json                       the group's config
  WORKDIR/checkpoints/<step>                the stacked state of every run, one global step
  WORKDIR/<method>/<order>[-s<seed>]/       per run: config.json (the single run's config),
                                            metrics.jsonl, results.json, PNGs
A run of the group computes what the single run of its order and seed computes, in another float
rounding: vmapped convolutions are batched differently (parameters ~1e-8 apart after a few steps),
so long runs drift apart as any two roundings of this training do (README "Protocol").
Restrictions: in-memory datasets (device-resident data), one process, and the class orders must
give every task the same number of batches per epoch (one plan for the group).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any

from absl import logging
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import optax

from rfd_jax.engine import checkpointing, errors, evaluation, optim, parallel, writers
from rfd_jax.jobs import dfcil_run, plots, steps, dfcil
from rfd_jax.methods import inversion, learners, metrics, tasks
from rfd_jax.data import datasets, sources
from rfd_jax.models.generator import generator_for
from rfd_jax.models.resnet import build_model
from rfd_jax.engine.state import create_train_state


def is_group(config) -> bool:
  runs = config.get("runs")
  return bool(runs is not None and (runs.class_orders or runs.seeds))


@dataclasses.dataclass(frozen=True)
class Member:
  """One run of a group: its directory name, its single-run config and task split."""
  name: str
  config: Any
  spec: tasks.TaskSpec


def _split(text: str) -> list[str]:
  return [t.strip() for t in str(text).split(",") if t.strip()]


def members(config) -> list[Member]:
  """The group's runs: every (class order, seed) of config.runs (an empty list: the config's own),
  each validated. Raises ConfigError naming the field."""
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
      out.append(Member(tasks.run_name(order, seed), member, dfcil_run.task_spec(member.data)))
  return out


def _stack(trees: list[Any]) -> Any:
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


@dataclasses.dataclass
class GroupRun(dfcil_run.Run):
  """dfcil_run.Run with a leading run axis: root_key (R,), train_data["labels"] (R, N); the
  per-run task data and test labels in `member_*`."""
  members: list[Member] = dataclasses.field(default_factory=list)
  member_task_indices: list[list[np.ndarray]] = dataclasses.field(default_factory=list)
  member_test_labels: list[np.ndarray] = dataclasses.field(default_factory=list)
  run_sharding: Any = None

  def place(self, tree: Any) -> Any:
    """Stacked host arrays onto the mesh, the run axis split over its devices."""
    return jax.device_put(tree, self.run_sharding)


def _check_group(config, group: list[Member], mesh) -> None:
  if jax.process_count() > 1:
    raise errors.ConfigError(
        "config.runs: a group of runs runs in one process; start one process per group.")
  if len(group) % mesh.devices.size:
    raise errors.ConfigError(
        f"config.runs: {len(group)} runs on {mesh.devices.size} devices: the runs are split over "
        f"the devices; use a multiple of {mesh.devices.size} runs, or fewer devices "
        "(CUDA_VISIBLE_DEVICES).")
  if not config.data.get("device_resident", True):
    raise errors.ConfigError(
        "config.runs: a group of runs needs config.data.device_resident=True.")
  sizes = {tuple(m.spec.sizes) for m in group}
  if len(sizes) > 1:
    raise errors.ConfigError(f"config.runs: the runs' task sizes differ: {sizes}.")


def load_group_run(config, workdir: str, group: list[Member], mesh) -> GroupRun:
  """Loads the data (once) and builds the group's run (`build_group_run`)."""
  return build_group_run(config, workdir, group, mesh, sources.load_dataset(config.data))


def build_group_run(config, workdir: str, group: list[Member], mesh, data: datasets.Dataset, *,
                    abstract: bool = False) -> GroupRun:
  """Each run's labels and task data, the shared plan and the vmapped functions for the mesh's
  platform. Raises ConfigError when the runs' tasks have different numbers of batches.
  abstract: shapes only, nothing placed (see dfcil_run.build_run)."""
  learner = learners.get_learner(config)
  if not isinstance(data.train_images, np.ndarray):
    raise errors.ConfigError(
        f"config.runs: {data.name} is decoded lazily from image files; a group of runs needs an "
        "in-memory dataset.")
  spec, batch_size = group[0].spec, config.data.batch_size
  train_labels = [m.spec.to_model_labels(data.train_labels).astype(np.int32) for m in group]
  test_labels = [m.spec.to_model_labels(data.test_labels).astype(np.int32) for m in group]
  indices = [[learner.train_indices(y, spec.offsets, t) for t in range(spec.num_tasks)]
             for y in train_labels]
  epoch_steps = [len(idx) // batch_size for idx in indices[0]]
  for m, idx in zip(group, indices):
    steps_m = [len(i) // batch_size for i in idx]
    if steps_m != epoch_steps:
      raise errors.ConfigError(
          f"config.runs: run {m.name} has {steps_m} batches per epoch per task, run "
          f"{group[0].name} {epoch_steps}: a group steps its runs together; run them separately "
          "(or choose a batch size that gives equal counts).")
    if min(steps_m) < 1:
      raise errors.ConfigError(
          f"config.data.batch_size={batch_size} exceeds the training images of a task of run "
          f"{m.name}; lower it.")
  logging.info("group of %d runs: %s; dataset %s, %d tasks of sizes %s", len(group),
               ", ".join(m.name for m in group), data.name, spec.num_tasks, list(spec.sizes))
  run_sharding = NamedSharding(mesh, P(parallel.DATA_AXIS))
  loop_kind = dfcil_run.train_loop(config, resident=True,
                                   platform=dfcil_run.mesh_platform(mesh))
  model = build_model(config.model, spec.sizes, dtype=config.dtype)
  generator = generator_for(config.data.image_size, config.dtype)
  tx = optim.momentum_transform(config.optim.momentum)
  root_key = jax.random.wrap_key_data(np.stack(
      [np.asarray(jax.random.key_data(jax.random.key(m.config.seed))) for m in group]))
  return GroupRun(
      config=config, workdir=workdir, spec=spec, mesh=mesh, learner=learner, model=model,
      generator=generator, tx=tx, gen_tx=optax.adam(config.inversion.lr), root_key=root_key,
      data=data, train_labels=None, test_labels=None, task_indices=None,
      plan=dfcil_run.make_plan(config, learner, epoch_steps, loop_kind),
      fns=steps.build_step_fns(config, learner, model, generator, tx, data, mesh, group=True),
      train_data={"images": dfcil_run.placed(data.train_images, parallel.replicated(mesh),
                                             abstract),
                  "labels": dfcil_run.placed(np.stack(train_labels), run_sharding, abstract)},
      members=group, member_task_indices=indices, member_test_labels=test_labels,
      run_sharding=run_sharding, abstract=abstract)


class GroupWriter:
  """One MetricWriter per run: a record's (R,) values are split by run, scalars go to all."""

  def __init__(self, writers_: list[writers.MetricWriter]):
    self.members = writers_

  @property
  def records(self) -> list[int]:
    return [w.records for w in self.members]

  def write(self, step: int, record: dict[str, Any]) -> None:
    for r, w in enumerate(self.members):
      w.write(step, {k: (float(v[r]) if isinstance(v, np.ndarray) else v)
                     for k, v in record.items()})

  def close(self) -> None:
    for w in self.members:
      w.close()


class GroupJob(dfcil.DfcilJob):
  """DfcilJob over a group: what differs per run (keys, batches, fresh states, evaluation, the
  records) with a leading run axis."""

  run: GroupRun

  def _key(self, data: int) -> jax.Array:
    return jax.vmap(lambda k: jax.random.fold_in(k, data))(self.run.root_key)

  def _place(self, tree: Any) -> Any:
    return self.run.place(tree)

  def _new_generator(self, task: int) -> inversion.GeneratorState:
    run = self.run
    return self._place(jax.vmap(lambda k: inversion.create_generator_state(
        generator=run.generator, rng=k, tx=run.gen_tx))(self._key(20_000 + task)))

  def _aux(self, task: int) -> Any:
    run = self.run
    if run.learner.init_aux is None:
      return {}
    return self._place(jax.vmap(lambda k: run.learner.init_aux(k, run.model.num_features))(
        self._key(10_000 + task)))

  def _init_opt(self, trainable: Any) -> Any:
    return jax.vmap(self.run.tx.init)(trainable)

  def _ones_class_weights(self) -> jax.Array:
    return self._place(np.ones((len(self.run.members), self.run.spec.num_classes), np.float32))

  @functools.lru_cache(maxsize=4)
  def _epoch_batches(self, task: int, epoch: int) -> np.ndarray:
    return np.stack([datasets.epoch_batches(len(idx[task]), self.run.config.data.batch_size,
                                            seed=m.config.seed, task=task, epoch=epoch)
                     for m, idx in zip(self.run.members, self.run.member_task_indices)])

  @functools.lru_cache(maxsize=2)
  def _epoch_rows(self, task: int, epoch: int) -> jax.Array:
    batches = self._epoch_batches(task, epoch)
    return self._place(np.stack([idx[task][b] for idx, b in
                                 zip(self.run.member_task_indices, batches)]).astype(np.int32))

  def exit(self, segment) -> None:
    run, rs, task = self.run, self.rs, segment.task
    if segment.name != "inversion":
      return
    logging.info("task %d/%d: inverted the previous models of %d runs in %.0fs", task + 1,
                 run.spec.num_tasks, len(run.members), time.time() - self._inversion_start)
    if run.config.log.images:
      keys = self._key(40_000 + task)
      for r, m in enumerate(run.members):
        take = lambda tree, r=r: jax.tree.map(lambda x: x[r], tree)
        plots.save_synthetic_grid(
            os.path.join(member_dir(run.workdir, run.config, m), f"synthetic_task{task + 1}.png"),
            take(rs.gen_state.variables), take(rs.teacher_vars), keys[r],
            generator=run.generator, teacher=run.model, spec=m.spec, task=task,
            mean=run.data.mean, std=run.data.std)

  def _evaluate(self, position) -> None:
    """Every run's predictions on the whole test set in one vmapped pass, scored on its own seen
    classes."""
    run, rs, task = self.run, self.rs, position.segment.task
    num_seen = run.spec.num_seen(task)
    preds = evaluation.predict(run.fns.eval_step, rs.state.variables, run.data.test_images,
                               num_seen, run.config.data.eval_batch_size, run.mesh)
    rows = []
    for r, (m, labels) in enumerate(zip(run.members, run.member_test_labels)):
      seen = labels < num_seen
      row = metrics.evaluate_predictions(predictions=preds[r][seen], labels=labels[seen],
                                         task_of_label=m.spec.task_of_label(), task=task)
      rows.append(row)
      record = {"task": task, "eval/acc_seen": row.acc_seen, "eval/new_acc": row.new_acc,
                **{f"eval/acc_task{j}": a for j, a in enumerate(row.per_task)}}
      if row.old_acc is not None:
        record["eval/old_acc"] = row.old_acc
      self.writer.members[r].write(position.step + 1, record)
    rs.rows.append(rows)
    rs.task_seconds.append(time.time() - rs.task_start)
    accs = [row.acc_seen for row in rows]
    logging.info("task %d/%d done in %.0fs: A_t %s (mean %.2f%%)", task + 1, run.spec.num_tasks,
                 rs.task_seconds[-1], " ".join(f"{m.name} {a:.2f}%" for m, a in
                                                zip(run.members, accs)), np.mean(accs))

  def _rows_json(self) -> list:
    return [[dataclasses.asdict(r) for r in rows] for rows in self.rs.rows]


def member_dir(workdir: str, config, member: Member) -> str:
  return os.path.join(workdir, config.method, member.name)


def _fresh_state(run: GroupRun) -> dfcil_run.RunState:
  def init(key, aux):
    return create_train_state(model=run.model, rng=key, image_size=run.config.data.image_size,
                              num_classes=run.spec.num_classes, tx=run.tx, aux_params=aux)
  job_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(run.root_key)
  aux = ({} if run.learner.init_aux is None else jax.vmap(
      lambda k: run.learner.init_aux(k, run.model.num_features))(
          jax.vmap(lambda k: jax.random.fold_in(k, 10_000))(run.root_key)))
  return dfcil_run.RunState(
      state=run.place(jax.vmap(init)(job_keys, aux)),
      class_weights=run.place(np.ones((len(run.members), run.spec.num_classes), np.float32)),
      task_start=time.time())


def abstract_arrays(config, spec, mesh, num_runs: int) -> dict[str, Any]:
  """dfcil_run.abstract_arrays with a leading run axis split over the mesh."""
  sharding = NamedSharding(mesh, P(parallel.DATA_AXIS))
  return jax.tree.map(
      lambda a: jax.ShapeDtypeStruct((num_runs,) + a.shape, a.dtype, sharding=sharding),
      dfcil_run.abstract_arrays(config, spec, mesh))


def train_and_evaluate(config, workdir: str) -> dict[str, dict]:
  """Runs (or resumes) every run of the group; returns {run name: its results.json}."""
  invocation_start = time.time()
  group = members(config)
  spec = group[0].spec
  mesh = parallel.job_mesh(config.data)
  _check_group(config, group, mesh)
  os.makedirs(workdir, exist_ok=True)
  abstract = abstract_arrays(config, spec, mesh, len(group))
  resumed = checkpointing.resume(config, workdir,
                                 lambda meta: {k: abstract[k] for k in meta["arrays"]})
  writers.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  for m in group:
    os.makedirs(member_dir(workdir, config, m), exist_ok=True)
    writers.write_json(os.path.join(member_dir(workdir, config, m), "config.json"),
                       m.config.to_dict())
  run = load_group_run(config, workdir, group, mesh)
  if resumed.restored is not None:
    arrays, meta = resumed.restored.arrays, resumed.meta
    rs = dfcil_run.RunState(
        state=arrays["state"], class_weights=arrays["class_weights"],
        teacher_vars=arrays.get("teacher"), gen_state=arrays.get("generator"),
        rows=[[metrics.EvalRow(**r) for r in rows] for rows in meta["rows"]],
        task_seconds=meta["task_seconds"], task_start=time.time() - meta["task_elapsed"])
    logging.info("resumed the group at %s", run.plan.describe(resumed.step))
  else:
    rs = _fresh_state(run)
  kept = resumed.metrics_records or [None] * len(group)
  writer = GroupWriter([writers.MetricWriter(member_dir(workdir, config, m),
                                             hparams=m.config.to_dict(), keep_records=k)
                        for m, k in zip(group, kept)])
  wall = dfcil.run_job(GroupJob(run, rs, writer), config, workdir, resumed, invocation_start)
  results = {}
  for r, m in enumerate(group):
    results[m.name] = dfcil.results_record(m.config, m.spec, [rows[r] for rows in rs.rows],
                                           rs.task_seconds, run.plan, wall)
    writers.write_json(os.path.join(member_dir(workdir, config, m), "results.json"),
                       results[m.name])
    if config.log.images:
      plots.save_run_plots(member_dir(workdir, config, m), results[m.name])
  return results
