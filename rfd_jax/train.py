"""The class-incremental outer loop: for each task, train the student, evaluate, record.

Jitted functions are built once per run: the task index, number of seen classes, learning rate and
trainable mask enter the steps as data, so nothing recompiles between tasks.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

import optax

from rfd_jax import (checkpointing, config_validation, input_pipeline, inversion, learners, losses,
                     metrics, optim, parallel, plots, steps, tasks, writers)
from rfd_jax.models.generator import generator_for
from rfd_jax.models.resnet import build_model
from rfd_jax.state import TrainState, create_train_state, trainable_mask


@dataclasses.dataclass(frozen=True)
class Phase:
  """A contiguous block of epochs within a task that share one loss and trainable set."""
  name: str  # "main" or "finetune"
  first_epoch: int
  num_epochs: int


def task_phases(config, learner: learners.Learner, task: int) -> list[Phase]:
  """Epoch blocks of task `task`. Learners with a head fine-tuning phase (rdfcil, rfd) train
  E − E_ft main-phase epochs and, for task >= 1, E_ft fine-tuning epochs (spec §3; task 0 has
  E − E_ft epochs only, as in the original); the others train all E epochs as main phase."""
  main_epochs = config.optim.epochs
  if learner.has_finetune_phase:
    main_epochs -= config.optim.ft_epochs
  phases = [Phase("main", 0, main_epochs)]
  if learner.has_finetune_phase and task > 0 and config.optim.ft_epochs > 0:
    phases.append(Phase("finetune", main_epochs, config.optim.ft_epochs))
  return phases


@dataclasses.dataclass(frozen=True)
class StepFns:
  """The run's jitted functions, each compiled once per run whatever the number of tasks."""
  ce_step: Any
  distill_main_step: Any
  distill_finetune_step: Any
  eval_step: Any
  inversion_chunk: Any
  class_weights: Any


def build_step_fns(config, learner: learners.Learner, model, generator, tx, data,
                   mesh) -> StepFns:
  """Binds the static arguments and jits every step of the run (the state is donated).

  State, keys, hparams, teacher and generator are replicated; real batches are split on the mesh's
  "data" axis, so BatchNorm sees the global batch.
  """
  rep, batch = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  common = dict(model=model, tx=tx, weight_decay=config.optim.weight_decay, mean=data.mean,
                std=data.std, augmentation=input_pipeline.Augmentation.from_config(config.data))
  distill = lambda loss_fn: None if loss_fn is None else jax.jit(
      functools.partial(steps.distill_train_step, loss_fn=loss_fn, generator=generator,
                        batch_sharding=batch, **common),
      donate_argnums=(0,), in_shardings=(rep, batch, rep, rep, rep, rep), out_shardings=rep)
  inv = config.inversion
  return StepFns(
      ce_step=jax.jit(functools.partial(steps.train_step, **common,
                                        ce_over_all_outputs=learner.ce_over_all_outputs),
                      donate_argnums=(0,),
                      in_shardings=(rep, batch, rep, rep), out_shardings=rep),
      distill_main_step=distill(learner.main_loss),
      distill_finetune_step=distill(learner.finetune_loss),
      eval_step=jax.jit(functools.partial(steps.eval_step, model=model, mean=data.mean,
                                          std=data.std),
                        in_shardings=(rep, batch, rep), out_shardings=rep),
      inversion_chunk=inversion.make_inversion_chunk_fn(
          generator=generator, teacher=model, tx=optax.adam(inv.lr), batch_size=inv.batch_size,
          chunk_steps=inv.chunk_steps, weights=inversion_weights(config), loop=inv.loop,
          batch_sharding=batch),
      class_weights=jax.jit(losses.class_balance_weights, in_shardings=(rep, rep),
                            out_shardings=rep))


def inversion_weights(config) -> dict[str, Any]:
  """The inversion loss weights of `config.inversion` (+ `config.rgal`'s synthesis triplet with
  inversion.kind = "rgal"), for `inversion.inversion_loss`."""
  inv = config.inversion
  weights = {"ce": inv.ce_weight, "balance": inv.balance_weight,
             "smoothness": inv.smoothness_weight, "bn": inv.bn_weight,
             "ce_temperature": inv.ce_temperature}
  if inv.kind == "rgal":
    weights.update(rgal_triplet=config.rgal.triplet,
                   rgal_swap=config.rgal.syn_triplet_direction == "paper")
  return weights


def task_train_indices(method: str, labels: np.ndarray, spec: tasks.TaskSpec,
                       task: int) -> np.ndarray:
  """Indices of the training examples a learner sees during task `task`.

  finetune: the current task's classes only. joint: every class seen so far (the upper bound).
  labels: model labels (N,).
  """
  if method == "joint":
    keep = labels < spec.num_seen(task)
  else:
    keep = (labels >= spec.offsets[task]) & (labels < spec.offsets[task + 1])
  return np.flatnonzero(keep)


def predict(eval_fn, variables, images: np.ndarray, num_seen: int, batch_size: int,
            mesh) -> np.ndarray:
  """Predictions for all `images` (N, H, W, 3) in fixed-size batches (last one zero-padded).

  Each batch is a global array sharded over `mesh`: every process feeds its rows of it and gets all
  the predictions back (replicated).
  """
  num = len(images)
  padded_num = -(-num // batch_size) * batch_size
  padded = np.concatenate([images, np.zeros((padded_num - num,) + images.shape[1:], images.dtype)])
  rows = parallel.process_batch_indices(np.arange(batch_size), mesh,
                                       field="config.data.eval_batch_size")
  preds = [eval_fn(variables, parallel.global_batch(padded[i + rows], mesh), jnp.int32(num_seen))
           for i in range(0, padded_num, batch_size)]
  return np.concatenate([np.asarray(p) for p in preds])[:num]


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# ---- The run: what is built once, and the state that a checkpoint stores. ----------------------


@dataclasses.dataclass
class Run:
  """What a run builds once and never changes: config, data, model, jitted steps, outputs."""
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
  checkpoints: checkpointing.Checkpoints | None
  data: Any = None
  train_labels: np.ndarray | None = None
  test_labels: np.ndarray | None = None
  task_indices: list[np.ndarray] = dataclasses.field(default_factory=list)
  fns: StepFns | None = None
  writer: writers.MetricWriter | None = None
  signals: Any = None
  total_steps: int = 0

  def aux_init(self, task: int) -> Any:
    """The learner's extra per-task params (R-DFCIL's RKD projections), fresh every task; {} if
    it has none."""
    if self.learner.init_aux is None:
      return {}
    return parallel.replicate(self.learner.init_aux(
        jax.random.fold_in(self.root_key, 10_000 + task), self.model.num_features), self.mesh)

  def new_generator_state(self, task: int) -> inversion.GeneratorState:
    return parallel.replicate(inversion.create_generator_state(
        generator=self.generator, rng=jax.random.fold_in(self.root_key, 20_000 + task),
        tx=self.gen_tx), self.mesh)


@dataclasses.dataclass
class RunState:
  """Everything that changes during a run; a checkpoint stores all of it but the last block.

  The position says what comes next: `phase` "start" (nothing of task `task` done yet),
  "inversion" (at iteration `inversion_iteration`) or "train" (step `step_in_epoch` of epoch
  `epoch`, which may equal the epoch's number of steps: its end-of-epoch work is still due; an
  epoch past the last one means the evaluation is next). Keys and shuffles are functions of
  (seed, task, epoch, step), so the position is all a resume needs to replay the same stream.
  """
  state: TrainState
  class_weights: jax.Array  # fine-tuning class weights, refreshed at every epoch end
  teacher_vars: Any = None  # frozen previous model of the current task (distillation learners)
  gen_state: inversion.GeneratorState | None = None
  task: int = 0
  phase: str = "start"
  inversion_iteration: int = 0
  epoch: int = 0
  step_in_epoch: int = 0
  step_in_task: int = 0
  done_steps: int = 0  # train steps of the whole run
  rows: list[metrics.EvalRow] = dataclasses.field(default_factory=list)
  task_seconds: list[float] = dataclasses.field(default_factory=list)
  earlier_invocations: list[float] = dataclasses.field(default_factory=list)  # their wall seconds
  metrics_records: int | None = None  # lines of metrics.jsonl up to here (None: keep the file)
  # Not stored: bookkeeping of this process.
  invocation_start: float = 0.0  # wall time at which this invocation started
  task_start: float = 0.0  # wall time at which the current task would have started
  unchecked: list = dataclasses.field(default_factory=list)  # step metrics not yet checked finite
  saved_position: tuple | None = None
  steps_this_process: int = 0
  steady_start: float = 0.0  # wall time when this process's first (compiling) step ended

  def position(self) -> tuple:
    return (self.task, self.phase, self.inversion_iteration, self.epoch, self.step_in_epoch,
            len(self.rows))


def phase_name(config, learner: learners.Learner, rs: RunState) -> str:
  """The phase a RunState is in, for logs and checkpoint records."""
  if rs.phase != "train" or rs.task >= config.data.num_tasks:
    return rs.phase
  for phase in task_phases(config, learner, rs.task):
    if rs.epoch < phase.first_epoch + phase.num_epochs:
      return phase.name
  return "evaluate"


# ---- Checkpoints: save, check finiteness, restore. ---------------------------------------------


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def check_finite(run: Run, rs: RunState) -> None:
  """Raises NonFiniteError naming the first train step with a NaN/inf loss term since the last
  check. Called at log steps, epoch ends and before every save (one host sync each), not per step:
  the steps are dispatched asynchronously."""
  if not rs.unchecked:
    return
  values = jax.device_get([m for *_, m in rs.unchecked])
  for (step, phase, epoch, _), step_metrics in zip(rs.unchecked, values):
    _raise_if_non_finite(run, step_metrics, f"loss at train step {step} (task {rs.task + 1}/"
                         f"{run.spec.num_tasks}, {phase} phase, epoch {epoch + 1})")
  rs.unchecked.clear()


def _raise_if_non_finite(run: Run, named_values: dict[str, Any], where: str) -> None:
  """NonFiniteError listing every NaN/inf entry of `named_values` (host values), if any."""
  bad = {k: float(v) for k, v in named_values.items() if not np.all(np.isfinite(v))}
  if bad:
    raise checkpointing.NonFiniteError(
        f"non-finite {where}: " + ", ".join(f"{k}={v}" for k, v in bad.items())
        + _last_good_checkpoint(run))


def _last_good_checkpoint(run: Run) -> str:
  if run.checkpoints is None:
    return "; checkpointing is off"
  run.checkpoints.wait()
  ids = run.checkpoints.all_ids()
  return (f"; stopped without saving, the last checkpoint is "
          f"{os.path.join(run.checkpoints.directory, str(ids[-1]))}" if ids else
          "; stopped without saving (no checkpoint yet)")


def save_checkpoint(run: Run, rs: RunState) -> None:
  """Starts an asynchronous save of the run state at its current position (once per position),
  after checking that the losses since the last check and the parameters are finite."""
  if run.checkpoints is None or rs.position() == rs.saved_position:
    return
  check_finite(run, rs)
  arrays = {"state": rs.state, "class_weights": rs.class_weights}
  if rs.teacher_vars is not None and rs.phase != "start":
    arrays["teacher"] = rs.teacher_vars
  if rs.gen_state is not None:
    arrays["generator"] = rs.gen_state
  params = {k: arrays[k].params for k in ("state", "generator") if k in arrays}
  if not bool(_all_finite(params)):
    raise checkpointing.NonFiniteError(
        f"non-finite parameters after train step {rs.done_steps} (task {rs.task + 1}, "
        f"{phase_name(run.config, run.learner, rs)} phase; its logged losses were finite)"
        + _last_good_checkpoint(run))
  meta = {"task": rs.task, "phase": rs.phase, "phase_name": phase_name(run.config, run.learner, rs),
          "inversion_iteration": rs.inversion_iteration, "epoch": rs.epoch,
          "step_in_epoch": rs.step_in_epoch, "step_in_task": rs.step_in_task,
          "done_steps": rs.done_steps, "rows": [dataclasses.asdict(r) for r in rs.rows],
          "task_seconds": rs.task_seconds, "task_elapsed": time.time() - rs.task_start,
          "invocation_seconds": checkpointing.invocation_seconds(rs.earlier_invocations,
                                                                 rs.invocation_start),
          "metrics_records": run.writer.records,
          "arrays": sorted(arrays), "config": _config_dict(run.config)}
  checkpoint_id = run.checkpoints.save(arrays, meta)
  rs.saved_position = rs.position()
  logging.info("checkpoint %d: %s", checkpoint_id, _describe_position(run, rs))


def _describe_position(run: Run, rs: RunState) -> str:
  if rs.task >= run.spec.num_tasks:
    return f"all {run.spec.num_tasks} tasks done"
  where = f"task {rs.task + 1}/{run.spec.num_tasks}, {phase_name(run.config, run.learner, rs)}"
  if rs.phase == "inversion":
    return f"{where} iteration {rs.inversion_iteration}"
  if rs.phase == "train":
    return f"{where} epoch {rs.epoch + 1} step {rs.step_in_epoch} ({rs.done_steps} train steps)"
  return f"{where} (before its first step)"


def _config_dict(config) -> dict:
  return json.loads(json.dumps(config.to_dict(), default=str))


def stop_if_requested(run: Run, rs: RunState, *, sync: bool) -> None:
  """On SIGTERM/SIGINT: save at the current position and raise Preempted."""
  if run.signals is None or not run.signals.requested(sync=sync):
    return
  save_checkpoint(run, rs)
  run.checkpoints.wait()
  raise checkpointing.Preempted(
      f"stopped on {run.signals.received} at {_describe_position(run, rs)}; checkpoint saved in "
      f"{run.checkpoints.directory}. Rerun the same command to resume.")


def restore_run_state(run: Run, rs: RunState) -> RunState:
  """The run state of the latest readable checkpoint in the workdir, else of config.init_from,
  else `rs` (scratch). Refuses (ConfigMismatchError) a checkpoint whose config differs in fields
  that change the result, unless config.ckpt.allow_config_change."""
  config = run.config
  rep = parallel.replicated(run.mesh)
  abstract = {"state": checkpointing.abstract_like(rs.state, rep),
              "class_weights": checkpointing.abstract_like(rs.class_weights, rep),
              "teacher": checkpointing.abstract_like(rs.state.variables, rep),
              "generator": checkpointing.abstract_like(jax.eval_shape(
                  lambda: inversion.create_generator_state(
                      generator=run.generator, rng=jax.random.key(0), tx=run.gen_tx)), rep)}
  abstract_arrays = lambda meta: {k: abstract[k] for k in meta["arrays"]}
  current = _config_dict(config)

  def checker(source):
    return lambda meta: checkpointing.check_config(
        meta["config"], current, allow_change=config.ckpt.allow_config_change, source=source)

  restored = None
  if run.checkpoints is not None:
    restored = run.checkpoints.restore(abstract_arrays,
                                       check_meta=checker(run.checkpoints.directory))
    if restored is not None:
      logging.info("resuming from checkpoint %s", restored.directory)
  if restored is None and config.init_from:
    directory, only_id = checkpointing.locate(config.init_from)
    source = checkpointing.Checkpoints(directory, keep=1, read_only=True)
    restored = source.restore(abstract_arrays, check_meta=checker(config.init_from),
                              only_id=only_id)
    source.close()
    if restored is None:
      raise config_validation.ConfigError(
          f"config.init_from={config.init_from!r} holds no readable checkpoint.")
    logging.info("initialising from config.init_from: checkpoint %s", restored.directory)
  if restored is None:
    logging.info("no checkpoint in %s%s: starting from scratch",
                 os.path.join(run.workdir, "checkpoints"),
                 "" if run.checkpoints is not None else " (config.ckpt.enabled=False)")
    if run.checkpoints is not None:  # records of a run killed before its first checkpoint
      rs.metrics_records = 0
    return rs
  meta, arrays = restored.meta, restored.arrays
  rs = RunState(
      state=arrays["state"], class_weights=arrays["class_weights"],
      teacher_vars=arrays.get("teacher"), gen_state=arrays.get("generator"), task=meta["task"],
      phase=meta["phase"], inversion_iteration=meta["inversion_iteration"], epoch=meta["epoch"],
      step_in_epoch=meta["step_in_epoch"], step_in_task=meta["step_in_task"],
      done_steps=meta["done_steps"], rows=[metrics.EvalRow(**r) for r in meta["rows"]],
      task_seconds=meta["task_seconds"], task_start=time.time() - meta["task_elapsed"],
      earlier_invocations=meta.get("invocation_seconds", []), invocation_start=rs.invocation_start,
      metrics_records=0)  # from config.init_from: the records of another workdir
  if restored.directory.startswith(os.path.abspath(run.workdir)):
    rs.saved_position = rs.position()
    rs.metrics_records = meta.get("metrics_records")
  logging.info("resumed at %s", _describe_position(run, rs))
  return rs


# ---- One task: inversion, training phases, evaluation. -----------------------------------------


def invert_teacher(run: Run, rs: RunState) -> None:
  """Model inversion of the previous model (the frozen teacher), before any student training;
  resumes a partly done inversion at its last chunk."""
  config, task = run.config, rs.task
  num_old = int(run.spec.offsets[task])
  if rs.phase == "start":
    rs.teacher_vars = jax.tree.map(jnp.copy, rs.state.variables)  # the state gets donated
    if rs.gen_state is None or not run.learner.reuse_generator:
      rs.gen_state = run.new_generator_state(task)
    rs.phase, rs.inversion_iteration = "inversion", 0
  every = config.ckpt.every_steps  # inversion iterations count as steps

  def on_chunk(gen_state, done, chunk_metrics):
    run.writer.write((task - 1) * config.inversion.iterations + done,  # inversion iterations so far
                     {"task": task, "iteration": done, **chunk_metrics})
    _raise_if_non_finite(run, chunk_metrics, f"inversion loss in iterations "
                         f"{done - config.inversion.chunk_steps + 1}-{done} of task {task + 1}/"
                         f"{run.spec.num_tasks}")
    rs.gen_state, rs.inversion_iteration = gen_state, done
    if done // every > (done - config.inversion.chunk_steps) // every or (
        done == config.inversion.iterations):  # periodic, and the end of the inversion
      save_checkpoint(run, rs)
    checkpointing.maybe_test_kill("inversion", task, done)
    stop_if_requested(run, rs, sync=True)

  inversion_start = time.time()
  rs.gen_state = inversion.synthesize(
      rs.gen_state, rs.teacher_vars, chunk_fn=run.fns.inversion_chunk,
      rng=jax.random.fold_in(run.root_key, 30_000 + task), num_old=num_old,
      iterations=config.inversion.iterations, chunk_steps=config.inversion.chunk_steps,
      start_iteration=rs.inversion_iteration, progress=config.log.progress,
      label=f"task {task + 1}/{run.spec.num_tasks} ", batch_size=config.inversion.batch_size,
      on_chunk=on_chunk)
  logging.info("task %d/%d: inverted the previous model (%d old classes) in %.0fs", task + 1,
               run.spec.num_tasks, num_old, time.time() - inversion_start)
  if config.log.images:
    plots.save_synthetic_grid(
        os.path.join(run.workdir, f"synthetic_task{task + 1}.png"), rs.gen_state.variables,
        rs.teacher_vars, jax.random.fold_in(run.root_key, 40_000 + task), generator=run.generator,
        teacher=run.model, spec=run.spec, task=task, mean=run.data.mean, std=run.data.std,
        write=parallel.is_main_process())


def start_training(run: Run, rs: RunState) -> None:
  """A fresh optimizer per task (spec §3.1); momentum carries over between phases of a task.
  Class counts (for the fine-tuning class weights) restart every task."""
  state = rs.state.replace(aux_params=run.aux_init(rs.task))  # RKD projections are per task
  rs.state = state.replace(opt_state=run.tx.init(state.trainable),
                           class_counts=jnp.zeros_like(state.class_counts))
  # replicated on the mesh like the later fns.class_weights outputs: one compile of the steps
  rs.class_weights = parallel.replicate(np.ones((run.spec.num_classes,), np.float32), run.mesh)
  rs.phase, rs.epoch, rs.step_in_epoch, rs.step_in_task = "train", 0, 0, 0


def train_phase(run: Run, rs: RunState, phase: Phase) -> None:
  """The epochs of `phase` from the current position on."""
  config, task = run.config, rs.task
  num_seen, num_old = run.spec.num_seen(task), int(run.spec.offsets[task])
  distilling = run.learner.uses_inversion and task > 0
  # ABD trains every row of its head from the start (its CE runs over all outputs)
  heads = run.spec.num_tasks if run.learner.ce_over_all_outputs else task + 1
  mask = trainable_mask(rs.state, tasks_seen=heads, backbone=phase.name == "main")
  step_fn = run.fns.ce_step
  if distilling:
    step_fn = run.fns.distill_main_step if phase.name == "main" else run.fns.distill_finetune_step
  weights = {k: jnp.float32(v) for k, v in learners.loss_weights(
      config.distill, config.method, num_old=num_old, num_new=num_seen - num_old).items()}
  hparams = {"num_seen": jnp.int32(num_seen), "trainable": mask}
  if distilling:
    hparams.update(num_old=jnp.int32(num_old), weights=weights)
  while rs.epoch < phase.first_epoch + phase.num_epochs:
    train_epoch(run, rs, phase, step_fn, hparams, distilling)


def train_epoch(run: Run, rs: RunState, phase: Phase, step_fn, phase_hparams: dict,
                distilling: bool) -> None:
  """The rest of epoch `rs.epoch`, then its end-of-epoch work (class weights, progress line)."""
  config, task, epoch = run.config, rs.task, rs.epoch
  lr = optim.learning_rate(config.optim, epoch=epoch, finetune=phase.name == "finetune")
  hparams = {"lr": jnp.float32(lr), **phase_hparams}
  extra = ()
  if distilling:  # R-DFCIL's class weights change at epoch ends only
    hparams["class_weights"] = rs.class_weights
    extra = (rs.teacher_vars, rs.gen_state.variables)
  idx, batch_size = run.task_indices[task], config.data.batch_size
  task_key = jax.random.fold_in(run.root_key, task + 1)
  batches = input_pipeline.epoch_batches(len(idx), batch_size, seed=config.seed, task=task,
                                         epoch=epoch)
  epoch_start, epoch_metrics, interval = time.time(), [], []
  for i in range(rs.step_in_epoch, len(batches)):
    sel = idx[parallel.process_batch_indices(batches[i], run.mesh)]  # this process's rows
    batch = parallel.global_batch(
        {"images": run.data.train_images[sel], "labels": run.train_labels[sel]}, run.mesh)
    step_start = time.time()
    rs.state, step_metrics = step_fn(rs.state, batch, jax.random.fold_in(task_key, rs.step_in_task),
                                     hparams, *extra)
    if rs.steps_this_process == 0:
      jax.block_until_ready(rs.state)
      rs.steady_start = time.time()
      logging.info("compiled and ran the first train step in %.1fs", rs.steady_start - step_start)
    rs.steps_this_process += 1
    rs.step_in_epoch, rs.step_in_task, rs.done_steps = i + 1, rs.step_in_task + 1, rs.done_steps + 1
    rs.unchecked.append((rs.done_steps, phase.name, epoch, step_metrics))
    epoch_metrics.append(step_metrics)
    interval.append(step_metrics)
    log_step = rs.done_steps % config.log.every_steps == 0
    if log_step:
      check_finite(run, rs)
      means = jax.device_get(jax.tree.map(lambda *v: jnp.mean(jnp.stack(v)), *interval))
      run.writer.write(rs.done_steps, {"task": task, "epoch": epoch, "phase": phase.name,
                                       "train/lr": lr, **means})
      interval = []
    if rs.done_steps % config.ckpt.every_steps == 0:
      save_checkpoint(run, rs)
    checkpointing.maybe_test_kill(phase.name, task, rs.step_in_task)
    stop_if_requested(run, rs, sync=log_step)

  # R-DFCIL: class weights from this task's cumulative counts, refreshed every epoch end.
  rs.class_weights = run.fns.class_weights(rs.state.class_counts,
                                           jnp.int32(run.spec.num_seen(task)))
  if epoch_metrics:  # empty when resumed at the end of the epoch
    epoch_means = jax.device_get(jax.tree.map(lambda *v: jnp.mean(jnp.stack(v)), *epoch_metrics))
    check_finite(run, rs)  # the device_get above synchronised anyway
    if config.log.progress:  # so wall times are real
      elapsed = time.time() - epoch_start
      per_step = (time.time() - rs.steady_start) / max(rs.steps_this_process - 1, 1)
      # After task 1 the real batches hold only the new classes, scored against every seen class:
      # near 0% while the model still predicts old classes. Said on the line, so it is not alarming.
      what = ("" if task == 0 or config.method == "joint" else
              f" (real new-class images, scored over all {run.spec.num_seen(task)} seen classes)")
      logging.info(
          "task %d/%d %-8s epoch %3d/%d  loss %.4f  acc %5.1f%%%s  lr %.4g  %6.0f img/s  "
          "ETA %s", task + 1, run.spec.num_tasks, phase.name, epoch + 1,
          phase.first_epoch + phase.num_epochs, epoch_means["train/loss"],
          epoch_means["train/acc"], what, lr,
          len(epoch_metrics) * batch_size / max(elapsed, 1e-9),
          _format_duration(per_step * (run.total_steps - rs.done_steps)))
  rs.epoch, rs.step_in_epoch = epoch + 1, 0


def evaluate(run: Run, rs: RunState) -> None:
  """Accuracy on the union of the seen classes' test sets; appends the row, logs it."""
  task, num_seen = rs.task, run.spec.num_seen(rs.task)
  seen = run.test_labels < num_seen
  preds = predict(run.fns.eval_step, rs.state.variables, run.data.test_images[seen], num_seen,
                  run.config.data.eval_batch_size, run.mesh)
  row = metrics.evaluate_predictions(predictions=preds, labels=run.test_labels[seen],
                                     task_of_label=run.spec.task_of_label(), task=task)
  rs.rows.append(row)
  rs.task_seconds.append(time.time() - rs.task_start)
  eval_metrics = {"task": task, "eval/acc_seen": row.acc_seen, "eval/new_acc": row.new_acc,
                  **{f"eval/acc_task{j}": a for j, a in enumerate(row.per_task)}}
  if row.old_acc is not None:
    eval_metrics["eval/old_acc"] = row.old_acc
  run.writer.write(rs.done_steps, eval_metrics)
  logging.info("task %d/%d done in %.0fs: A_t %.2f%%  old %s  new %.2f%%  per task %s",
               task + 1, run.spec.num_tasks, rs.task_seconds[-1], row.acc_seen,
               "n/a" if row.old_acc is None else f"{row.old_acc:.2f}%", row.new_acc,
               " ".join(f"{a:.1f}" for a in row.per_task))


def run_task(run: Run, rs: RunState) -> None:
  """Task `rs.task` from its current position: inversion, training phases, evaluation, with a
  checkpoint at every phase boundary."""
  if rs.phase == "start":
    rs.task_start = time.time()
  if run.learner.uses_inversion and rs.task > 0 and rs.phase in ("start", "inversion"):
    invert_teacher(run, rs)
  if rs.phase in ("start", "inversion"):
    start_training(run, rs)
  phases = task_phases(run.config, run.learner, rs.task)
  for phase in phases:
    if rs.epoch < phase.first_epoch + phase.num_epochs:
      train_phase(run, rs, phase)
      if phase is not phases[-1]:
        save_checkpoint(run, rs)
        stop_if_requested(run, rs, sync=True)
  check_finite(run, rs)
  evaluate(run, rs)
  rs.task, rs.phase, rs.inversion_iteration, rs.epoch, rs.step_in_epoch, rs.step_in_task = (
      rs.task + 1, "start", 0, 0, 0, 0)
  save_checkpoint(run, rs)
  stop_if_requested(run, rs, sync=True)


# ---- The whole run. -----------------------------------------------------------------------------


def setup_run(config, workdir: str, invocation_start: float) -> tuple[Run, RunState]:
  """Validates the config, builds the model and restores the run state (before loading the data,
  so that a refused resume fails fast), then loads the data and builds the jitted steps."""
  spec = config_validation.validate(config)
  mesh = parallel.make_mesh()  # every device of every process; batches split on its "data" axis
  parallel.check_batch_size(config.data.batch_size, mesh)
  parallel.check_batch_size(config.data.eval_batch_size, mesh, field="config.data.eval_batch_size")
  os.makedirs(workdir, exist_ok=True)
  checkpoints = None
  if config.ckpt.enabled:
    checkpoints = checkpointing.Checkpoints(os.path.join(workdir, "checkpoints"),
                                            keep=config.ckpt.keep)
  try:
    return _build_run(config, workdir, spec, mesh, checkpoints, invocation_start)
  except BaseException:
    if checkpoints is not None:
      checkpoints.close()
    raise


def _build_run(config, workdir, spec, mesh, checkpoints, invocation_start
               ) -> tuple[Run, RunState]:
  learner = learners.get_learner(config)
  run = Run(config=config, workdir=workdir, spec=spec, mesh=mesh, learner=learner,
            model=build_model(config.model, spec.sizes, dtype=config.dtype),
            generator=generator_for(config.data.image_size, config.dtype),
            tx=optim.momentum_transform(config.optim.momentum),
            gen_tx=optax.adam(config.inversion.lr), root_key=jax.random.key(config.seed),
            checkpoints=checkpoints)
  state = parallel.replicate(create_train_state(
      model=run.model, rng=jax.random.fold_in(run.root_key, 0),
      image_size=config.data.image_size, num_classes=spec.num_classes, tx=run.tx,
      aux_params=run.aux_init(0)), mesh)
  rs = RunState(state=state, class_weights=parallel.replicate(
      np.ones((spec.num_classes,), np.float32), mesh), task_start=time.time(),
      invocation_start=invocation_start)
  rs = restore_run_state(run, rs)
  if parallel.is_main_process():  # only process 0 writes files
    writers.write_json(os.path.join(workdir, "config.json"), config.to_dict())

  # ---- Data: whole dataset in host memory, labels remapped to model labels by class order.
  run.data = data = input_pipeline.load_dataset(config.data)
  run.train_labels = spec.to_model_labels(data.train_labels).astype(np.int32)
  run.test_labels = spec.to_model_labels(data.test_labels).astype(np.int32)
  logging.info("dataset %s: %d train / %d test images of %s; %d tasks of sizes %s; order %s...",
               data.name, len(run.train_labels), len(run.test_labels),
               data.train_images.shape[1:], spec.num_tasks, list(spec.sizes),
               list(spec.class_order[:10]))
  run.task_indices = [task_train_indices(config.method, run.train_labels, spec, t)
                      for t in range(spec.num_tasks)]
  batch_size = config.data.batch_size
  for t, idx in enumerate(run.task_indices):
    if len(idx) < batch_size:
      raise config_validation.ConfigError(
          f"config.data.batch_size={batch_size} exceeds the {len(idx)} training images of task "
          f"{t + 1}/{spec.num_tasks}; lower it.")
  run.total_steps = sum(
      sum(p.num_epochs for p in task_phases(config, learner, t))
      * (len(run.task_indices[t]) // batch_size) for t in range(spec.num_tasks))

  # ---- Jitted steps (built once) and outputs.
  run.fns = build_step_fns(config, learner, run.model, run.generator, run.tx, data, mesh)
  run.writer = writers.MetricWriter(workdir, enabled=parallel.is_main_process(),
                                    hparams=config.to_dict(), keep_records=rs.metrics_records)
  return run, rs


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) the whole class-incremental experiment of `config`; returns results.json.

  Raises:
    config_validation.ConfigError: a bad config, or a refused resume (ConfigMismatchError).
    checkpointing.Preempted: stopped on SIGTERM/SIGINT after saving a checkpoint.
    checkpointing.NonFiniteError: a loss became NaN/inf; nothing saved after the last check.
  """
  run_start = time.time()
  run, rs = setup_run(config, workdir, run_start)
  signals = checkpointing.StopSignals() if run.checkpoints else checkpointing.no_stop_signals()
  try:
    with signals as run.signals:
      while rs.task < run.spec.num_tasks:
        run_task(run, rs)
  finally:
    run.writer.close()
    if run.checkpoints is not None:
      run.checkpoints.close()
  results = {
      "method": config.method,
      "dataset": config.data.dataset,
      "num_tasks": run.spec.num_tasks,
      "task_sizes": list(run.spec.sizes),
      "class_order": list(run.spec.class_order),
      "seed": config.seed,
      **metrics.summarize(rs.rows),
      "task_seconds": rs.task_seconds,
      **checkpointing.wall_times(rs.earlier_invocations, run_start),  # over all invocations
  }
  if parallel.is_main_process():
    writers.write_json(os.path.join(workdir, "results.json"), results)
    if config.log.images:
      plots.save_run_plots(workdir, results)
  return results
