"""The `teacher` job: trains a classifier on real data, the teacher of data-free KD (`dfkd`).

  python -m rfd_jax.main --config configs/teacher_digits.py --workdir runs/teacher_digits

Cross-entropy, SGD with momentum and weight decay (rfd_jax.engine.optim), cosine learning rate stepped per
epoch (the CMI / RGAL teacher recipe), the dataset's training augmentation. The run is a plan over
one global step (rfd_jax.engine.plan.teacher_plan: per epoch the training steps, then the evaluation) run
by rfd_jax.engine.loop; batch order and keys are functions of (seed, epoch, step in the epoch), so a run
resumed from any checkpoint ends with the same numbers. Checkpoints (params, batch_stats, optimizer
state) are keyed by the global step in WORKDIR/checkpoints, written after every evaluation (and
every `ckpt.every_steps` steps, and on SIGTERM/SIGINT); a `dfkd` config points `config.teacher_ckpt`
at WORKDIR. results.json has the test accuracy per epoch; the teacher is the model after the last
epoch (not the best epoch: no test-set selection).
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rfd_jax.engine import checkpointing, errors, evaluation, loop, optim, parallel, plan as plan_lib, timing, writers
from rfd_jax.methods import losses
from rfd_jax.data import augment, datasets, sources
from rfd_jax.models import dfkd_nets
from rfd_jax.jobs import settings


@flax.struct.dataclass
class ClassifierState:
  """A plain classifier and its optimizer (SGD momentum; the lr is passed per step)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any

  @property
  def variables(self) -> dict[str, Any]:
    return {"params": self.params, "batch_stats": self.batch_stats}


def create_classifier_state(model: nn.Module, rng: jax.Array, image_size: int,
                            tx: optax.GradientTransformation) -> ClassifierState:
  """tx: optim.momentum_transform."""
  variables = model.init(rng, jnp.zeros((1, image_size, image_size, 3), jnp.float32), train=False)
  return ClassifierState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                         batch_stats=variables["batch_stats"],
                         opt_state=tx.init(variables["params"]))


def classifier_step(state: ClassifierState, batch: dict[str, jax.Array], rng: jax.Array,
                    lr: jax.Array, *, model: nn.Module, tx: optax.GradientTransformation,
                    weight_decay: float, mean: np.ndarray, std: np.ndarray,
                    augmentation: augment.Augmentation
                    ) -> tuple[ClassifierState, dict[str, jax.Array]]:
  """One SGD step of cross-entropy on an augmented real batch ("images" uint8 (B, H, W, 3),
  "labels" int32 (B,)). Returns the new state and {"train/loss", "train/accuracy"} (batch means;
  the accuracy in percent, like the test accuracy)."""
  images = augment.augment(rng, augment.normalize(batch["images"], mean, std),
                           augmentation, mean, std)

  def loss_fn(params):
    (logits, _), updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                       images, train=True, mutable=["batch_stats"])
    loss = jnp.mean(losses.cross_entropy(logits=logits, labels=batch["labels"]))
    return loss, (updates["batch_stats"], logits)

  (loss, (batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  params, opt_state = optim.sgd_update(params=state.params, grads=grads, opt_state=state.opt_state,
                                       lr=lr, weight_decay=weight_decay, tx=tx)
  acc = 100.0 * jnp.mean(losses.accuracy(logits=logits, labels=batch["labels"]))
  return (state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                        opt_state=opt_state), {"train/loss": loss, "train/accuracy": acc})


def validate(config) -> datasets.DatasetInfo:
  """Checks the fields the teacher and dfkd jobs share; returns the dataset's info."""
  info = datasets.dataset_info(config.data.dataset)
  if config.model.name not in dfkd_nets.CLASSIFIER_NAMES:
    raise errors.ConfigError(
        f"config.model.name={config.model.name!r} is unknown for job "
        f"{config.get('job', 'dfcil')!r}; expected one of {dfkd_nets.CLASSIFIER_NAMES}.")
  if config.optim.epochs < 1:
    raise errors.ConfigError(f"config.optim.epochs={config.optim.epochs} must be >= 1.")
  for field, value in (("log.every_steps", config.log.get("every_steps", 0)),
                       ("ckpt.every_steps", config.ckpt.get("every_steps", 0))):
    if value < 0:
      raise errors.ConfigError(f"config.{field}={value} must be >= 0 (0: off).")
  if config.data.image_size % 4 or config.data.image_size < 8:
    raise errors.ConfigError(
        f"config.data.image_size={config.data.image_size} must be a multiple of 4 and >= 8.")
  if not info.resized and config.data.image_size != info.image_size:
    raise errors.ConfigError(
        f"config.data.image_size={config.data.image_size} must be {info.image_size} for "
        f"{config.data.dataset} (it is not resized).")
  return info


def build_fns(config, model: nn.Module, *, mean, std, mesh) -> tuple[Any, Any]:
  """The job's jitted functions: the train step (state, batch, rng, lr; the state donated) and
  the evaluation (evaluation.make_eval_fn). Shared by the job and rfd_jax.tools.aot."""
  train_step = jax.jit(functools.partial(
      classifier_step, model=model, tx=optim.momentum_transform(config.optim.momentum),
      weight_decay=config.optim.weight_decay, mean=mean, std=std,
      augmentation=augment.Augmentation.from_config(config.data)), donate_argnums=(0,))
  return train_step, evaluation.make_eval_fn(model, mean=mean, std=std, mesh=mesh)


class TeacherJob:
  """What each segment of the teacher plan does (rfd_jax.engine.loop.Job): an epoch of training steps,
  then the test-set evaluation."""

  def __init__(self, *, config, model, data, mesh, state: ClassifierState,
               accuracies: list[float], writer: writers.MetricWriter):
    self.config, self.data, self.mesh = config, data, mesh
    self.state, self.accuracies, self.writer = state, accuracies, writer
    self.labels = data.train_labels.astype(np.int32)
    self.root = jax.random.key(config.seed)
    self.train_step, self.eval_fn = build_fns(config, model, mean=data.mean, std=data.std,
                                              mesh=mesh)
    self.num_classes = model.num_classes
    self._epoch_start, self._train_means, self._eta = time.time(), {}, "?"

  @functools.lru_cache(maxsize=1)
  def _epoch_batches(self, epoch: int) -> np.ndarray:
    return datasets.epoch_batches(len(self.labels), self.config.data.batch_size,
                                  seed=self.config.seed, task=0, epoch=epoch)

  @functools.lru_cache(maxsize=1)
  def _lr(self, lr: float) -> jax.Array:
    return jnp.float32(lr)

  # ---- loop.Job. -----------------------------------------------------------------------------

  def enter(self, segment: plan_lib.Segment) -> None:
    if segment.name == "train":
      self._epoch_start, self._train_means = time.time(), {}

  def run_block(self, position: plan_lib.Position, num_steps: int):
    del num_steps  # 1
    if position.segment.name == "eval":
      self._evaluate(position)
      return None
    epoch, i = position.epoch, position.step_in_epoch
    rows = parallel.process_batch_indices(self._epoch_batches(epoch)[i], self.mesh)
    batch = parallel.global_batch({"images": self.data.train_images[rows],
                                   "labels": self.labels[rows]}, self.mesh)
    self.state, step_metrics = self.train_step(
        self.state, batch, jax.random.fold_in(jax.random.fold_in(self.root, 1 + epoch), i),
        self._lr(position.lr))
    return step_metrics

  def end_epoch(self, segment: plan_lib.Segment, epoch: int, means: dict[str, float],
                eta: str) -> None:
    del segment, epoch
    self._train_means, self._eta = means, eta

  def exit(self, segment: plan_lib.Segment) -> None:
    del segment

  def _evaluate(self, position: plan_lib.Position) -> None:
    acc = evaluation.top1_accuracy(self.eval_fn, self.state.variables, self.data.test_images,
                                   self.data.test_labels.astype(np.int32),
                                   num_classes=self.num_classes,
                                   batch_size=self.config.data.eval_batch_size, mesh=self.mesh)
    self.accuracies.append(acc)
    epoch = position.epoch
    self.writer.write(position.step + 1, {"epoch": epoch, "eval/accuracy": acc})
    if self.config.log.progress:
      logging.info("epoch %3d/%d  lr %.4f  loss %.4f  train acc %.1f%%  test acc %.2f%%  (%.1f s)  "
                   "ETA %s", epoch + 1, self.config.optim.epochs,
                   plan_lib.cosine_lr(self.config.optim.lr, epoch, self.config.optim.epochs),
                   self._train_means.get("train/loss", float("nan")),
                   self._train_means.get("train/accuracy", float("nan")), acc,
                   time.time() - self._epoch_start, self._eta)

  def checkpoint(self) -> tuple[dict[str, Any], dict[str, Any]]:
    return {"state": self.state}, {"accuracies": self.accuracies}


def train_teacher(config, workdir: str) -> dict:
  """Runs (or resumes) the teacher job of `config` in `workdir`; returns results.json's dict.

  Raises:
    errors.ConfigError: a bad config, or a refused resume.
    checkpointing.Preempted: stopped on SIGTERM/SIGINT after saving a checkpoint.
    checkpointing.NonFiniteError: a loss became NaN/inf; nothing saved after the last check.
  """
  invocation_start = time.time()
  info = validate(config)
  mesh = parallel.job_mesh(batch_size=config.data.batch_size,
                         eval_batch_size=config.data.eval_batch_size)
  os.makedirs(workdir, exist_ok=True)
  model = dfkd_nets.build_classifier(config.model.name, info.num_classes, dtype=config.dtype)
  tx = optim.momentum_transform(config.optim.momentum)
  rep = parallel.replicated(mesh)
  abstract = checkpointing.abstract_like(jax.eval_shape(
      lambda: create_classifier_state(model, jax.random.key(0), config.data.image_size, tx)), rep)
  resumed = checkpointing.resume(settings.resume_settings(config), workdir,
                                 lambda meta: {"state": abstract})
  if resumed.restored is not None:
    state = resumed.restored.arrays["state"]
  else:
    state = parallel.replicate(create_classifier_state(
        model, jax.random.fold_in(jax.random.key(config.seed), 0), config.data.image_size, tx),
        mesh)
  if parallel.is_main_process():
    writers.write_json(os.path.join(workdir, "config.json"), config.to_dict())

  data = sources.load_dataset(config.data)
  epoch_steps = len(data.train_labels) // config.data.batch_size
  plan = plan_lib.teacher_plan(epochs=config.optim.epochs, epoch_steps=epoch_steps,
                               lr=config.optim.lr)
  logging.info("teacher %s on %s: %d train / %d test images, %d epochs × %d steps%s",
               config.model.name, data.name, len(data.train_labels), len(data.test_labels),
               config.optim.epochs, epoch_steps,
               f"; resuming at {plan.describe(resumed.step)}" if resumed.step else "")
  writer = writers.MetricWriter(workdir, enabled=parallel.is_main_process(),
                                hparams=config.to_dict(), keep_records=resumed.metrics_records)
  job = TeacherJob(config=config, model=model, data=data, mesh=mesh, state=state,
                   accuracies=list(resumed.meta.get("accuracies", [])), writer=writer)
  try:
    runner = loop.run_plan(plan, job, settings=settings.loop_settings(config), workdir=workdir,
                           resumed=resumed,
                           writer=writer, invocation_start=invocation_start)
  finally:
    writer.close()
  accuracies = job.accuracies
  results = {"job": "teacher", "dataset": config.data.dataset, "model": config.model.name,
             "seed": config.seed, "accuracy": accuracies[-1], "best_accuracy": max(accuracies),
             "accuracies": accuracies,
             **timing.wall_times(runner.earlier_invocations, invocation_start)}
  if parallel.is_main_process():
    writers.write_json(os.path.join(workdir, "results.json"), results)
  return results


def check_teacher_checkpoint(path: str, *, model_name: str, dataset: str, image_size: int
                             ) -> tuple[str, int, dict]:
  """The newest checkpoint of a finished `teacher` run at `path`, checked without loading arrays:
  (checkpoints directory, checkpoint id, its JSON record). Reads only, so a dfkd run can call it
  before it creates its workdir.

  path: the teacher run's workdir, its checkpoints directory or one checkpoint. The teacher's
  model must be `model_name`, its dataset and image size the caller's.

  Raises:
    errors.ConfigError: no such run, no checkpoint, or a teacher that does not match.
  """
  if not path:
    raise errors.ConfigError(
        "config.teacher_ckpt is empty: train a teacher first (python -m rfd_jax.main --config "
        "configs/teacher_<dataset>.py --workdir runs/teacher_<dataset>) and pass "
        "--config.teacher_ckpt=runs/teacher_<dataset>.")
  if not os.path.exists(path):
    raise errors.ConfigError(
        f"config.teacher_ckpt={path!r} does not exist; expected a teacher run's workdir (train one "
        "with configs/teacher_<dataset>.py).")
  directory, only_id = checkpointing.locate(path)
  source = checkpointing.Checkpoints(directory, keep=1, read_only=True)
  try:
    ids = source.all_ids() if only_id is None else [only_id]
    if not ids:
      raise errors.ConfigError(f"config.teacher_ckpt={path!r} holds no checkpoint.")
    meta = source.read_meta(ids[-1])
  finally:
    source.close()
  saved = meta["config"]
  if saved.get("job") == "teacher" and "step" not in meta:
    raise errors.ConfigError(
        f"config.teacher_ckpt={path!r} was written by an older version (epoch checkpoints, another "
        "optimizer state); train the teacher again.")
  if saved.get("job") != "teacher":
    raise errors.ConfigError(
        f"config.teacher_ckpt={path!r} is a {saved.get('job', 'dfcil')!r} run, not a teacher "
        "run (configs/teacher_*.py).")
  for field, have, want in (("model.name", saved["model"]["name"], model_name),
                            ("data.dataset", saved["data"]["dataset"], dataset),
                            ("data.image_size", saved["data"]["image_size"], image_size)):
    if have != want:
      raise errors.ConfigError(
          f"config.teacher_ckpt={path!r} was trained with {field}={have!r}, this run expects "
          f"{want!r} (config.teacher_model / config.data); point it at a matching teacher run.")
  return directory, ids[-1], meta


def load_teacher(path: str, *, model_name: str, dataset: str, image_size: int, mesh
                 ) -> tuple[nn.Module, dict, dict]:
  """The classifier of a finished `teacher` run: (model, variables, its checkpoint record).

  path, model_name, dataset, image_size: as `check_teacher_checkpoint`.
  """
  directory, checkpoint_id, meta = check_teacher_checkpoint(
      path, model_name=model_name, dataset=dataset, image_size=image_size)
  saved = meta["config"]
  epochs_done = len(meta["accuracies"])
  if epochs_done < saved["optim"]["epochs"]:
    logging.warning("teacher %s stopped at %s", path, meta["position"])
  model = dfkd_nets.build_classifier(saved["model"]["name"],
                                     datasets.dataset_info(dataset).num_classes,
                                     dtype=saved.get("dtype", "float32"))
  tx = optim.momentum_transform(saved["optim"]["momentum"])
  abstract = jax.eval_shape(lambda: create_classifier_state(model, jax.random.key(0),
                                                            image_size, tx))
  abstract = checkpointing.abstract_like(abstract, parallel.replicated(mesh))
  source = checkpointing.Checkpoints(directory, keep=1, read_only=True)
  try:
    restored = source.restore(lambda _: {"state": abstract}, only_id=checkpoint_id)
  finally:
    source.close()
  if restored is None:
    raise errors.ConfigError(f"config.teacher_ckpt={path!r}: checkpoint unreadable.")
  logging.info("teacher %s from %s: %d epochs, test accuracy %s", saved["model"]["name"],
               restored.directory, epochs_done,
               f"{meta['accuracies'][-1]:.2f}%" if epochs_done else "n/a")
  return model, restored.arrays["state"].variables, meta
