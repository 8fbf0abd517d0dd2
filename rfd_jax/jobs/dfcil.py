"""The class-incremental job: per task, invert the previous model, train, fine-tune, evaluate.

One job for a plain run and for a group of runs (config.runs, rfd_jax.jobs.group): it steps R
runs at once (R = 1 for a plain run), its host data, checkpoints and records with a leading run
axis, its device arrays in the step form (rfd_jax.jobs.dfcil_run). A plain run writes its files in
the workdir, a group's runs each in WORKDIR/<method>/<run>/.

The run is a plan over one global step (rfd_jax.engine.plan.dfcil_plan): per task t the inversion (t >= 1,
learners that invert), the main phase, the head fine-tuning (rdfcil, rfd) and the evaluation, each
step counted once. rfd_jax.engine.loop runs it; this module says what each segment does (`DfcilJob`).
Keys and data order are functions of (seed, task, step in the task), i.e. of (seed, global step),
so a run resumed from the checkpoint of step s continues exactly as the uninterrupted run.

Jitted functions are built once per run: the task index, number of seen classes, learning rate and
trainable mask enter the steps as data, so nothing recompiles between tasks.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from rfd_jax.engine import checkpointing, errors, evaluation, loop, parallel, plan as plan_lib, timing, writers
from rfd_jax.jobs import dfcil_run, group, plots, settings
from rfd_jax.methods import metrics
from rfd_jax.data import datasets, image_decode, sources
from rfd_jax.engine.state import trainable_mask


# Host-fed lazily decoded images: batches of the epoch decoded ahead of the step that needs them.
PREFETCH_STEPS = 4


class DfcilJob:
  """What each segment of the class-incremental plan does (rfd_jax.engine.loop.Job), for the R
  runs of `run` at once (arrays in the step form, rfd_jax.jobs.dfcil_run)."""

  def __init__(self, run: dfcil_run.Run, rs: dfcil_run.RunState, writer: writers.RunWriters):
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
    kind, hparams, distilling = segment_hparams(self.run, self.rs.state, name, task)
    return self.run.fns.train_fn(kind, self.run.train_data is not None), hparams, distilling

  @functools.lru_cache(maxsize=4)
  def _epoch_batches(self, task: int, epoch: int) -> np.ndarray:
    """Each run's batches of the epoch as positions in its task data: (R, steps, B)."""
    return np.stack([datasets.epoch_batches(len(idx[task]), self.run.config.data.batch_size,
                                            seed=m.config.seed, task=task, epoch=epoch)
                     for m, idx in zip(self.run.members, self.run.task_indices)])

  @functools.lru_cache(maxsize=2)
  def _task_key(self, task: int) -> jax.Array:
    return self.run.keys(task + 1)

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
        rs.gen_state = run.new_generator(task)
      self._inversion_start = time.time()
    elif segment.name == "main":
      # A fresh optimizer per task (spec §3.1); momentum carries over into the fine-tuning. Class
      # counts (for the fine-tuning class weights) restart every task, as the RKD projections.
      state = rs.state.replace(aux_params=run.aux(task))
      rs.state = state.replace(opt_state=run.map_runs(run.tx.init, state.trainable),
                               class_counts=jnp.zeros_like(state.class_counts))
      # placed like the later fns.class_weights outputs: one compile of the steps
      rs.class_weights = run.ones_class_weights()
    self._epoch_start, self._epoch_steps = time.time(), 0

  def run_block(self, position: plan_lib.Position, num_steps: int):
    self.step = position.step + num_steps
    segment = position.segment
    if segment.name == "inversion":
      if num_steps != segment.block_steps:  # only after a resume with another chunk size
        raise errors.ConfigError(
            f"the checkpoint is inside an inversion chunk ({self.run.plan.describe(position.step)})"
            f"; resume with the chunk size it was saved with (config.inversion.chunk_steps).")
      return self._invert(position)
    if segment.name == "eval":
      self._evaluate(position)
      return None
    return self._train_step(position, num_steps)

  def _invert(self, position: plan_lib.Position):
    run, rs, task = self.run, self.rs, position.segment.task
    rs.gen_state, chunk_metrics = run.fns.inversion_chunk(
        rs.gen_state, rs.teacher_vars, run.keys(30_000 + task),
        jnp.int32(run.spec.offsets[task]), jnp.int32(position.offset))
    return chunk_metrics

  def _train_step(self, position: plan_lib.Position, num_steps: int):
    """`num_steps` train steps from `position` (within one epoch): one call of the jitted block
    on device-resident data, or a host-fed step."""
    run, rs, segment = self.run, self.rs, position.segment
    task, epoch = segment.task, position.epoch
    step_fn, hparams, distilling = self._hparams(segment.name, task)
    hparams = {**hparams, "lr": self._lr(position.lr)}
    extra = ()
    if distilling:  # R-DFCIL's class weights change at epoch ends only
      hparams["class_weights"] = rs.class_weights
      extra = (rs.teacher_vars, rs.gen_state.variables)
    epoch_start = epoch * segment.epoch_steps  # the task's step at the epoch's first batch
    self._epoch_steps += num_steps
    if run.train_data is not None:
      rs.state, block_metrics = step_fn(
          num_steps, rs.state, run.train_data, self._epoch_rows(task, epoch),
          np.int32(position.step_in_epoch), self._task_key(task), np.int32(epoch_start), hparams,
          *extra)
      return block_metrics
    batch = self._host_batch(task, epoch, position.step_in_epoch)
    rs.state, step_metrics = step_fn(rs.state, batch, self._task_key(task),
                                     np.int32(epoch_start + position.step_in_epoch), hparams,
                                     *extra)
    return step_metrics

  @functools.lru_cache(maxsize=2)
  def _epoch_rows(self, task: int, epoch: int) -> jax.Array:
    """Each run's batches of the epoch as rows of its device-resident train set: int32
    (R, steps, B)."""
    batches = self._epoch_batches(task, epoch)
    return self.run.place(np.stack([idx[task][b] for idx, b in
                                    zip(self.run.task_indices, batches)]).astype(np.int32))

  def _host_batch(self, task: int, epoch: int, step_in_epoch: int) -> dict[str, jax.Array]:
    """This step's batch (one run) gathered on the host and placed on the mesh; lazily decoded
    images (ImageNet folders) decode the next `PREFETCH_STEPS` batches of the epoch in the
    background."""
    run = self.run
    idx, batches = run.task_indices[0][task], self._epoch_batches(task, epoch)[0]
    local = lambda i: idx[parallel.process_batch_indices(batches[i], run.mesh)]
    images = run.data.train_images
    image_decode.decode_ahead(images, local, step_in_epoch, len(batches), depth=PREFETCH_STEPS)
    sel = local(step_in_epoch)  # this process's rows
    return parallel.global_batch({"images": images[sel], "labels": run.train_labels[0][sel]},
                                 run.mesh)

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
          segment.first_epoch + segment.num_epochs, loop.display(means["train/loss"]),
          loop.display(means["train/acc"]), what,
          segment.lrs[epoch - segment.first_epoch],
          steps * run.config.data.batch_size / max(elapsed, 1e-9), eta)

  def exit(self, segment: plan_lib.Segment) -> None:
    run, rs, task = self.run, self.rs, segment.task
    if segment.name != "inversion":
      return
    if run.grouped:
      logging.info("task %d/%d: inverted the previous models of %d runs in %.0fs", task + 1,
                   run.spec.num_tasks, run.num_runs, time.time() - self._inversion_start)
    else:
      logging.info("task %d/%d: inverted the previous model (%d old classes) in %.0fs", task + 1,
                   run.spec.num_tasks, run.spec.offsets[task], time.time() - self._inversion_start)
    if run.config.log.images:
      keys = run.keys(40_000 + task)
      for r, (m, directory) in enumerate(zip(run.members, run.dirs)):
        plots.save_synthetic_grid(
            os.path.join(directory, f"synthetic_task{task + 1}.png"),
            run.take(rs.gen_state.variables, r), run.take(rs.teacher_vars, r), run.take(keys, r),
            generator=run.generator, teacher=run.model, spec=m.spec, task=task,
            mean=run.data.mean, std=run.data.std, write=parallel.is_main_process())

  def _evaluate(self, position: plan_lib.Position) -> None:
    """Each run's accuracy on its seen classes' test images: every run predicts the images any
    run has seen (one pass; a plain run: its own seen classes); appends the rows, logs them."""
    run, rs, task = self.run, self.rs, position.segment.task
    num_seen = run.spec.num_seen(task)
    seen_any = np.any(run.test_labels < num_seen, axis=0)
    preds = evaluation.predict(run.fns.eval_step, rs.state.variables,
                               run.data.test_images[seen_any], num_seen,
                               run.config.data.eval_batch_size, run.mesh)
    preds = preds.reshape(run.num_runs, -1)  # (R, N) also for one run
    rows = []
    for r, (m, labels) in enumerate(zip(run.members, run.test_labels[:, seen_any])):
      seen = labels < num_seen
      row = metrics.evaluate_predictions(predictions=preds[r][seen], labels=labels[seen],
                                         task_of_label=m.spec.task_of_label(), task=task)
      rows.append(row)
      record = {"task": task, "eval/acc_seen": row.acc_seen, "eval/new_acc": row.new_acc,
                **{f"eval/acc_task{j}": a for j, a in enumerate(row.per_task)}}
      if row.old_acc is not None:
        record["eval/old_acc"] = row.old_acc
      self.writer.runs[r].write(position.step + 1, record)
    rs.rows.append(rows)
    rs.task_seconds.append(time.time() - rs.task_start)
    if run.grouped:
      accs = [row.acc_seen for row in rows]
      logging.info("task %d/%d done in %.0fs: A_t %s (mean %.2f%%)", task + 1, run.spec.num_tasks,
                   rs.task_seconds[-1], " ".join(f"{m.name} {a:.2f}%" for m, a in
                                                  zip(run.members, accs)), np.mean(accs))
      return
    row = rows[0]
    logging.info("task %d/%d done in %.0fs: A_t %.2f%%  old %s  new %.2f%%  per task %s",
                 task + 1, run.spec.num_tasks, rs.task_seconds[-1], row.acc_seen,
                 "n/a" if row.old_acc is None else f"{row.old_acc:.2f}%", row.new_acc,
                 " ".join(f"{a:.1f}" for a in row.per_task))

  def checkpoint(self) -> tuple[dict[str, Any], dict[str, Any]]:
    """The arrays and record of a checkpoint at the current step. Nothing the rest of the run
    never reads is stored (what a resume restores is what the uninterrupted run would use): at a
    task boundary (and the end) no teacher, no generator unless the learner reuses it, and the
    student's optimizer state as zeros (the next task's main phase starts a fresh one); after
    an inversion the generator's Adam state as zeros (only a reused generator runs Adam again).
    Zeros keep the tree the restore expects and compress to almost nothing."""
    rs, plan = self.rs, self.run.plan
    segment = plan.locate(self.step).segment if self.step < plan.total_steps else None
    boundary = segment is None or self.step in self._task_starts
    reuse = self.run.learner.reuse_generator
    state = rs.state
    if boundary:
      state = state.replace(opt_state=_zeros_like(state.opt_state))
    arrays = {"state": state, "class_weights": rs.class_weights}
    if rs.teacher_vars is not None and not boundary:
      arrays["teacher"] = rs.teacher_vars  # not needed at a task boundary: the next one renews it
    if rs.gen_state is not None and (reuse or not boundary):
      generator = rs.gen_state
      if not reuse and segment.name != "inversion":
        generator = generator.replace(opt_state=_zeros_like(generator.opt_state))
      arrays["generator"] = generator
    arrays = self.run.with_run_axis(arrays)
    meta = {"layout": dfcil_run.LAYOUT, "runs": [m.name for m in self.run.members],
            "task": segment.task if segment else len(rs.rows),
            "segment": segment.name if segment else "done",
            "rows": rs.rows_json(), "task_seconds": rs.task_seconds,
            "task_elapsed": time.time() - rs.task_start}
    return arrays, meta


def _zeros_like(tree: Any) -> Any:
  """Zeros shaped, typed and placed as `tree`'s leaves: state a checkpoint need not keep."""
  return jax.tree.map(lambda x: jnp.zeros_like(x, device=x.sharding), tree)


def segment_hparams(run: dfcil_run.Run, state, name: str, task: int) -> tuple[str, dict, bool]:
  """What a train segment ("main" or "finetune" of `task`) calls: (its kind, steps.TRAIN_KINDS,
  for run.fns.train_fn; its hparams without "lr" and "class_weights"; whether it distills).
  Shared by the job and rfd_jax.tools.aot, which compiles the same calls."""
  config = run.config
  num_seen, num_old = run.spec.num_seen(task), int(run.spec.offsets[task])
  distilling = run.learner.uses_inversion and task > 0
  # ABD trains every row of its head from the start (its CE runs over all outputs)
  heads = run.spec.num_tasks if run.learner.ce_over_all_outputs else task + 1
  # on the device once per segment: as numpy scalars the mask's ~100 leaves would be transferred
  # at every step (issue "Accelerator path": 2.96 vs 1.71 ms per call)
  mask = trainable_mask(state, tasks_seen=heads, backbone=name == "main")
  hparams = {"num_seen": jnp.int32(num_seen),
             "trainable": dfcil_run.placed(mask, parallel.replicated(run.mesh), run.abstract)}
  kind = "ce"
  if distilling:
    kind = f"distill_{name}"
    weights = run.learner.loss_weights(config.distill, num_old=num_old,
                                       num_new=num_seen - num_old)
    hparams.update(num_old=jnp.int32(num_old),
                   weights={k: jnp.float32(v) for k, v in weights.items()})
  return kind, hparams, distilling


# ---- The whole job. -----------------------------------------------------------------------------


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) the class-incremental experiment of `config`: its run, or every run of a
  group (config.runs, rfd_jax.jobs.group). Returns results.json, or for a group {run name: its
  results.json}.

  A checkpoint is read (and a resume refused) before the data is loaded, so that a refused resume
  fails fast.

  Raises:
    errors.ConfigError: a bad config, or a refused resume (ConfigMismatchError, an earlier
      checkpoint layout).
    checkpointing.Preempted: stopped on SIGTERM/SIGINT after saving a checkpoint.
    checkpointing.NonFiniteError: a loss became NaN/inf; nothing saved after the last check.
  """
  invocation_start = time.time()
  members = group.members(config)
  grouped = group.is_group(config)
  mesh = parallel.job_mesh(batch_size=config.data.batch_size,
                         eval_batch_size=config.data.eval_batch_size)
  group.check(config, members, mesh.devices.size, num_processes=jax.process_count())
  os.makedirs(workdir, exist_ok=True)
  parts = dfcil_run.parts_of(config, mesh, members)  # the job's setup: built once from the config
  abstract = dfcil_run.abstract_arrays(parts)
  resumed = checkpointing.resume(
      settings.resume_settings(config), workdir,
      lambda meta: {k: abstract[k] for k in meta["arrays"]}, check_meta=dfcil_run.check_layout)
  dirs = group.run_dirs(workdir, config, members)
  if parallel.is_main_process():  # only process 0 writes files
    writers.write_json(os.path.join(workdir, "config.json"), config.to_dict())
    if grouped:
      for m, directory in zip(members, dirs):
        os.makedirs(directory, exist_ok=True)
        writers.write_json(os.path.join(directory, "config.json"), m.config.to_dict())
  run = dfcil_run.build_run(parts, workdir, sources.load_dataset(config.data))
  if resumed.restored is not None:
    rs = dfcil_run.RunState.restored(run, resumed.restored.arrays, resumed.meta)
    logging.info("resumed %sat %s", "the group " if grouped else "",
                 run.plan.describe(resumed.step))
  else:
    rs = dfcil_run.RunState.fresh(run)
  kept = resumed.metrics_records
  kept = kept if isinstance(kept, list) else [kept] * len(members)
  writer = writers.RunWriters([
      writers.MetricWriter(d, enabled=parallel.is_main_process(), hparams=m.config.to_dict(),
                           keep_records=k) for m, d, k in zip(members, dirs, kept)])
  wall = run_job(DfcilJob(run, rs, writer), config, workdir, resumed, invocation_start)
  results = {}
  for r, (m, directory) in enumerate(zip(members, dirs)):
    results[m.name] = results_record(m.config, m.spec, [rows[r] for rows in rs.rows],
                                     rs.task_seconds, run.plan, wall)
    if parallel.is_main_process():
      writers.write_json(os.path.join(directory, "results.json"), results[m.name])
      if config.log.images:
        plots.save_run_plots(directory, results[m.name])
  return results if grouped else results[members[0].name]


def run_job(job: DfcilJob, config, workdir: str, resumed: checkpointing.Resume,
            invocation_start: float) -> dict:
  """Runs the job's plan from the resumed step (checkpoints kept at every task end), closes its
  writer; returns the wall times of results.json."""
  job.step = resumed.step
  try:
    runner = loop.run_plan(job.run.plan, job, settings=settings.loop_settings(config),
                           workdir=workdir, resumed=resumed, writer=job.writer,
                           invocation_start=invocation_start,
                           keep_steps=job.run.plan.task_end_steps())
  finally:
    job.writer.close()
  return timing.wall_times(runner.earlier_invocations, invocation_start)


def results_record(config, spec, rows: list[metrics.EvalRow], task_seconds: list[float],
                   plan: plan_lib.Plan, wall_times: dict) -> dict:
  """results.json of a finished run."""
  return {
      "method": config.method,
      "dataset": config.data.dataset,
      "num_tasks": spec.num_tasks,
      "task_sizes": list(spec.sizes),
      "class_order": list(spec.class_order),
      "seed": config.seed,
      **metrics.summarize(rows),
      "task_seconds": task_seconds,
      "task_end_steps": plan.task_end_steps(),  # checkpoints/<step> after each task, kept
      **wall_times,
  }
