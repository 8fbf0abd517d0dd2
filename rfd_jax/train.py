"""The class-incremental outer loop: for each task, train the student, evaluate, record.

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

from rfd_jax import (config_validation, input_pipeline, inversion, learners, losses, metrics, optim,
                     parallel, plots, steps, tasks, writers)
from rfd_jax.models.generator import generator_for
from rfd_jax.models.resnet import build_model
from rfd_jax.state import create_train_state, trainable_mask


@dataclasses.dataclass(frozen=True)
class Phase:
  """A contiguous block of epochs within a task that share one loss and trainable set."""
  name: str  # "main" or "finetune"
  first_epoch: int
  num_epochs: int


def task_phases(config, learner: learners.Learner, task: int) -> list[Phase]:
  """Epoch blocks of task `task`. Every learner trains E − E_ft main-phase epochs; learners with a
  head fine-tuning phase (rdfcil, rfd) append E_ft epochs for task >= 1 (spec §3)."""
  main_epochs = config.optim.epochs - config.optim.ft_epochs
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
      ce_step=jax.jit(functools.partial(steps.train_step, **common), donate_argnums=(0,),
                      in_shardings=(rep, batch, rep, rep), out_shardings=rep),
      distill_main_step=distill(learner.main_loss),
      distill_finetune_step=distill(learner.finetune_loss),
      eval_step=jax.jit(functools.partial(steps.eval_step, model=model, mean=data.mean,
                                          std=data.std),
                        in_shardings=(rep, batch, rep), out_shardings=rep),
      inversion_chunk=inversion.make_inversion_chunk_fn(
          generator=generator, teacher=model, tx=optax.adam(inv.lr), batch_size=inv.batch_size,
          chunk_steps=inv.chunk_steps, weights=inversion_weights(inv), loop=inv.loop,
          batch_sharding=batch),
      class_weights=jax.jit(losses.class_balance_weights, in_shardings=(rep, rep),
                            out_shardings=rep))


def inversion_weights(inversion_config) -> dict[str, float]:
  return {"ce": inversion_config.ce_weight, "balance": inversion_config.balance_weight,
          "smoothness": inversion_config.smoothness_weight, "bn": inversion_config.bn_weight,
          "ce_temperature": inversion_config.ce_temperature}


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


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs the whole class-incremental experiment described by `config`; returns results.json."""
  spec = config_validation.validate(config)
  mesh = parallel.make_mesh()  # every device of every process; batches split on its "data" axis
  parallel.check_batch_size(config.data.batch_size, mesh)
  parallel.check_batch_size(config.data.eval_batch_size, mesh, field="config.data.eval_batch_size")
  is_main = parallel.is_main_process()  # only process 0 writes files
  os.makedirs(workdir, exist_ok=True)
  if is_main:
    writers.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  run_start = time.time()

  # ---- Data: whole dataset in host memory, labels remapped to model labels by class order.
  data = input_pipeline.load_dataset(config.data)
  train_labels = spec.to_model_labels(data.train_labels).astype(np.int32)
  test_labels = spec.to_model_labels(data.test_labels).astype(np.int32)
  logging.info("dataset %s: %d train / %d test images of %s; %d tasks of sizes %s; order %s...",
               data.name, len(train_labels), len(test_labels), data.train_images.shape[1:],
               spec.num_tasks, list(spec.sizes), list(spec.class_order[:10]))

  task_indices = [task_train_indices(config.method, train_labels, spec, t)
                  for t in range(spec.num_tasks)]
  batch_size = config.data.batch_size
  for t, idx in enumerate(task_indices):
    if len(idx) < batch_size:
      raise config_validation.ConfigError(
          f"config.data.batch_size={batch_size} exceeds the {len(idx)} training images of task "
          f"{t}; lower it.")

  # ---- Model, optimizer, jitted steps (built once).
  learner = learners.get_learner(config)
  model = build_model(config.model, spec.sizes, dtype=config.dtype)
  generator = generator_for(config.data.image_size)
  tx = optim.momentum_transform(config.optim.momentum)
  root_key = jax.random.key(config.seed)
  aux_init = lambda task: parallel.replicate(learners.init_rkd_projections(
      jax.random.fold_in(root_key, 10_000 + task), model.num_features), mesh
  ) if config.method == "rdfcil" else {}
  state = parallel.replicate(create_train_state(
      model=model, rng=jax.random.fold_in(root_key, 0), image_size=config.data.image_size,
      num_classes=spec.num_classes, tx=tx, aux_params=aux_init(0)), mesh)
  fns = build_step_fns(config, learner, model, generator, tx, data, mesh)
  gen_tx = optax.adam(config.inversion.lr)
  gen_state, teacher_vars = None, None

  total_steps = sum(
      sum(p.num_epochs for p in task_phases(config, learner, t)) * (len(task_indices[t]) // batch_size)
      for t in range(spec.num_tasks))
  done_steps, steady_start = 0, 0.0  # steady_start: wall time when the first (compiling) step ended
  writer = writers.MetricWriter(workdir, enabled=is_main, hparams=config.to_dict())
  rows: list[metrics.EvalRow] = []
  task_seconds = []

  for task in range(spec.num_tasks):
    task_start = time.time()
    num_seen = spec.num_seen(task)
    idx = task_indices[task]
    num_old = int(spec.offsets[task])
    task_key = jax.random.fold_in(root_key, task + 1)
    distilling = learner.uses_inversion and task > 0

    # ---- Model inversion of the previous model (frozen teacher), before any student training.
    if distilling:
      teacher_vars = jax.tree.map(jnp.copy, state.variables)  # the state's buffers get donated
      if gen_state is None or not learner.reuse_generator:
        gen_state = parallel.replicate(inversion.create_generator_state(
            generator=generator, rng=jax.random.fold_in(root_key, 20_000 + task), tx=gen_tx), mesh)
      inversion_start = time.time()
      gen_state = inversion.synthesize(
          gen_state, teacher_vars, chunk_fn=fns.inversion_chunk,
          rng=jax.random.fold_in(root_key, 30_000 + task), num_old=num_old,
          iterations=config.inversion.iterations, chunk_steps=config.inversion.chunk_steps,
          progress=config.log.progress, label=f"task {task + 1}/{spec.num_tasks} ",
          batch_size=config.inversion.batch_size,
          on_chunk=lambda _, done, m, task=task: writer.write(  # step: inversion iterations so far
              (task - 1) * config.inversion.iterations + done,
              {"task": task, "iteration": done, **m}))
      logging.info("task %d/%d: inverted the previous model (%d old classes) in %.0fs", task + 1,
                   spec.num_tasks, num_old, time.time() - inversion_start)
      if config.log.images:
        plots.save_synthetic_grid(
            os.path.join(workdir, f"synthetic_task{task}.png"), gen_state.variables, teacher_vars,
            jax.random.fold_in(root_key, 40_000 + task), generator=generator, teacher=model,
            spec=spec, task=task, mean=data.mean, std=data.std, write=is_main)

    # A fresh optimizer per task (spec §3.1); momentum carries over between phases of a task.
    # Class counts (for the fine-tuning class weights) restart every task.
    state = state.replace(aux_params=aux_init(task))  # R-DFCIL's RKD projections are per task
    state = state.replace(opt_state=tx.init(state.trainable),
                          class_counts=jnp.zeros_like(state.class_counts))
    weights = {k: jnp.float32(v) for k, v in learners.loss_weights(
        config.distill, config.method, num_old=num_old, num_new=num_seen - num_old).items()}
    # replicated on the mesh like the later fns.class_weights outputs: one compile of the steps
    class_weights = parallel.replicate(np.ones((spec.num_classes,), np.float32), mesh)
    step_in_task = 0
    for phase in task_phases(config, learner, task):
      mask = trainable_mask(state, tasks_seen=task + 1, backbone=phase.name == "main")
      step_fn = fns.ce_step
      if distilling:
        step_fn = fns.distill_main_step if phase.name == "main" else fns.distill_finetune_step
      for epoch in range(phase.first_epoch, phase.first_epoch + phase.num_epochs):
        lr = optim.learning_rate(config.optim, epoch=epoch, finetune=phase.name == "finetune")
        hparams = {"lr": jnp.float32(lr), "num_seen": jnp.int32(num_seen), "trainable": mask}
        extra = ()
        if distilling:
          hparams.update(num_old=jnp.int32(num_old), weights=weights, class_weights=class_weights)
          extra = (teacher_vars, gen_state.variables)
        batches = input_pipeline.epoch_batches(len(idx), batch_size, seed=config.seed,
                                               task=task, epoch=epoch)
        epoch_start, epoch_metrics, interval = time.time(), [], []
        for batch_idx in batches:
          sel = idx[parallel.process_batch_indices(batch_idx, mesh)]  # this process's rows
          batch = parallel.global_batch(
              {"images": data.train_images[sel], "labels": train_labels[sel]}, mesh)
          step_start = time.time()
          state, step_metrics = step_fn(state, batch, jax.random.fold_in(task_key, step_in_task),
                                        hparams, *extra)
          if done_steps == 0:
            jax.block_until_ready(state)
            steady_start = time.time()
            logging.info("compiled and ran the first train step in %.1fs", steady_start - step_start)
          step_in_task += 1
          done_steps += 1
          epoch_metrics.append(step_metrics)
          interval.append(step_metrics)
          if done_steps % config.log.every_steps == 0:
            means = jax.device_get(jax.tree.map(lambda *v: jnp.mean(jnp.stack(v)), *interval))
            writer.write(done_steps, {"task": task, "epoch": epoch, "phase": phase.name,
                                      "train/lr": lr, **means})
            interval = []
        epoch_means = jax.device_get(jax.tree.map(lambda *v: jnp.mean(jnp.stack(v)),
                                                  *epoch_metrics))
        # R-DFCIL: class weights from this task's cumulative counts, refreshed every epoch end.
        class_weights = fns.class_weights(state.class_counts, jnp.int32(num_seen))
        if config.log.progress:  # device_get above synchronised, so wall times are real
          elapsed = time.time() - epoch_start
          per_step = (time.time() - steady_start) / max(done_steps - 1, 1)
          logging.info(
              "task %d/%d %-8s epoch %3d/%d  loss %.4f  acc %5.1f%%  lr %.4g  %6.0f img/s  "
              "ETA %s", task + 1, spec.num_tasks, phase.name, epoch + 1,
              phase.first_epoch + phase.num_epochs, epoch_means["train/loss"],
              100 * epoch_means["train/acc"], lr, len(batches) * batch_size / max(elapsed, 1e-9),
              _format_duration(per_step * (total_steps - done_steps)))

    # ---- Evaluate on the union of the seen classes' test sets.
    seen = test_labels < num_seen
    preds = predict(fns.eval_step, state.variables, data.test_images[seen], num_seen,
                    config.data.eval_batch_size, mesh)
    row = metrics.evaluate_predictions(predictions=preds, labels=test_labels[seen],
                                       task_of_label=spec.task_of_label(), task=task)
    rows.append(row)
    task_seconds.append(time.time() - task_start)
    eval_metrics = {"task": task, "eval/acc_seen": row.acc_seen, "eval/new_acc": row.new_acc,
                    **{f"eval/acc_task{j}": a for j, a in enumerate(row.per_task)}}
    if row.old_acc is not None:
      eval_metrics["eval/old_acc"] = row.old_acc
    writer.write(done_steps, eval_metrics)
    logging.info("task %d/%d done in %.0fs: A_t %.2f%%  old %s  new %.2f%%  per task %s",
                 task + 1, spec.num_tasks, task_seconds[-1], row.acc_seen,
                 "n/a" if row.old_acc is None else f"{row.old_acc:.2f}%", row.new_acc,
                 " ".join(f"{a:.1f}" for a in row.per_task))

  writer.close()
  results = {
      "method": config.method,
      "dataset": config.data.dataset,
      "num_tasks": spec.num_tasks,
      "task_sizes": list(spec.sizes),
      "class_order": list(spec.class_order),
      "seed": config.seed,
      **metrics.summarize(rows),
      "task_seconds": task_seconds,
      "wall_seconds": time.time() - run_start,
  }
  if is_main:
    writers.write_json(os.path.join(workdir, "results.json"), results)
    if config.log.images:
      plots.save_run_plots(workdir, results)
  return results
