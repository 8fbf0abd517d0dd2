"""The class-incremental job: per task, invert the previous model, train, fine-tune, evaluate.

The run is a plan over one global step (rfd_jax.plan.dfcil_plan): per task t the inversion (t >= 1,
learners that invert), the main phase, the head fine-tuning (rdfcil, rfd) and the evaluation, each
step counted once. rfd_jax.loop runs it; this module says what each segment does (`DfcilJob`).
Keys and data order are functions of (seed, task, step in the task), i.e. of (seed, global step),
so a run resumed from the checkpoint of step s continues exactly as the uninterrupted run.

Jitted functions are built once per run: the task index, number of seen classes, learning rate and
trainable mask enter the steps as data, so nothing recompiles between tasks.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rfd_jax import (checkpointing, config_validation, evaluation, inversion, learners, loop,
                     losses, metrics, optim, parallel, plan as plan_lib, plots, steps, tasks,
                     writers)
from rfd_jax.data import augment, datasets
from rfd_jax.models.generator import generator_for
from rfd_jax.models.resnet import build_model
from rfd_jax.state import TrainState, create_train_state, trainable_mask


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
                std=data.std, augmentation=augment.Augmentation.from_config(config.data))
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
  fns: StepFns


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


def make_plan(config, learner: learners.Learner, epoch_steps: list[int]) -> plan_lib.Plan:
  """The run's plan; epoch_steps[t]: train steps per epoch of task t."""
  optim_config, inv = config.optim, config.inversion
  return plan_lib.dfcil_plan(
      num_tasks=len(epoch_steps), epoch_steps=epoch_steps, epochs=optim_config.epochs,
      ft_epochs=optim_config.ft_epochs, has_finetune_phase=learner.has_finetune_phase,
      inversion_iterations=inv.iterations, inversion_block=inv.chunk_steps,
      uses_inversion=learner.uses_inversion, lr=optim_config.lr, lr_decay=optim_config.lr_decay,
      milestones=optim_config.milestones, ft_lr=optim_config.ft_lr)


def load_run(config, workdir: str, spec: tasks.TaskSpec, mesh) -> Run:
  """Loads the data (labels remapped to model labels by class order) and builds the model, the
  plan and the jitted steps. Raises ConfigError if a task has fewer images than a batch."""
  learner = learners.get_learner(config)
  data = datasets.load_dataset(config.data)
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
      raise config_validation.ConfigError(
          f"config.data.batch_size={batch_size} exceeds the {len(idx)} training images of task "
          f"{t + 1}/{spec.num_tasks}; lower it.")
  plan = make_plan(config, learner, [len(idx) // batch_size for idx in task_indices])
  optim_config, inv = config.optim, config.inversion
  model = build_model(config.model, spec.sizes, dtype=config.dtype)
  generator = generator_for(config.data.image_size, config.dtype)
  tx = optim.momentum_transform(optim_config.momentum)
  return Run(config=config, workdir=workdir, spec=spec, mesh=mesh, learner=learner, model=model,
             generator=generator, tx=tx, gen_tx=optax.adam(inv.lr),
             root_key=jax.random.key(config.seed), data=data, train_labels=train_labels,
             test_labels=test_labels, task_indices=task_indices, plan=plan,
             fns=build_step_fns(config, learner, model, generator, tx, data, mesh))


def job_aux_init(run: Run, task: int) -> Any:
  """The learner's extra per-task params (R-DFCIL's RKD projections); {} if it has none."""
  if run.learner.init_aux is None:
    return {}
  return parallel.replicate(run.learner.init_aux(
      jax.random.fold_in(run.root_key, 10_000 + task), run.model.num_features), run.mesh)


class DfcilJob:
  """What each segment of the class-incremental plan does (rfd_jax.loop.Job)."""

  def __init__(self, run: Run, rs: RunState, writer: writers.MetricWriter):
    self.run, self.rs, self.writer = run, rs, writer
    self._epoch_start = self._inversion_start = time.time()
    self._epoch_steps = 0  # train steps of the current epoch run by this process
    segments = run.plan.segments
    self._task_starts = {b.start for a, b in zip((None,) + segments, segments)
                         if a is None or a.task != b.task}
    self.step = 0  # the global step reached (kept by the loop's calls)

  # ---- Per-segment constants (cached: resuming inside a segment needs them too). ----------------

  @functools.lru_cache(maxsize=None)
  def _hparams(self, name: str, task: int) -> tuple[Any, dict, bool]:
    """(step fn, hparams, distilling) of a train segment; the lr is added per epoch."""
    run, config = self.run, self.run.config
    num_seen, num_old = run.spec.num_seen(task), int(run.spec.offsets[task])
    distilling = run.learner.uses_inversion and task > 0
    # ABD trains every row of its head from the start (its CE runs over all outputs)
    heads = run.spec.num_tasks if run.learner.ce_over_all_outputs else task + 1
    hparams = {"num_seen": jnp.int32(num_seen),
               "trainable": trainable_mask(self.rs.state, tasks_seen=heads,
                                           backbone=name == "main")}
    step_fn = run.fns.ce_step
    if distilling:
      step_fn = run.fns.distill_main_step if name == "main" else run.fns.distill_finetune_step
      weights = run.learner.loss_weights(config.distill, num_old=num_old,
                                         num_new=num_seen - num_old)
      hparams.update(num_old=jnp.int32(num_old),
                     weights={k: jnp.float32(v) for k, v in weights.items()})
    return step_fn, hparams, distilling

  @functools.lru_cache(maxsize=4)
  def _epoch_batches(self, task: int, epoch: int) -> np.ndarray:
    return datasets.epoch_batches(len(self.run.task_indices[task]),
                                  self.run.config.data.batch_size,
                                  seed=self.run.config.seed, task=task, epoch=epoch)

  @functools.lru_cache(maxsize=2)
  def _lr(self, lr: float) -> jax.Array:
    return jnp.float32(lr)

  # ---- loop.Job. -----------------------------------------------------------------------------

  def enter(self, segment: plan_lib.Segment) -> None:
    run, rs, task = self.run, self.rs, segment.task
    if segment.start in self._task_starts:
      rs.task_start = time.time()
    if segment.name == "inversion":
      rs.teacher_vars = jax.tree.map(jnp.copy, rs.state.variables)  # the state gets donated
      if rs.gen_state is None or not run.learner.reuse_generator:
        rs.gen_state = parallel.replicate(inversion.create_generator_state(
            generator=run.generator, rng=jax.random.fold_in(run.root_key, 20_000 + task),
            tx=run.gen_tx), run.mesh)
      self._inversion_start = time.time()
    elif segment.name == "main":
      # A fresh optimizer per task (spec §3.1); momentum carries over into the fine-tuning. Class
      # counts (for the fine-tuning class weights) restart every task, as the RKD projections.
      state = rs.state.replace(aux_params=job_aux_init(run, task))
      rs.state = state.replace(opt_state=run.tx.init(state.trainable),
                               class_counts=jnp.zeros_like(state.class_counts))
      # replicated like the later fns.class_weights outputs: one compile of the steps
      rs.class_weights = parallel.replicate(np.ones((run.spec.num_classes,), np.float32),
                                            run.mesh)
    self._epoch_start, self._epoch_steps = time.time(), 0

  def run_block(self, position: plan_lib.Position, num_steps: int):
    self.step = position.step + num_steps
    segment = position.segment
    if segment.name == "inversion":
      return self._invert(position)
    if segment.name == "eval":
      self._evaluate(position)
      return None
    return self._train_step(position)

  def _invert(self, position: plan_lib.Position):
    run, rs, task = self.run, self.rs, position.segment.task
    rs.gen_state, chunk_metrics = run.fns.inversion_chunk(
        rs.gen_state, rs.teacher_vars, jax.random.fold_in(run.root_key, 30_000 + task),
        jnp.int32(run.spec.offsets[task]), jnp.int32(position.offset))
    return chunk_metrics

  def _train_step(self, position: plan_lib.Position):
    run, rs, segment = self.run, self.rs, position.segment
    task, epoch = segment.task, position.epoch
    step_fn, hparams, distilling = self._hparams(segment.name, task)
    hparams = {**hparams, "lr": self._lr(position.lr)}
    extra = ()
    if distilling:  # R-DFCIL's class weights change at epoch ends only
      hparams["class_weights"] = rs.class_weights
      extra = (rs.teacher_vars, rs.gen_state.variables)
    idx = run.task_indices[task]
    batch_rows = self._epoch_batches(task, epoch)[position.step_in_epoch]
    sel = idx[parallel.process_batch_indices(batch_rows, run.mesh)]  # this process's rows
    batch = parallel.global_batch(
        {"images": run.data.train_images[sel], "labels": run.train_labels[sel]}, run.mesh)
    step_in_task = epoch * segment.epoch_steps + position.step_in_epoch
    rng = jax.random.fold_in(jax.random.fold_in(run.root_key, task + 1), step_in_task)
    rs.state, step_metrics = step_fn(rs.state, batch, rng, hparams, *extra)
    self._epoch_steps += 1
    return step_metrics

  def end_epoch(self, segment: plan_lib.Segment, epoch: int, means: dict[str, float],
                eta: str) -> None:
    run, task = self.run, segment.task
    # R-DFCIL: class weights from this task's cumulative counts, refreshed every epoch end.
    self.rs.class_weights = run.fns.class_weights(self.rs.state.class_counts,
                                                  jnp.int32(run.spec.num_seen(task)))
    elapsed, steps = time.time() - self._epoch_start, self._epoch_steps
    self._epoch_start, self._epoch_steps = time.time(), 0
    if run.config.log.progress and means:
      # After task 1 the real batches hold only the new classes, scored against every seen class:
      # near 0% while the model still predicts old classes. Said on the line, so it is not alarming.
      what = ("" if task == 0 or run.learner.train_on_seen_classes else
              f" (real new-class images, scored over all {run.spec.num_seen(task)} seen classes)")
      logging.info(
          "task %d/%d %-8s epoch %3d/%d  loss %.4f  acc %5.1f%%%s  lr %.4g  %6.0f img/s  ETA %s",
          task + 1, run.spec.num_tasks, segment.name, epoch + 1,
          segment.first_epoch + segment.num_epochs, means["train/loss"], means["train/acc"], what,
          segment.lrs[epoch - segment.first_epoch],
          steps * run.config.data.batch_size / max(elapsed, 1e-9), eta)

  def exit(self, segment: plan_lib.Segment) -> None:
    run, rs, task = self.run, self.rs, segment.task
    if segment.name != "inversion":
      return
    logging.info("task %d/%d: inverted the previous model (%d old classes) in %.0fs", task + 1,
                 run.spec.num_tasks, run.spec.offsets[task], time.time() - self._inversion_start)
    if run.config.log.images:
      plots.save_synthetic_grid(
          os.path.join(run.workdir, f"synthetic_task{task + 1}.png"), rs.gen_state.variables,
          rs.teacher_vars, jax.random.fold_in(run.root_key, 40_000 + task),
          generator=run.generator, teacher=run.model, spec=run.spec, task=task,
          mean=run.data.mean, std=run.data.std, write=parallel.is_main_process())

  def _evaluate(self, position: plan_lib.Position) -> None:
    """Accuracy on the union of the seen classes' test sets; appends the row, logs it."""
    run, rs, task = self.run, self.rs, position.segment.task
    num_seen = run.spec.num_seen(task)
    seen = run.test_labels < num_seen
    preds = evaluation.predict(run.fns.eval_step, rs.state.variables,
                               run.data.test_images[seen], num_seen,
                               run.config.data.eval_batch_size, run.mesh)
    row = metrics.evaluate_predictions(predictions=preds, labels=run.test_labels[seen],
                                       task_of_label=run.spec.task_of_label(), task=task)
    rs.rows.append(row)
    rs.task_seconds.append(time.time() - rs.task_start)
    eval_metrics = {"task": task, "eval/acc_seen": row.acc_seen, "eval/new_acc": row.new_acc,
                    **{f"eval/acc_task{j}": a for j, a in enumerate(row.per_task)}}
    if row.old_acc is not None:
      eval_metrics["eval/old_acc"] = row.old_acc
    self.writer.write(position.step + 1, eval_metrics)
    logging.info("task %d/%d done in %.0fs: A_t %.2f%%  old %s  new %.2f%%  per task %s",
                 task + 1, run.spec.num_tasks, rs.task_seconds[-1], row.acc_seen,
                 "n/a" if row.old_acc is None else f"{row.old_acc:.2f}%", row.new_acc,
                 " ".join(f"{a:.1f}" for a in row.per_task))

  def checkpoint(self) -> tuple[dict[str, Any], dict[str, Any]]:
    rs = self.rs
    arrays = {"state": rs.state, "class_weights": rs.class_weights}
    if rs.teacher_vars is not None and self.step not in self._task_starts:
      arrays["teacher"] = rs.teacher_vars  # not needed at a task boundary: the next one renews it
    if rs.gen_state is not None:
      arrays["generator"] = rs.gen_state
    plan = self.run.plan
    task = plan.locate(self.step).segment.task if self.step < plan.total_steps else len(rs.rows)
    meta = {"task": task, "segment": plan.locate(self.step).segment.name
            if self.step < plan.total_steps else "done",
            "rows": [dataclasses.asdict(r) for r in rs.rows], "task_seconds": rs.task_seconds,
            "task_elapsed": time.time() - rs.task_start}
    return arrays, meta


# ---- The whole run. -----------------------------------------------------------------------------


def _abstract_arrays(config, spec, mesh) -> dict[str, Any]:
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


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) the whole class-incremental experiment of `config`; returns results.json.

  A checkpoint is read (and a resume refused) before the data is loaded, so that a refused resume
  fails fast.

  Raises:
    config_validation.ConfigError: a bad config, or a refused resume (ConfigMismatchError).
    checkpointing.Preempted: stopped on SIGTERM/SIGINT after saving a checkpoint.
    checkpointing.NonFiniteError: a loss became NaN/inf; nothing saved after the last check.
  """
  invocation_start = time.time()
  spec = config_validation.validate(config)
  mesh = parallel.job_mesh(config.data)
  os.makedirs(workdir, exist_ok=True)
  abstract = _abstract_arrays(config, spec, mesh)
  resumed = checkpointing.resume(config, workdir,
                                 lambda meta: {k: abstract[k] for k in meta["arrays"]})
  if parallel.is_main_process():  # only process 0 writes files
    writers.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  run = load_run(config, workdir, spec, mesh)
  if resumed.restored is not None:
    meta, arrays = resumed.meta, resumed.restored.arrays
    rs = RunState(state=arrays["state"], class_weights=arrays["class_weights"],
                  teacher_vars=arrays.get("teacher"), gen_state=arrays.get("generator"),
                  rows=[metrics.EvalRow(**r) for r in meta["rows"]],
                  task_seconds=meta["task_seconds"], task_start=time.time() - meta["task_elapsed"])
    logging.info("resumed at %s", run.plan.describe(resumed.step))
  else:
    rs = RunState(
        state=parallel.replicate(create_train_state(
            model=run.model, rng=jax.random.fold_in(run.root_key, 0),
            image_size=config.data.image_size, num_classes=spec.num_classes, tx=run.tx,
            aux_params=job_aux_init(run, 0)), mesh),
        class_weights=parallel.replicate(np.ones((spec.num_classes,), np.float32), mesh),
        task_start=time.time())
  writer = writers.MetricWriter(workdir, enabled=parallel.is_main_process(),
                                hparams=config.to_dict(), keep_records=resumed.metrics_records)
  job = DfcilJob(run, rs, writer)
  job.step = resumed.step
  try:
    runner = loop.run_plan(run.plan, job, config=config, workdir=workdir, resumed=resumed,
                           writer=writer, invocation_start=invocation_start,
                           keep_steps=run.plan.task_end_steps())
  finally:
    writer.close()
  results = {
      "method": config.method,
      "dataset": config.data.dataset,
      "num_tasks": spec.num_tasks,
      "task_sizes": list(spec.sizes),
      "class_order": list(spec.class_order),
      "seed": config.seed,
      **metrics.summarize(rs.rows),
      "task_seconds": rs.task_seconds,
      "task_end_steps": run.plan.task_end_steps(),  # checkpoints/<step> after each task, kept
      **checkpointing.wall_times(runner.earlier_invocations, invocation_start),
  }
  if parallel.is_main_process():
    writers.write_json(os.path.join(workdir, "results.json"), results)
    if config.log.images:
      plots.save_run_plots(workdir, results)
  return results
