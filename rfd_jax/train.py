"""The class-incremental outer loop: for each task, train the student, evaluate, record.

Jitted functions are built once per run: the task index, number of seen classes, learning rate and
trainable mask enter the steps as data, so nothing recompiles between tasks.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from rfd_jax import (config_validation, input_pipeline, metrics, optim, parallel, steps, tasks,
                     writers)
from rfd_jax.models.resnet import build_model
from rfd_jax.state import create_train_state, trainable_mask


@dataclasses.dataclass(frozen=True)
class Phase:
  """A contiguous block of epochs within a task that share one loss and trainable set."""
  name: str  # "main" or "finetune"
  first_epoch: int
  num_epochs: int


def task_phases(config, task: int) -> list[Phase]:
  """Epoch blocks of task `task`. Every learner trains E − E_ft main-phase epochs; learners with a
  head fine-tuning phase (added by the distillation methods) append E_ft epochs for task >= 1."""
  main_epochs = config.optim.epochs - config.optim.ft_epochs
  return [Phase("main", 0, main_epochs)]


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
  model = build_model(config.model, spec.sizes, dtype=config.dtype)
  tx = optim.momentum_transform(config.optim.momentum)
  root_key = jax.random.key(config.seed)
  state = parallel.replicate(create_train_state(model=model, rng=jax.random.fold_in(root_key, 0),
                                                image_size=config.data.image_size, tx=tx), mesh)
  # State, key and hparams replicated, batches split on "data" (BatchNorm sees the global batch).
  replicated, batch_sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  train_fn = jax.jit(functools.partial(
      steps.train_step, model=model, tx=tx, weight_decay=config.optim.weight_decay,
      mean=data.mean, std=data.std), donate_argnums=(0,),
      in_shardings=(replicated, batch_sharded, replicated, replicated), out_shardings=replicated)
  eval_fn = jax.jit(functools.partial(steps.eval_step, model=model, mean=data.mean, std=data.std),
                    in_shardings=(replicated, batch_sharded, replicated), out_shardings=replicated)

  total_steps = sum(
      sum(p.num_epochs for p in task_phases(config, t)) * (len(task_indices[t]) // batch_size)
      for t in range(spec.num_tasks))
  done_steps, steady_start = 0, 0.0  # steady_start: wall time when the first (compiling) step ended
  writer = writers.MetricWriter(workdir, enabled=is_main)
  rows: list[metrics.EvalRow] = []
  task_seconds = []

  for task in range(spec.num_tasks):
    task_start = time.time()
    num_seen = spec.num_seen(task)
    idx = task_indices[task]
    task_key = jax.random.fold_in(root_key, task + 1)
    # A fresh optimizer per task (spec §3.1); momentum carries over between phases of a task.
    state = state.replace(opt_state=tx.init(state.params))
    step_in_task = 0
    for phase in task_phases(config, task):
      mask = trainable_mask(state.params, tasks_seen=task + 1, backbone=phase.name == "main")
      for epoch in range(phase.first_epoch, phase.first_epoch + phase.num_epochs):
        lr = optim.learning_rate(config.optim, epoch=epoch, finetune=phase.name == "finetune")
        hparams = {"lr": jnp.float32(lr), "num_seen": jnp.int32(num_seen), "trainable": mask}
        batches = input_pipeline.epoch_batches(len(idx), batch_size, seed=config.seed,
                                               task=task, epoch=epoch)
        epoch_start, epoch_metrics, interval = time.time(), [], []
        for batch_idx in batches:
          sel = idx[parallel.process_batch_indices(batch_idx, mesh)]  # this process's rows
          batch = parallel.global_batch(
              {"images": data.train_images[sel], "labels": train_labels[sel]}, mesh)
          step_start = time.time()
          state, step_metrics = train_fn(state, batch, jax.random.fold_in(task_key, step_in_task),
                                         hparams)
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
                                      "lr": lr, **means})
            interval = []
        epoch_means = jax.device_get(jax.tree.map(lambda *v: jnp.mean(jnp.stack(v)),
                                                  *epoch_metrics))
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
    preds = predict(eval_fn, state.variables, data.test_images[seen], num_seen,
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
  return results
