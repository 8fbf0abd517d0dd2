"""The `dfkd` job: RGAL data-free knowledge distillation, teacher → student (spec rgal.md §2–§4).

  python -m rfd_jax.main --config configs/dfkd_digits.py --config.teacher_ckpt=runs/teacher_digits

Every epoch:
  1. synthesis (§3): a freshly initialised CMI generator and latents z, Adam, `synthesis.iterations`
     steps against the frozen teacher and the frozen (eval-mode) student, minimising
       bn·L_bn + oh·CE(teacher, random targets) + adv·L_adv + triplet·L_tri
     (L_tri: focal weighted negative sampling in teacher-logit space, triplet loss on the student's
     pooled stage features, direction `rgal.syn_triplet_direction`); the lowest-loss batch is
     quantised to uint8 and appended to the image pool.
  2. student training (§4): `student.kd_steps` SGD steps on uniform pool batches, each image as two
     augmented views, minimising KD(T) + cd·CD + striplet·L_tri(distance-weighted sampling).
  3. top-1 accuracy of the student on the real test set.
Switching terms off gives the baselines: DeepInversion-style (adv = triplet = 0) and DFQ/CMI-style
adversarial (triplet = 0); `configs/dfkd_digits.py` lists the sweep entries.

The run is a plan over one global step (rfd_jax.engine.plan.dfkd_plan: per epoch the synthesis
iterations, the student steps, the evaluation) run by rfd_jax.engine.loop. The synthesis round runs in
chunks of `synthesis.chunk_steps` iterations (one plan block each): a jitted lax.scan per chunk on
accelerators, a host loop over one jitted step on CPU (`synthesis.loop`), data-parallel with the
latents, targets and best batch split over the devices (dfkd_steps.make_synthesis_chunk_fn).
Checkpoints are keyed by the global step: after every evaluation, every `ckpt.every_steps` steps
(at chunk ends inside a round) and on SIGTERM/SIGINT; they hold the student, its optimizer, the
pool and, inside a synthesis round, the round's generator, latents, Adam state and best batch.
Every random draw is a function of (seed, epoch, iteration or step), so a run resumed from any
checkpoint ends with the same numbers as the uninterrupted run.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rfd_jax.engine import checkpointing, errors, evaluation, loop, optim, parallel, plan as plan_lib, timing, writers
from rfd_jax.jobs import dfkd_steps, settings, teacher as teacher_lib
from rfd_jax.data import augment, datasets, sources
from rfd_jax.models import dfkd_nets
from rfd_jax.models.cmi_generator import CmiGenerator
from rfd_jax.models import layers
from rfd_jax.models.layers import conv_compute_dtype

DIRECTIONS = ("paper", "released_code")
LOOPS = ("auto", "scan", "host")


# ---- The job ----------------------------------------------------------------------------------


def validate(config) -> None:
  teacher_lib.validate(config)
  if config.rgal.syn_triplet_direction not in DIRECTIONS:
    raise errors.ConfigError(
        f"config.rgal.syn_triplet_direction={config.rgal.syn_triplet_direction!r} is unknown; "
        f"expected one of {DIRECTIONS}.")
  for field in ("bn", "oh", "adv", "triplet", "cd", "striplet"):
    if config.rgal[field] < 0:
      raise errors.ConfigError(f"config.rgal.{field}={config.rgal[field]} must be >= 0.")
  syn = config.synthesis
  for name, value in (("synthesis.iterations", syn.iterations),
                      ("synthesis.batch_size", syn.batch_size),
                      ("student.kd_steps", config.student.kd_steps)):
    if value < 1:
      raise errors.ConfigError(f"config.{name}={value} must be >= 1.")
  if syn.chunk_steps < 1 or syn.iterations % syn.chunk_steps:
    raise errors.ConfigError(
        f"config.synthesis.chunk_steps={syn.chunk_steps} must be >= 1 and divide "
        f"config.synthesis.iterations={syn.iterations}.")
  if syn.loop not in LOOPS:
    raise errors.ConfigError(
        f"config.synthesis.loop={syn.loop!r}: expected one of {LOOPS}.")
  if syn.get("upsample", "auto") not in layers.UPSAMPLE_CHOICES:
    raise errors.ConfigError(f"config.synthesis.upsample={syn.upsample!r}: expected one of "
                             f"{layers.UPSAMPLE_CHOICES}.")
  start, stop = config.rgal.triplet_layers
  if not 0 <= start < stop:
    raise errors.ConfigError(
        f"config.rgal.triplet_layers={tuple(config.rgal.triplet_layers)} must be (start, stop) "
        "with 0 <= start < stop: the student stages whose pooled features the synthesis triplet "
        "uses (spec §3.5: (2, 4)).")


def _stage_dims(model: nn.Module, variables, image_size: int) -> dict[str, int]:
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, image_size, image_size, 3)),
                                             train=False), variables)
  return {name: out[1][name].shape[-1] for name in model.stage_names}


def build_fns(config, nets: dict[str, Any], *, mean, std, mesh) -> dict[str, Any]:
  """The job's jitted functions (one compile each per run): "synth_init" (key → a round's
  synthesis state), "synth_chunk" (see dfkd_steps.make_synthesis_chunk_fn), "draw_targets" (key →
  the round's sorted targets (S,)), "quantize" (the round's best images → uint8 pool images),
  "train_step" (the student step) and "eval_fn" (the student's predictions). Shared by the job and
  rfd_jax.tools.aot."""
  rgal, syn, state_sharding = config.rgal, config.synthesis, nets["synthesis_sharding"]
  augmentation = augment.Augmentation.from_config(config.data)
  rep, batch = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  num_classes = nets["student"].num_classes
  return {
      "synth_init": jax.jit(functools.partial(
          dfkd_steps.init_synthesis, generator=nets["generator"], batch_size=syn.batch_size,
          tx=nets["gen_tx"]), out_shardings=state_sharding),
      "synth_chunk": dfkd_steps.make_synthesis_chunk_fn(
          mesh=mesh, state_sharding=state_sharding, chunk_steps=syn.chunk_steps, loop=syn.loop,
          tx=nets["gen_tx"], generator=nets["generator"], teacher=nets["teacher"],
          student=nets["student"],
          weights={k: float(rgal[k]) for k in ("bn", "oh", "adv", "triplet")}, mean=mean, std=std,
          augmentation=augmentation, triplet_layers=nets["triplet_layers"],
          swap=rgal.syn_triplet_direction == "paper"),
      "draw_targets": jax.jit(lambda key: jnp.sort(jax.random.randint(
          key, (syn.batch_size,), 0, num_classes)), out_shardings=batch),
      "quantize": jax.jit(dfkd_steps.quantize, out_shardings=rep),  # the pool: every host's
      "train_step": jax.jit(functools.partial(
          dfkd_steps.student_step, student=nets["student"], teacher=nets["teacher"],
          tx=nets["tx"], weight_decay=config.optim.weight_decay, mean=mean, std=std,
          augmentation=augmentation, pair_sample=config.student.pair_sample, pairs=nets["pairs"],
          weights={"cd": float(rgal.cd), "striplet": float(rgal.striplet)},
          temperature=float(rgal.kd_temperature)), donate_argnums=(0,)),
      "eval_fn": evaluation.make_eval_fn(nets["student"], mean=mean, std=std, mesh=mesh),
  }


def build_nets(config, teacher: nn.Module, teacher_vars, mesh) -> dict[str, Any]:
  """The student, the generator, the optimizers, the stage pairs and the synthesis state's shape
  and sharding, around a loaded (or, for rfd_jax.tools.aot, abstract) teacher. Raises ConfigError
  when config.rgal.triplet_layers selects no stage of the student."""
  size, syn = config.data.image_size, config.synthesis
  info = datasets.dataset_info(config.data.dataset)
  student = dfkd_nets.build_classifier(config.model.name, info.num_classes, dtype=config.dtype)
  triplet_layers = tuple(student.stage_names[slice(*config.rgal.triplet_layers)])
  if not triplet_layers:
    raise errors.ConfigError(
        f"config.rgal.triplet_layers={tuple(config.rgal.triplet_layers)} selects none of the "
        f"student's stages {student.stage_names}.")
  nets = dict(student=student, teacher=teacher, teacher_vars=teacher_vars,
              generator=CmiGenerator(
                  nz=syn.nz, ngf=syn.ngf, img_size=size,
                  conv_dtype=conv_compute_dtype(config.dtype),
                  upsample_phases=layers.resolve_upsample(syn.get("upsample", "auto"),
                                                          mesh.devices.flat[0].platform)),
              gen_tx=optax.adam(syn.lr, b1=syn.beta1, b2=syn.beta2),
              tx=optim.momentum_transform(config.optim.momentum),
              pairs=dfkd_steps.stage_pairs(student, teacher), triplet_layers=triplet_layers)
  nets["synthesis_shape"] = jax.eval_shape(functools.partial(
      dfkd_steps.init_synthesis, generator=nets["generator"], batch_size=syn.batch_size,
      tx=nets["gen_tx"]), jax.random.key(0))
  nets["synthesis_sharding"] = dfkd_steps.synthesis_shardings(nets["synthesis_shape"],
                                                              nets["gen_tx"], mesh)
  return nets


def fresh_student(config, nets: dict[str, Any]) -> dfkd_steps.StudentState:
  """The untrained student and its projections onto the teacher's stages (from config.seed)."""
  size, student, teacher = config.data.image_size, nets["student"], nets["teacher"]
  rng_s, rng_p = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), 0))
  variables = student.init(rng_s, jnp.zeros((1, size, size, 3), jnp.float32), train=False)
  proj = dfkd_steps.init_projections(rng_p, _stage_dims(student, variables, size),
                                     _stage_dims(teacher, nets["teacher_vars"], size),
                                     nets["pairs"])
  return dfkd_steps.StudentState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                                 batch_stats=variables["batch_stats"], proj=proj,
                                 opt_state=nets["tx"].init({"student": variables["params"],
                                                            "proj": proj}))


def plan_of(config) -> plan_lib.Plan:
  """The job's plan: per epoch a synthesis round, the student's steps, the evaluation."""
  syn = config.synthesis
  return plan_lib.dfkd_plan(epochs=config.optim.epochs, synthesis_iterations=syn.iterations,
                            synthesis_block=syn.chunk_steps, student_steps=config.student.kd_steps,
                            lr=config.optim.lr)


class DfkdJob:
  """What each segment of the dfkd plan does (rfd_jax.engine.loop.Job): a synthesis round whose best batch
  joins the pool, the student's training on the pool, the evaluation.

  Every key and pool draw is a function of (seed, epoch, step in the segment), and a checkpoint
  holds the student, the pool and, inside a synthesis round, the round's state: so a run resumed
  from any global step ends with the same numbers as the uninterrupted run.
  """

  def __init__(self, *, config, nets: dict[str, Any], data, mesh, state: dfkd_steps.StudentState,
               pool: np.ndarray, synthesis: dfkd_steps.SynthesisState | None, accuracies: list[float],
               writer: writers.MetricWriter):
    self.config, self.data, self.mesh, self.writer = config, data, mesh, writer
    self.state, self.pool, self.synthesis, self.accuracies = state, pool, synthesis, accuracies
    self.teacher_vars = nets["teacher_vars"]
    self.num_classes = nets["student"].num_classes
    self.root = jax.random.key(config.seed)
    fns = build_fns(config, nets, mean=data.mean, std=data.std, mesh=mesh)
    self.synth_init, self.synth_chunk = fns["synth_init"], fns["synth_chunk"]
    self.draw_targets, self.quantize = fns["draw_targets"], fns["quantize"]
    self.train_step, self.eval_fn = fns["train_step"], fns["eval_fn"]
    self._epoch_start, self._student_means, self._eta = time.time(), {}, "?"
    self._synthesis_metrics = None  # the means of the round's last chunk, on device

  # ---- Keys and draws: functions of (seed, epoch, step). ----------------------------------------

  def _synthesis_key(self, epoch: int) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(self.root, 1), epoch)

  @functools.lru_cache(maxsize=1)
  def _targets(self, epoch: int) -> jax.Array:
    """The round's random teacher targets (S,), sorted, split on "data"."""
    return self.draw_targets(jax.random.fold_in(self._synthesis_key(epoch), 0))

  @functools.lru_cache(maxsize=1)
  def _pool_draws(self, epoch: int, pool_size: int) -> np.ndarray:
    """The pool indices of every student step of the epoch (kd_steps, B), uniform with
    replacement; drawn at once, they equal the draws made one step after the other."""
    return np.random.default_rng([self.config.seed, epoch]).integers(
        0, pool_size, (self.config.student.kd_steps, self.config.data.batch_size))

  @functools.lru_cache(maxsize=1)
  def _lr(self, lr: float) -> jax.Array:
    return jnp.float32(lr)

  # ---- loop.Job. -----------------------------------------------------------------------------

  def enter(self, segment: plan_lib.Segment) -> None:
    if segment.name == "synthesis":  # a fresh generator, latents and Adam every round
      self._epoch_start, self._student_means = time.time(), {}
      self.synthesis = self.synth_init(jax.random.fold_in(
          self._synthesis_key(segment.first_epoch), 1))

  def run_block(self, position: plan_lib.Position, num_steps: int):
    del num_steps  # synthesis.chunk_steps in a round, else 1
    name, epoch = position.segment.name, position.epoch
    if name == "synthesis":
      # the student is frozen during the round: its current variables are the round's. Iteration
      # i of the round uses fold_in(key, i), in the scan and the host loop alike.
      self.synthesis, self._synthesis_metrics = self.synth_chunk(
          self.synthesis, self.teacher_vars, self.state.variables, self._targets(epoch),
          jax.random.fold_in(self._synthesis_key(epoch), 2), np.int32(position.offset))
      return self._synthesis_metrics
    if name == "student":
      step = position.step_in_epoch
      rows = parallel.process_batch_indices(self._pool_draws(epoch, len(self.pool))[step],
                                            self.mesh)
      rng = jax.random.fold_in(jax.random.fold_in(self.root, 2), epoch)
      self.state, step_metrics = self.train_step(
          self.state, parallel.global_batch(self.pool[rows], self.mesh), self.teacher_vars,
          jax.random.fold_in(rng, step), self._lr(position.lr))
      return step_metrics
    self._evaluate(position)
    return None

  def end_epoch(self, segment: plan_lib.Segment, epoch: int, means: dict[str, float],
                eta: str) -> None:
    del segment, epoch
    self._student_means, self._eta = means, eta

  def exit(self, segment: plan_lib.Segment) -> None:
    if segment.name != "synthesis":
      return
    self.pool = np.concatenate([self.pool,
                                np.asarray(self.quantize(self.synthesis.best_images))])
    if self.config.log.progress and self._synthesis_metrics is not None:
      m = jax.device_get(self._synthesis_metrics)
      logging.info("epoch %3d/%d synthesis: loss %.3f (bn %.3f oh %.3f adv %.3f tri %.3f) over the "
                   "last %d of %d iterations, best %.3f; pool %d  (%.1f s)",
                   segment.first_epoch + 1, self.config.optim.epochs, m["synthesis/loss"],
                   m["synthesis/loss_bn"], m["synthesis/loss_oh"], m["synthesis/loss_adv"],
                   m["synthesis/loss_triplet"], segment.block_steps, segment.num_steps,
                   float(self.synthesis.best_loss), len(self.pool), time.time() - self._epoch_start)
    self.synthesis, self._synthesis_metrics = None, None

  def _evaluate(self, position: plan_lib.Position) -> None:
    acc = evaluation.top1_accuracy(self.eval_fn, self.state.variables, self.data.test_images,
                                   self.data.test_labels.astype(np.int32),
                                   num_classes=self.num_classes,
                                   batch_size=self.config.data.eval_batch_size, mesh=self.mesh)
    self.accuracies.append(acc)
    epoch, means = position.epoch, self._student_means
    self.writer.write(position.step + 1,
                      {"epoch": epoch, "eval/accuracy": acc, "pool_size": len(self.pool)})
    if self.config.log.progress:
      nan = float("nan")
      logging.info("epoch %3d/%d student: loss %.3f (kd %.3f cd %.3f tri %.3f)  lr %.4f  test acc "
                   "%.2f%% (best %.2f%%)  %.1f s  ETA %s", epoch + 1, self.config.optim.epochs,
                   *(means.get(f"train/{k}", nan) for k in ("loss", "loss_kd", "loss_cd",
                                                             "loss_triplet")),
                   plan_lib.cosine_lr(self.config.optim.lr, epoch, self.config.optim.epochs), acc,
                   max(self.accuracies), time.time() - self._epoch_start, self._eta)

  def checkpoint(self) -> tuple[dict[str, Any], dict[str, Any]]:
    arrays = {"state": self.state}
    if len(self.pool):
      arrays["pool"] = self.pool
    if self.synthesis is not None:  # inside a round
      arrays["synthesis"] = self.synthesis
    return arrays, {"accuracies": self.accuracies, "pool_size": len(self.pool)}


def _check_resume_on_a_chunk(plan: plan_lib.Plan, step: int, chunk_steps: int) -> None:
  """A checkpoint inside a synthesis round taken with another chunk_steps (config.ckpt.
  allow_config_change) may fall inside a chunk of this run: refused, not run past the round."""
  if step < plan.total_steps:
    position = plan.locate(step)
    if position.segment.name == "synthesis" and position.offset % chunk_steps:
      raise errors.ConfigError(
          f"config.synthesis.chunk_steps={chunk_steps}: the checkpoint resumed is at synthesis "
          f"iteration {position.offset}, not at a chunk boundary; resume with the chunk_steps it "
          "was saved with.")


def train_dfkd(config, workdir: str) -> dict:
  """Runs (or resumes) the DFKD job of `config` in `workdir`; returns results.json's dict.

  Raises:
    errors.ConfigError: a bad config or teacher, or a refused resume.
    checkpointing.Preempted: stopped on SIGTERM/SIGINT after saving a checkpoint.
    checkpointing.NonFiniteError: a loss became NaN/inf; nothing saved after the last check.
  """
  invocation_start = time.time()
  validate(config)
  mesh = parallel.job_mesh(batch_size=config.data.batch_size,
                         eval_batch_size=config.data.eval_batch_size)
  parallel.check_batch_size(config.synthesis.batch_size, mesh, field="config.synthesis.batch_size")
  os.makedirs(workdir, exist_ok=True)
  size = config.data.image_size
  info = datasets.dataset_info(config.data.dataset)
  teacher, teacher_vars, teacher_meta = teacher_lib.load_teacher(
      config.teacher_ckpt, model_name=config.teacher_model, dataset=config.data.dataset,
      image_size=size, mesh=mesh)
  nets = build_nets(config, teacher, teacher_vars, mesh)
  syn = config.synthesis
  rep = parallel.replicated(mesh)
  abstract = {"state": checkpointing.abstract_like(
                  jax.eval_shape(functools.partial(fresh_student, config, nets)), rep),
              "synthesis": jax.tree.map(
                  lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                  nets["synthesis_shape"], nets["synthesis_sharding"])}

  def abstract_arrays(meta):
    pool = jax.ShapeDtypeStruct((meta["pool_size"], size, size, 3), np.uint8, sharding=rep)
    return {k: pool if k == "pool" else abstract[k] for k in meta["arrays"]}

  resumed = checkpointing.resume(settings.resume_settings(config), workdir, abstract_arrays)
  arrays = resumed.restored.arrays if resumed.restored is not None else {}
  state = arrays["state"] if arrays else parallel.replicate(fresh_student(config, nets), mesh)
  pool = (np.asarray(arrays["pool"]) if "pool" in arrays else
          np.zeros((0, size, size, 3), np.uint8))
  if parallel.is_main_process():
    writers.write_json(os.path.join(workdir, "config.json"), config.to_dict())

  data = sources.load_dataset(config.data)
  teacher_accuracy = evaluation.top1_accuracy(
      evaluation.make_eval_fn(teacher, mean=data.mean, std=data.std, mesh=mesh), teacher_vars,
      data.test_images, data.test_labels.astype(np.int32), num_classes=info.num_classes,
      batch_size=config.data.eval_batch_size, mesh=mesh)
  logging.info("teacher %s: %.2f%% on the %d test images", teacher_meta["config"]["model"]["name"],
               teacher_accuracy, len(data.test_labels))
  plan = plan_of(config)
  _check_resume_on_a_chunk(plan, resumed.step, syn.chunk_steps)
  logging.info("dfkd %s → %s on %s: %d epochs × (%d synthesis iterations at batch %d, %d student "
               "steps at batch %d%s); synthesis triplet on %s, direction %s%s",
               teacher_meta["config"]["model"]["name"], config.model.name, data.name,
               config.optim.epochs, syn.iterations, syn.batch_size, config.student.kd_steps,
               config.data.batch_size, " × 2 views" if config.student.pair_sample else "",
               list(nets["triplet_layers"]), config.rgal.syn_triplet_direction,
               f"; resuming at {plan.describe(resumed.step)}" if resumed.step else "")
  writer = writers.MetricWriter(workdir, enabled=parallel.is_main_process(),
                                hparams=config.to_dict(), keep_records=resumed.metrics_records)
  job = DfkdJob(config=config, nets=nets, data=data, mesh=mesh, state=state, pool=pool,
                synthesis=arrays.get("synthesis"),
                accuracies=list(resumed.meta.get("accuracies", [])), writer=writer)
  try:
    runner = loop.run_plan(plan, job, settings=settings.loop_settings(config), workdir=workdir,
                           resumed=resumed,
                           writer=writer, invocation_start=invocation_start)
  finally:
    writer.close()
  accuracies = job.accuracies
  results = {"job": "dfkd", "dataset": config.data.dataset,
             "teacher": teacher_meta["config"]["model"]["name"], "student": config.model.name,
             "seed": config.seed, "syn_triplet_direction": config.rgal.syn_triplet_direction,
             "teacher_accuracy": teacher_accuracy, "accuracy": accuracies[-1],
             "best_accuracy": max(accuracies), "accuracies": accuracies,
             "pool_size": len(job.pool),
             **timing.wall_times(runner.earlier_invocations, invocation_start)}
  if parallel.is_main_process():
    writers.write_json(os.path.join(workdir, "results.json"), results)
  return results
