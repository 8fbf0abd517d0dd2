"""The `teacher` job: trains a classifier on real data, the teacher of data-free KD (`dfkd`).

  python -m rfd_jax.main --config configs/teacher_digits.py --workdir runs/teacher_digits

Cross-entropy, SGD with momentum and weight decay, cosine learning rate stepped per epoch (the CMI /
RGAL teacher recipe), the dataset's training augmentation. Checkpoints (params, batch_stats,
optimizer state) are written at every epoch in WORKDIR/checkpoints; the run resumes from them, and
a `dfkd` config points `config.teacher_ckpt` at WORKDIR. results.json has the test accuracy per
epoch; the teacher is the model after the last epoch (not the best epoch: no test-set selection).
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

from rfd_jax import (checkpointing, config_validation, input_pipeline, jobs, losses, parallel,
                     writers)
from rfd_jax.models import dfkd_nets


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


def sgd(momentum: float, weight_decay: float) -> optax.GradientTransformation:
  """PyTorch SGD (dampening 0, no Nesterov) with L2 weight decay added to the gradient, lr
  applied outside (`apply_sgd`) so that it can change per epoch without recompiling."""
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.trace(decay=momentum))


def apply_sgd(tx, grads, opt_state, params, lr):
  direction, opt_state = tx.update(grads, opt_state, params)
  return jax.tree.map(lambda p, d: p - lr * d, params, direction), opt_state


def create_classifier_state(model: nn.Module, rng: jax.Array, image_size: int,
                            tx: optax.GradientTransformation) -> ClassifierState:
  variables = model.init(rng, jnp.zeros((1, image_size, image_size, 3), jnp.float32), train=False)
  return ClassifierState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                         batch_stats=variables["batch_stats"],
                         opt_state=tx.init(variables["params"]))


def classifier_step(state: ClassifierState, batch: dict[str, jax.Array], rng: jax.Array,
                    lr: jax.Array, *, model: nn.Module, tx: optax.GradientTransformation,
                    mean: np.ndarray, std: np.ndarray,
                    augmentation: input_pipeline.Augmentation
                    ) -> tuple[ClassifierState, dict[str, jax.Array]]:
  """One SGD step of cross-entropy on an augmented real batch ("images" uint8 (B, H, W, 3),
  "labels" int32 (B,)). Returns the new state and {"train/loss", "train/accuracy"} (batch means;
  the accuracy in percent, like the test accuracy)."""
  images = input_pipeline.augment(rng, input_pipeline.normalize(batch["images"], mean, std),
                                  augmentation, mean, std)

  def loss_fn(params):
    (logits, _), updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                       images, train=True, mutable=["batch_stats"])
    loss = jnp.mean(losses.cross_entropy(logits=logits, labels=batch["labels"]))
    return loss, (updates["batch_stats"], logits)

  (loss, (batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  params, opt_state = apply_sgd(tx, grads, state.opt_state, state.params, lr)
  acc = 100.0 * jnp.mean(losses.accuracy(logits=logits, labels=batch["labels"]))
  return (state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                        opt_state=opt_state), {"train/loss": loss, "train/accuracy": acc})


def validate(config) -> input_pipeline.DatasetInfo:
  info = input_pipeline.dataset_info(config.data.dataset)
  if config.model.name not in dfkd_nets.CLASSIFIER_NAMES:
    raise config_validation.ConfigError(
        f"config.model.name={config.model.name!r} is unknown for job {jobs.job_of(config)!r}; "
        f"expected one of {dfkd_nets.CLASSIFIER_NAMES}.")
  if config.optim.epochs < 1:
    raise config_validation.ConfigError(f"config.optim.epochs={config.optim.epochs} must be >= 1.")
  if config.data.image_size % 4 or config.data.image_size < 8:
    raise config_validation.ConfigError(
        f"config.data.image_size={config.data.image_size} must be a multiple of 4 and >= 8.")
  if not info.resized and config.data.image_size != info.image_size:
    raise config_validation.ConfigError(
        f"config.data.image_size={config.data.image_size} must be {info.image_size} for "
        f"{config.data.dataset} (it is not resized).")
  return info


def train_teacher(config, workdir: str) -> dict:
  """Runs (or resumes) the teacher job of `config` in `workdir`; returns results.json's dict."""
  run_start = time.time()
  validate(config)
  mesh = jobs.make_mesh_and_workdir(config, workdir)
  model = dfkd_nets.build_classifier(config.model.name, input_pipeline.dataset_info(
      config.data.dataset).num_classes, dtype=config.dtype)
  tx = sgd(config.optim.momentum, config.optim.weight_decay)
  root = jax.random.key(config.seed)
  rep = parallel.replicated(mesh)
  state = parallel.replicate(create_classifier_state(model, jax.random.fold_in(root, 0),
                                                     config.data.image_size, tx), mesh)
  ckpts = jobs.EpochCheckpoints.open(config, workdir)
  accuracies: list[float] = []
  earlier: list[float] = []  # wall seconds of the earlier invocations (checkpointing.wall_times)
  restored = ckpts.restore(lambda meta: {"state": checkpointing.abstract_like(state, rep)})
  if restored is not None:
    state, accuracies = restored.arrays["state"], list(restored.meta["accuracies"])
    earlier = restored.meta.get("invocation_seconds", [])
  if parallel.is_main_process():
    writers.write_json(os.path.join(workdir, "config.json"), config.to_dict())

  data = input_pipeline.load_dataset(config.data)
  labels = data.train_labels.astype(np.int32)
  batch = config.data.batch_size
  steps_per_epoch = len(labels) // batch
  step_fn = jax.jit(functools.partial(
      classifier_step, model=model, tx=tx, mean=data.mean, std=data.std,
      augmentation=input_pipeline.Augmentation.from_config(config.data)), donate_argnums=(0,))
  writer = writers.MetricWriter(  # only the records of the restored state (see MetricWriter)
      workdir, enabled=parallel.is_main_process(), hparams=config.to_dict(),
      keep_records=(restored.meta.get("metrics_records") if restored is not None else
                    0 if ckpts.checkpoints is not None else None))
  logging.info("teacher %s on %s: %d train / %d test images, %d epochs × %d steps", config.model.name,
               data.name, len(labels), len(data.test_labels), config.optim.epochs, steps_per_epoch)
  signals = checkpointing.StopSignals() if ckpts.checkpoints else checkpointing.no_stop_signals()
  try:
    with signals:
      for epoch in range(len(accuracies), config.optim.epochs):
        epoch_start = time.time()
        lr = jnp.float32(jobs.cosine_lr(config.optim.lr, epoch, config.optim.epochs))
        order = input_pipeline.epoch_batches(len(labels), batch, seed=config.seed, task=0,
                                             epoch=epoch)
        for i, idx in enumerate(order):
          local = parallel.process_batch_indices(idx, mesh)
          state, metrics = step_fn(state, parallel.global_batch(
              {"images": data.train_images[local], "labels": labels[local]}, mesh),
              jax.random.fold_in(jax.random.fold_in(root, 1 + epoch), i), lr)
        metrics = jax.device_get(metrics)
        jobs.raise_if_non_finite(metrics, f"epoch {epoch + 1}")
        acc = jobs.top1_accuracy(model, state.variables, data.test_images,
                                 data.test_labels.astype(np.int32), mean=data.mean, std=data.std,
                                 batch_size=config.data.eval_batch_size, mesh=mesh)
        accuracies.append(acc)
        writer.write(int(state.step), {**metrics, "eval/accuracy": acc, "train/lr": float(lr)})
        if config.log.progress:
          logging.info("epoch %3d/%d  lr %.4f  loss %.4f  test acc %.2f%%  (%.1f s)", epoch + 1,
                       config.optim.epochs, lr, metrics["train/loss"], acc,
                       time.time() - epoch_start)
        ckpts.save({"state": state}, {"epoch": epoch + 1, "accuracies": accuracies,
                                      "metrics_records": writer.records,
                                      "invocation_seconds": checkpointing.invocation_seconds(
                                          earlier, run_start)})
        if jobs.stop_requested(signals) and epoch + 1 < config.optim.epochs:
          raise checkpointing.Preempted(
              f"stopped on {signals.received} after epoch {epoch + 1}; checkpoint saved. Rerun "
              "the same command to resume.")
  finally:
    writer.close()
    ckpts.close()
  results = {"job": "teacher", "dataset": config.data.dataset, "model": config.model.name,
             "seed": config.seed, "accuracy": accuracies[-1], "best_accuracy": max(accuracies),
             "accuracies": accuracies, **checkpointing.wall_times(earlier, run_start)}
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
    config_validation.ConfigError: no such run, no checkpoint, or a teacher that does not match.
  """
  if not path:
    raise config_validation.ConfigError(
        "config.teacher_ckpt is empty: train a teacher first (python -m rfd_jax.main --config "
        "configs/teacher_<dataset>.py --workdir runs/teacher_<dataset>) and pass "
        "--config.teacher_ckpt=runs/teacher_<dataset>.")
  if not os.path.exists(path):
    raise config_validation.ConfigError(
        f"config.teacher_ckpt={path!r} does not exist; expected a teacher run's workdir (train one "
        "with configs/teacher_<dataset>.py).")
  directory, only_id = checkpointing.locate(path)
  source = checkpointing.Checkpoints(directory, keep=1, read_only=True)
  try:
    ids = source.all_ids() if only_id is None else [only_id]
    if not ids:
      raise config_validation.ConfigError(f"config.teacher_ckpt={path!r} holds no checkpoint.")
    meta = source.read_meta(ids[-1])
  finally:
    source.close()
  saved = meta["config"]
  if saved.get("job") != "teacher":
    raise config_validation.ConfigError(
        f"config.teacher_ckpt={path!r} is a {saved.get('job', 'dfcil')!r} run, not a teacher "
        "run (configs/teacher_*.py).")
  for field, have, want in (("model.name", saved["model"]["name"], model_name),
                            ("data.dataset", saved["data"]["dataset"], dataset),
                            ("data.image_size", saved["data"]["image_size"], image_size)):
    if have != want:
      raise config_validation.ConfigError(
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
  if meta["epoch"] < saved["optim"]["epochs"]:
    logging.warning("teacher %s stopped after %d of %d epochs", path, meta["epoch"],
                    saved["optim"]["epochs"])
  model = dfkd_nets.build_classifier(saved["model"]["name"],
                                     input_pipeline.dataset_info(dataset).num_classes,
                                     dtype=saved.get("dtype", "float32"))
  tx = sgd(saved["optim"]["momentum"], saved["optim"]["weight_decay"])
  abstract = jax.eval_shape(lambda: create_classifier_state(model, jax.random.key(0),
                                                            image_size, tx))
  abstract = checkpointing.abstract_like(abstract, parallel.replicated(mesh))
  source = checkpointing.Checkpoints(directory, keep=1, read_only=True)
  try:
    restored = source.restore(lambda _: {"state": abstract}, only_id=checkpoint_id)
  finally:
    source.close()
  if restored is None:
    raise config_validation.ConfigError(f"config.teacher_ckpt={path!r}: checkpoint unreadable.")
  logging.info("teacher %s from %s: %d epochs, test accuracy %.2f%%", saved["model"]["name"],
               restored.directory, meta["epoch"], meta["accuracies"][-1])
  return model, restored.arrays["state"].variables, meta
