"""The fixed parts of a class-incremental run and the state that changes (what train.py runs).

`Run`: the config, data (labels remapped to model labels by class order), model, generator, plan
and jitted steps, built once. `RunState`: what a checkpoint stores besides the loop's global step.
`abstract_arrays`: the restore targets of a checkpoint, known before the data is loaded.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rfd_jax.engine import checkpointing, errors, optim, parallel, plan as plan_lib
from rfd_jax.methods import inversion, learners, metrics, tasks
from rfd_jax.jobs import steps
from rfd_jax.data import datasets, sources
from rfd_jax.models.generator import generator_for
from rfd_jax.models.resnet import build_model
from rfd_jax.engine.state import TrainState, create_train_state


@dataclasses.dataclass
class Run:
  """What a run builds once and never changes: config, data, model, jitted steps, plan."""
  config: Any
  workdir: str
  spec: tasks.TaskSpec
  mesh: Any
  learner: learners.Learner
  model: Any
  generator: Any
  tx: Any
  gen_tx: Any
  root_key: jax.Array
  data: Any
  train_labels: np.ndarray
  test_labels: np.ndarray
  task_indices: list[np.ndarray]
  plan: plan_lib.Plan
  fns: steps.StepFns
  # the train set on the device ({"images" (N, H, W, 3) uint8, "labels" (N,) int32 model labels},
  # replicated), or None: host-fed batches (config.data.device_resident, lazily decoded folders)
  train_data: Any = None
  # shapes only (rfd_jax.tools.aot): train_data and the placed hparams are jax.ShapeDtypeStructs
  abstract: bool = False


@dataclasses.dataclass
class RunState:
  """What changes during a run and a checkpoint stores (besides the loop's global step)."""
  state: TrainState
  class_weights: jax.Array  # fine-tuning class weights (C,), refreshed at every epoch end
  teacher_vars: Any = None  # frozen previous model of the current task (distillation learners)
  gen_state: inversion.GeneratorState | None = None
  rows: list[metrics.EvalRow] = dataclasses.field(default_factory=list)
  task_seconds: list[float] = dataclasses.field(default_factory=list)
  task_start: float = 0.0  # wall time at which the current task would have started

  @classmethod
  def restored(cls, arrays: dict[str, Any], meta: dict[str, Any]) -> "RunState":
    return cls(state=arrays["state"], class_weights=arrays["class_weights"],
               teacher_vars=arrays.get("teacher"), gen_state=arrays.get("generator"),
               rows=[metrics.EvalRow(**r) for r in meta["rows"]],
               task_seconds=meta["task_seconds"], task_start=time.time() - meta["task_elapsed"])

  @classmethod
  def fresh(cls, run: "Run") -> "RunState":
    """The untrained student (its RKD projections for task 0) and uniform class weights."""
    state = create_train_state(
        model=run.model, rng=jax.random.fold_in(run.root_key, 0),
        image_size=run.config.data.image_size, num_classes=run.spec.num_classes, tx=run.tx,
        aux_params=aux_init(run, 0))
    return cls(state=parallel.replicate(state, run.mesh),
               class_weights=parallel.replicate(np.ones((run.spec.num_classes,), np.float32),
                                                run.mesh), task_start=time.time())


def task_spec(data_config) -> tasks.TaskSpec:
  """The run's class order and task split (config.data); ConfigError names a bad order or split."""
  try:
    return tasks.make_task_spec(
        num_classes=datasets.dataset_info(data_config.dataset).num_classes,
        num_tasks=data_config.num_tasks, order=data_config.class_order,
        split=data_config.task_split)
  except ValueError as e:
    raise errors.ConfigError(str(e)) from None


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


def load_run(config, workdir: str, spec: tasks.TaskSpec, mesh) -> Run:
  """Loads the data and builds the run (`build_run`)."""
  return build_run(config, workdir, spec, mesh, sources.load_dataset(config.data))


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


def build_run(config, workdir: str, spec: tasks.TaskSpec, mesh, data: datasets.Dataset, *,
              abstract: bool = False) -> Run:
  """The run of `config` on `data` (labels remapped to model labels by class order): the model,
  the plan and the jitted steps for the mesh's platform. Raises ConfigError if a task has fewer
  images than a batch.

  abstract: the data's images are shapes only (rfd_jax.tools.aot, compiling for a target without
  its devices): nothing is placed on a device; `train_data` holds jax.ShapeDtypeStructs.
  """
  learner = learners.get_learner(config)
  train_labels = spec.to_model_labels(data.train_labels).astype(np.int32)
  test_labels = spec.to_model_labels(data.test_labels).astype(np.int32)
  logging.info("dataset %s: %d train / %d test images of %s; %d tasks of sizes %s; order %s...",
               data.name, len(train_labels), len(test_labels), data.train_images.shape[1:],
               spec.num_tasks, list(spec.sizes), list(spec.class_order[:10]))
  task_indices = [learner.train_indices(train_labels, spec.offsets, t)
                  for t in range(spec.num_tasks)]
  batch_size = config.data.batch_size
  for t, idx in enumerate(task_indices):
    if len(idx) < batch_size:
      raise errors.ConfigError(
          f"config.data.batch_size={batch_size} exceeds the {len(idx)} training images of task "
          f"{t + 1}/{spec.num_tasks}; lower it.")
  resident = config.data.get("device_resident", True) and isinstance(data.train_images,
                                                                       np.ndarray)
  loop = train_loop(config, resident, mesh_platform(mesh))
  plan = make_plan(config, learner, [len(idx) // batch_size for idx in task_indices], loop)
  optim_config, inv = config.optim, config.inversion
  model = build_model(config.model, spec.sizes, dtype=config.dtype)
  generator = generator_for(config.data.image_size, config.dtype)
  tx = optim.momentum_transform(optim_config.momentum)
  return Run(config=config, workdir=workdir, spec=spec, mesh=mesh, learner=learner, model=model,
             generator=generator, tx=tx, gen_tx=optax.adam(inv.lr),
             root_key=jax.random.key(config.seed), data=data, train_labels=train_labels,
             test_labels=test_labels, task_indices=task_indices, plan=plan,
             fns=steps.build_step_fns(config, learner, model, generator, tx, data, mesh),
             train_data=placed({"images": data.train_images, "labels": train_labels},
                               parallel.replicated(mesh), abstract) if resident else None,
             abstract=abstract)


def aux_init(run: Run, task: int) -> Any:
  """The learner's extra per-task params (R-DFCIL's RKD projections); {} if it has none."""
  if run.learner.init_aux is None:
    return {}
  return parallel.replicate(run.learner.init_aux(
      jax.random.fold_in(run.root_key, 10_000 + task), run.model.num_features), run.mesh)


def abstract_arrays(config, spec, mesh) -> dict[str, Any]:
  """The restore targets of every array a checkpoint may hold (shapes only, nothing computed)."""
  rep = parallel.replicated(mesh)
  model = build_model(config.model, spec.sizes, dtype=config.dtype)
  learner = learners.get_learner(config)
  tx = optim.momentum_transform(config.optim.momentum)

  def init():
    rng = jax.random.key(0)
    aux = {} if learner.init_aux is None else learner.init_aux(rng, model.num_features)
    state = create_train_state(model=model, rng=rng, image_size=config.data.image_size,
                               num_classes=spec.num_classes, tx=tx, aux_params=aux)
    gen = inversion.create_generator_state(generator=generator_for(config.data.image_size,
                                                                   config.dtype),
                                           rng=rng, tx=optax.adam(config.inversion.lr))
    return {"state": state, "class_weights": jnp.ones((spec.num_classes,), jnp.float32),
            "teacher": state.variables, "generator": gen}
  return checkpointing.abstract_like(jax.eval_shape(init), rep)
