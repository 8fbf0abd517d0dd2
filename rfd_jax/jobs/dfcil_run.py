"""The fixed parts of a class-incremental job and the state that changes (what jobs.dfcil runs).

A job steps R runs at once (R = 1 for a plain run; a group of config.runs, rfd_jax.jobs.group):
its host data (labels, task data, batch rows), its checkpoints, records and results carry a
leading run axis of R. On the device the arrays are in the *step form*, the form the jitted
steps (rfd_jax.jobs.steps) take and return: stacked on the run axis and vmapped for R > 1, the
run's own arrays for R = 1. (One run stepped with an axis of 1 — vmapped, or squeezed and expanded
inside the jitted step — rounds differently on XLA:CPU: 4.7e-10 in the generator's parameters
after one step, and RFD's results move by points under rounding changes, docs/rfd_first_task.md;
adding the axis outside the step costs a dispatch of the whole state per step.) `Run` converts:
`place` (host arrays with the run axis → step form), `with_run_axis` / `step_form` (checkpoints),
`map_runs` / `per_run` (a function of one run over the runs), `take` (one run's arrays).
`Run`: the parts built once from the config (data with labels remapped to model labels by each
run's class order, model, learner, plan, jitted steps). `RunState`: what a checkpoint stores
besides the loop's global step. `abstract_arrays`: a checkpoint's restore targets, known before
the data is loaded.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from absl import logging
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import numpy as np
import optax

from rfd_jax.engine import errors, optim, parallel, plan as plan_lib
from rfd_jax.methods import inversion, learners, metrics, tasks
from rfd_jax.jobs import group as group_lib, steps
from rfd_jax.data import augment, datasets, sources
from rfd_jax.models.generator import generator_for
from rfd_jax.models.resnet import build_model
from rfd_jax.engine.state import TrainState, create_train_state

# The checkpoint layout this job writes and reads (its JSON record's "layout"): 2 since every
# array carries the run axis. Checkpoints without it (a single run's or a group's before) are
# refused, not converted.
LAYOUT = 2


# One jitted call per tree (not an eager op, i.e. a compiled executable, per leaf shape).
_with_axis = jax.jit(lambda tree: jax.tree.map(lambda x: x[None], tree))
_without_axis = jax.jit(lambda tree: jax.tree.map(lambda x: x[0], tree))


@dataclasses.dataclass
class Run:
  """What a job builds once and never changes. Per run r of `members`: root_key[r],
  train_labels[r] (N,), test_labels[r] (N_test,), task_indices[r][t], dirs[r] (its output
  folder)."""
  config: Any
  workdir: str
  spec: tasks.TaskSpec  # the first run's; every run has the same task sizes
  mesh: Any
  learner: learners.Learner
  model: Any
  generator: Any
  tx: Any
  gen_tx: Any
  root_key: jax.Array  # each run's jax.random.key(seed), in the step form
  data: Any
  members: list[group_lib.Member]
  dirs: list[str]
  grouped: bool  # config.runs: per-run folders, the run axis split over the devices
  train_labels: np.ndarray  # (R, N) int32 model labels
  test_labels: np.ndarray  # (R, N_test)
  task_indices: list[list[np.ndarray]]
  plan: plan_lib.Plan
  fns: steps.StepFns
  run_sharding: Any  # of arrays with the run axis: replicated (plain run), split (group)
  # the train set on the device ({"images" (N, H, W, 3) uint8 replicated, "labels" ([R,] N) int32
  # in the step form}),
  # or None: host-fed batches (config.data.device_resident, lazily decoded folders; R = 1)
  train_data: Any = None
  # shapes only (rfd_jax.tools.aot): train_data and the placed hparams are jax.ShapeDtypeStructs
  abstract: bool = False

  @property
  def num_runs(self) -> int:
    return len(self.members)

  def place(self, tree: Any) -> Any:
    """Host arrays with the run axis (identical on every process) onto the mesh in the step
    form: split over the devices (several runs), or the one run's replicated."""
    if self.num_runs == 1:
      return parallel.replicate(jax.tree.map(lambda x: np.asarray(x)[0], tree), self.mesh)
    return jax.device_put(tree, self.run_sharding)

  def keys(self, data: int) -> jax.Array:
    """fold_in(each run's root key, data), in the step form."""
    return self.map_runs(lambda k: jax.random.fold_in(k, data), self.root_key)

  def map_runs(self, fn, *args) -> Any:
    """fn of one run's arrays, over the step form's runs (vmapped for R > 1)."""
    return fn(*args) if self.num_runs == 1 else jax.vmap(fn)(*args)

  def per_run(self, fn, *args) -> Any:
    """`map_runs`, placed on the mesh like the state (replicated, or the runs split)."""
    out = self.map_runs(fn, *args)
    if self.num_runs == 1:
      return parallel.replicate(out, self.mesh)
    return jax.device_put(out, self.run_sharding)

  def take(self, tree: Any, r: int) -> Any:
    """Run r's arrays of the step form."""
    return tree if self.num_runs == 1 else jax.tree.map(lambda x: x[r], tree)

  def with_run_axis(self, tree: Any) -> Any:
    """The step form → arrays with the leading run axis (what a checkpoint stores)."""
    return _with_axis(tree) if self.num_runs == 1 else tree

  def step_form(self, tree: Any) -> Any:
    """Arrays with the leading run axis (a checkpoint's) → the step form."""
    return _without_axis(tree) if self.num_runs == 1 else tree

  def aux(self, task: int) -> Any:
    """The learner's extra per-task params (R-DFCIL's RKD projections); {} if it has none."""
    if self.learner.init_aux is None:
      return {}
    return self.per_run(lambda k: self.learner.init_aux(k, self.model.num_features),
                        self.keys(10_000 + task))

  def new_generator(self, task: int) -> inversion.GeneratorState:
    return self.per_run(lambda k: inversion.create_generator_state(
        generator=self.generator, rng=k, tx=self.gen_tx), self.keys(20_000 + task))

  def ones_class_weights(self) -> jax.Array:
    return self.place(np.ones((self.num_runs, self.spec.num_classes), np.float32))


@dataclasses.dataclass
class RunState:
  """What changes during a job and a checkpoint stores (besides the loop's global step): arrays
  in the step form."""
  state: TrainState
  class_weights: jax.Array  # fine-tuning class weights ([R,] C), refreshed at every epoch end
  teacher_vars: Any = None  # frozen previous model of the current task (distillation learners)
  gen_state: inversion.GeneratorState | None = None
  rows: list[list[metrics.EvalRow]] = dataclasses.field(default_factory=list)  # [task][run]
  task_seconds: list[float] = dataclasses.field(default_factory=list)
  task_start: float = 0.0  # wall time at which the current task would have started

  @classmethod
  def restored(cls, run: Run, arrays: dict[str, Any], meta: dict[str, Any]) -> "RunState":
    """From a checkpoint's arrays (with the run axis) and record."""
    arrays = run.step_form(arrays)
    return cls(state=arrays["state"], class_weights=arrays["class_weights"],
               teacher_vars=arrays.get("teacher"), gen_state=arrays.get("generator"),
               rows=[[metrics.EvalRow(**r) for r in rows] for rows in meta["rows"]],
               task_seconds=meta["task_seconds"], task_start=time.time() - meta["task_elapsed"])

  @classmethod
  def fresh(cls, run: Run) -> "RunState":
    """The untrained students (their RKD projections for task 0) and uniform class weights."""
    learner, model = run.learner, run.model

    def init(key, aux_key):
      aux = {} if learner.init_aux is None else learner.init_aux(aux_key, model.num_features)
      return create_train_state(model=model, rng=key, image_size=run.config.data.image_size,
                                num_classes=run.spec.num_classes, tx=run.tx, aux_params=aux)
    return cls(state=run.per_run(init, run.keys(0), run.keys(10_000)),
               class_weights=run.ones_class_weights(), task_start=time.time())

  def rows_json(self) -> list:
    return [[dataclasses.asdict(r) for r in rows] for rows in self.rows]


def train_loop(config, resident: bool, platform: str | None = None) -> str:
  """config.optim.loop resolved: "auto" → "scan" on GPU/TPU with the data on the device, else
  "host" (XLA:CPU runs a rolled loop of conv steps far slower than a host loop of jitted steps,
  see inversion.resolve_loop). platform: the mesh's ("cpu", "gpu", "tpu"; default: JAX's default
  backend). Raises ConfigError for "scan" without device-resident data."""
  loop = config.optim.get("loop", "auto")
  platform = jax.default_backend() if platform is None else platform
  if loop == "auto":
    return "scan" if resident and platform != "cpu" else "host"
  if loop == "scan" and not resident:
    raise errors.ConfigError(
        f"config.optim.loop='scan' needs the train set on the device, but {config.data.dataset} "
        "is decoded lazily from image files; use config.optim.loop='host'.")
  return loop


def make_plan(config, learner: learners.Learner, epoch_steps: list[int],
              loop: str = "host") -> plan_lib.Plan:
  """The run's plan; epoch_steps[t]: train steps per epoch of task t; loop "scan": a train block
  is an epoch."""
  optim_config, inv = config.optim, config.inversion
  return plan_lib.dfcil_plan(scan_epochs=loop == "scan",
      num_tasks=len(epoch_steps), epoch_steps=epoch_steps, epochs=optim_config.epochs,
      ft_epochs=optim_config.ft_epochs, has_finetune_phase=learner.has_finetune_phase,
      inversion_iterations=inv.iterations, inversion_block=inv.chunk_steps,
      uses_inversion=learner.uses_inversion, lr=optim_config.lr, lr_decay=optim_config.lr_decay,
      milestones=optim_config.milestones, ft_lr=optim_config.ft_lr)


def mesh_platform(mesh) -> str:
  """The platform of the mesh's devices: "cpu", "gpu" or "tpu" (also for the deviceless devices
  of a compile-only topology, rfd_jax.tools.aot)."""
  return mesh.devices.flat[0].platform


def placed(tree: Any, sharding, abstract: bool) -> Any:
  """Host arrays (identical on every process) placed with `sharding`, or their shapes only
  (jax.ShapeDtypeStruct with the sharding) when `abstract`."""
  if abstract:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding),
                        tree)
  if sharding.is_fully_replicated:
    return parallel.replicate(tree, sharding.mesh)
  return jax.device_put(tree, sharding)


def run_sharding(mesh, grouped: bool):
  """The sharding of the arrays with the run axis: a group's runs split over the devices, a plain
  run's one run replicated (its batches are split instead)."""
  return NamedSharding(mesh, P(parallel.DATA_AXIS)) if grouped else parallel.replicated(mesh)


@dataclasses.dataclass(frozen=True)
class Parts:
  """What a job builds once from its config, before the data is loaded (`parts_of`): its runs,
  the mesh and the run axis' sharding, the learner, model, generator and optimizers."""
  config: Any
  members: list[group_lib.Member]
  grouped: bool
  mesh: Any
  run_sharding: Any
  learner: learners.Learner
  model: Any
  generator: Any
  tx: Any
  gen_tx: Any


def parts_of(config, mesh, members: list[group_lib.Member] | None = None) -> Parts:
  """The job's parts (members: group.members(config) unless given)."""
  members = group_lib.members(config) if members is None else members
  grouped = group_lib.is_group(config)
  return Parts(config=config, members=members, grouped=grouped, mesh=mesh,
               run_sharding=run_sharding(mesh, grouped), learner=learners.get_learner(config),
               model=build_model(config.model, members[0].spec.sizes, dtype=config.dtype),
               generator=generator_for(config.data.image_size, config.dtype,
                                       upsample=config.inversion.get("upsample", "auto"),
                                       platform=mesh_platform(mesh)),
               tx=optim.momentum_transform(config.optim.momentum),
               gen_tx=optax.adam(config.inversion.lr))


def load_run(config, workdir: str, mesh) -> Run:
  """Loads the data and builds the job of the config's runs (`build_run`)."""
  return build_run(parts_of(config, mesh), workdir, sources.load_dataset(config.data))


def build_run(parts: Parts, workdir: str, data: datasets.Dataset, *,
              abstract: bool = False) -> Run:
  """The job of `parts` on `data`: each run's labels (remapped by its class order) and task data,
  the shared plan and the jitted steps for the mesh's platform. Raises ConfigError if a task has
  fewer images than a batch, or (a group) the data is decoded lazily or the runs' tasks have
  different numbers of batches.

  abstract: the data's images are shapes only (rfd_jax.tools.aot, compiling for a target without
  its devices): nothing is placed on a device; `train_data` holds jax.ShapeDtypeStructs.
  """
  config, members, mesh, learner = parts.config, parts.members, parts.mesh, parts.learner
  grouped = parts.grouped
  if grouped and not isinstance(data.train_images, np.ndarray):
    raise errors.ConfigError(
        f"config.runs: {data.name} is decoded lazily from image files; a group of runs needs an "
        "in-memory dataset.")
  spec, batch_size = members[0].spec, config.data.batch_size
  train_labels = np.stack([m.spec.to_model_labels(data.train_labels).astype(np.int32)
                           for m in members])
  test_labels = np.stack([m.spec.to_model_labels(data.test_labels).astype(np.int32)
                          for m in members])
  indices = [[learner.train_indices(y, spec.offsets, t) for t in range(spec.num_tasks)]
             for y in train_labels]
  if grouped:
    _check_group_batches(members, indices, batch_size)
    logging.info("group of %d runs: %s; dataset %s, %d tasks of sizes %s", len(members),
                 ", ".join(m.name for m in members), data.name, spec.num_tasks, list(spec.sizes))
  else:
    logging.info("dataset %s: %d train / %d test images of %s; %d tasks of sizes %s; order %s...",
                 data.name, train_labels.shape[1], test_labels.shape[1],
                 data.train_images.shape[1:], spec.num_tasks, list(spec.sizes),
                 list(spec.class_order[:10]))
    for t, idx in enumerate(indices[0]):
      if len(idx) < batch_size:
        raise errors.ConfigError(
            f"config.data.batch_size={batch_size} exceeds the {len(idx)} training images of task "
            f"{t + 1}/{spec.num_tasks}; lower it.")
  resident = config.data.get("device_resident", True) and isinstance(data.train_images,
                                                                       np.ndarray)
  loop = train_loop(config, resident, mesh_platform(mesh))
  plan = make_plan(config, learner, [len(idx) // batch_size for idx in indices[0]], loop)
  root_key = jax.random.key(members[0].config.seed)
  if len(members) > 1:
    root_key = jax.random.wrap_key_data(np.stack(
        [np.asarray(jax.random.key_data(jax.random.key(m.config.seed))) for m in members]))
  train_data = None
  if resident:
    train_data = {"images": placed(data.train_images, parallel.replicated(mesh), abstract),
                  "labels": placed(train_labels if len(members) > 1 else train_labels[0],
                                   parts.run_sharding, abstract)}
  inv = config.inversion
  fns = steps.build_step_fns(
      steps.StepParts(
          learner=learner, model=parts.model, generator=parts.generator, tx=parts.tx,
          mean=data.mean, std=data.std, weight_decay=config.optim.weight_decay,
          augmentation=augment.Augmentation.from_config(config.data), inversion_lr=inv.lr,
          inversion_batch_size=inv.batch_size, inversion_chunk_steps=inv.chunk_steps,
          inversion_weights=inversion.weights_from_config(config),
          inversion_loop=inversion.resolve_loop(inv.loop, mesh_platform(mesh))),
      mesh, num_runs=len(members))
  return Run(config=config, workdir=workdir, spec=spec, mesh=mesh, learner=learner,
             model=parts.model, generator=parts.generator, tx=parts.tx, gen_tx=parts.gen_tx,
             root_key=root_key, data=data, members=members,
             dirs=group_lib.run_dirs(workdir, config, members), grouped=grouped,
             train_labels=train_labels, test_labels=test_labels, task_indices=indices, plan=plan,
             fns=fns, run_sharding=parts.run_sharding, train_data=train_data, abstract=abstract)


def _check_group_batches(members, indices, batch_size: int) -> None:
  epoch_steps = [len(idx) // batch_size for idx in indices[0]]
  for m, idx in zip(members, indices):
    steps_m = [len(i) // batch_size for i in idx]
    if steps_m != epoch_steps:
      raise errors.ConfigError(
          f"config.runs: run {m.name} has {steps_m} batches per epoch per task, run "
          f"{members[0].name} {epoch_steps}: a group steps its runs together; run them separately "
          "(or choose a batch size that gives equal counts).")
    if min(steps_m) < 1:
      raise errors.ConfigError(
          f"config.data.batch_size={batch_size} exceeds the training images of a task of run "
          f"{m.name}; lower it.")


def abstract_arrays(parts: Parts, *, step_form: bool = False) -> dict[str, Any]:
  """The restore targets of every array a checkpoint may hold (shapes only, nothing computed),
  with the leading run axis placed with parts.run_sharding; with `step_form`, the arrays' shapes
  as the steps take them (no run axis for one run)."""
  config, learner, model, num_runs = parts.config, parts.learner, parts.model, len(parts.members)
  num_classes = parts.members[0].spec.num_classes

  def init():
    rng = jax.random.key(0)
    aux = {} if learner.init_aux is None else learner.init_aux(rng, model.num_features)
    state = create_train_state(model=model, rng=rng, image_size=config.data.image_size,
                               num_classes=num_classes, tx=parts.tx, aux_params=aux)
    gen = inversion.create_generator_state(generator=parts.generator, rng=rng, tx=parts.gen_tx)
    return {"state": state, "class_weights": jnp.ones((num_classes,), jnp.float32),
            "teacher": state.variables, "generator": gen}
  lead = () if step_form and num_runs == 1 else (num_runs,)
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(lead + a.shape, a.dtype,
                                                     sharding=parts.run_sharding),
                      jax.eval_shape(init))


def check_layout(meta: dict[str, Any], source: str) -> None:
  """ConfigError unless the checkpoint's record is of this job's `LAYOUT` (one line)."""
  if meta.get("layout") != LAYOUT:
    raise errors.ConfigError(
        f"{source} holds checkpoints of an earlier rfd_jax (before every array of the "
        "class-incremental job carried a run axis), which this version cannot continue. Nothing "
        "was deleted; pass a new --workdir to start afresh (or use the rfd_jax that wrote them).")
