"""Pure, jittable train and eval steps. No I/O, no globals.

Static pieces (the model, the generator, the optimizer transform, the learner's loss,
normalisation constants) are bound with `functools.partial` where the loop builds the jitted
functions; everything that changes during a run (learning rate, numbers of old and seen classes,
loss weights, class weights, trainable mask, teacher and generator variables) is passed as data,
so each step compiles once per run.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rfd_jax.methods import inversion, learners, losses
from rfd_jax.engine import evaluation, optim, parallel
from rfd_jax.data import augment
from rfd_jax.methods.learners import DistillInputs
from rfd_jax.models.resnet import mask_unseen
from rfd_jax.engine.state import TrainState


def _update(state: TrainState, grads: dict[str, Any], batch_stats: Any, hparams: dict[str, Any],
            *, tx: optax.GradientTransformation, weight_decay: float) -> TrainState:
  trainable, opt_state = optim.sgd_update(
      params=state.trainable, grads=grads, opt_state=state.opt_state,
      trainable=hparams["trainable"], lr=hparams["lr"], weight_decay=weight_decay, tx=tx)
  return state.replace(step=state.step + 1, params=trainable["model"],
                       aux_params=trainable["aux"], batch_stats=batch_stats, opt_state=opt_state)


def _count_labels(counts: jax.Array, *labels: jax.Array) -> jax.Array:
  """counts (C,) plus one per occurrence of each label in `labels` (each (B,))."""
  for y in labels:
    counts = counts.at[y].add(1.0)
  return counts


def _real_images(batch, rng, mean, std, augmentation):
  images = augment.normalize(batch["images"], mean, std)
  if augmentation is None:
    return images
  return augment.augment(rng, images, augmentation, mean, std)


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array,
               hparams: dict[str, Any], *, model: nn.Module, tx: optax.GradientTransformation,
               weight_decay: float, mean: np.ndarray, std: np.ndarray,
               augmentation: augment.Augmentation | None = augment.Augmentation(),
               ce_over_all_outputs: bool = False) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step of cross-entropy over the seen classes (finetune, joint, and every task 0), or
  over all the head's outputs with `ce_over_all_outputs` (ABD's single Linear head).

  Args:
    state: the student.
    batch: "images" uint8 (B, H, W, 3), "labels" int32 (B,) model labels.
    rng: key for this step's augmentation (`augmentation`; None: no augmentation).
    hparams: "lr" f32 scalar, "num_seen" int32 scalar, "trainable" 0/1 mask pytree (see
      `state.trainable_mask`).
  Returns:
    (new_state, metrics) with metrics "train/loss", "train/acc" (batch means; the accuracy in
    percent, like eval/*).
  """
  images = _real_images(batch, rng, mean, std, augmentation)
  labels = batch["labels"]

  def loss_fn(params):
    (logits, _), new_vars = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, images, train=True,
        mutable=["batch_stats"])
    seen_logits = mask_unseen(logits, hparams["num_seen"])
    loss = jnp.mean(losses.cross_entropy(logits=logits if ce_over_all_outputs else seen_logits,
                                         labels=labels))
    return loss, (new_vars["batch_stats"], seen_logits)

  (loss, (batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = {"model": grads, "aux": jax.tree.map(jnp.zeros_like, state.aux_params)}
  new_state = _update(state, grads, batch_stats, hparams, tx=tx, weight_decay=weight_decay)
  new_state = new_state.replace(class_counts=_count_labels(state.class_counts, labels))
  metrics = {"train/loss": loss,
             "train/acc": 100.0 * jnp.mean(losses.accuracy(logits=logits, labels=labels))}
  return new_state, metrics


def _interleave(a: jax.Array, b: jax.Array) -> jax.Array:
  """(B, ...) and (B, ...) → (2B, ...) with rows a0, b0, a1, b1, …

  Unlike `jnp.concatenate([a, b])`, this keeps each device's rows local when a and b are sharded on
  their leading axis: device d's rows of a and b become its contiguous rows of the result, so XLA
  inserts no all-to-all to reshard the combined batch.
  """
  return jnp.stack([a, b], axis=1).reshape((2 * a.shape[0],) + a.shape[1:])


def _deinterleave(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The inverse of `_interleave`: (2B, ...) → its even rows (B, ...), its odd rows (B, ...)."""
  x = x.reshape((x.shape[0] // 2, 2) + x.shape[1:])
  return x[:, 0], x[:, 1]


def distill_inputs(batch: dict[str, jax.Array], rng: jax.Array, hparams: dict[str, Any],
                   teacher_vars: dict[str, Any], gen_vars: dict[str, Any], *, model: nn.Module,
                   generator: nn.Module, mean: np.ndarray, std: np.ndarray,
                   augmentation: augment.Augmentation | None = (
                       augment.Augmentation()),
                   batch_sharding=None) -> DistillInputs:
  """What a distillation loss sees in one step (see `distill_train_step`): the augmented real
  batch, a fresh synthetic batch of its size, the frozen teacher's outputs on both (eval mode,
  logits masked to the hparams["num_old"] old classes) and the synthetic labels (teacher argmax)."""
  rng_aug, rng_syn = jax.random.split(rng)
  real = _real_images(batch, rng_aug, mean, std, augmentation)
  syn = inversion.generate(gen_vars, rng_syn, generator=generator, batch_size=real.shape[0],
                           batch_sharding=batch_sharding)
  teacher_vars = jax.lax.stop_gradient(teacher_vars)
  # Eval mode: every row is independent, so the interleaved order changes no value.
  t_logits, t_feats = model.apply(teacher_vars, _interleave(real, syn), train=False)
  t_logits = mask_unseen(t_logits, hparams["num_old"])
  t_real_logits, t_syn_logits = _deinterleave(t_logits)
  t_real_pooled, t_syn_pooled = _deinterleave(t_feats["pooled"])
  t_real_stage1, _ = _deinterleave(t_feats["stage1"])  # RFD's hybrid path; dropped if unused
  syn_labels = jnp.argmax(t_syn_logits, axis=-1).astype(jnp.int32)
  return DistillInputs(real=real, labels=batch["labels"], syn=syn, syn_labels=syn_labels,
                       t_real_logits=t_real_logits, t_syn_logits=t_syn_logits,
                       t_real_pooled=t_real_pooled, t_syn_pooled=t_syn_pooled,
                       t_real_stage1=t_real_stage1, rng=jax.random.fold_in(rng, 2))


def distill_train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array,
                       hparams: dict[str, Any], teacher_vars: dict[str, Any],
                       gen_vars: dict[str, Any], *, loss_fn: Callable, model: nn.Module,
                       generator: nn.Module, tx: optax.GradientTransformation,
                       weight_decay: float, mean: np.ndarray, std: np.ndarray,
                       augmentation: augment.Augmentation | None = (
                           augment.Augmentation()),
                       batch_sharding=None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One step of a data-free distillation learner (task >= 1).

  Draws a fresh synthetic batch of the real batch's size from the frozen generator, runs the frozen
  teacher once (eval mode) over real ∪ synthetic, labels the synthetic images with the teacher's
  argmax over the old classes, then applies the learner's `loss_fn` (see rfd_jax.methods.learners).

  hparams: as `train_step` plus "num_old" int32, "weights" (dict of f32 loss weights) and
    "class_weights" f32 (C,). teacher_vars / gen_vars: frozen variables, never differentiated.
  """
  inputs = distill_inputs(batch, rng, hparams, teacher_vars, gen_vars, model=model,
                          generator=generator, mean=mean, std=std, augmentation=augmentation,
                          batch_sharding=batch_sharding)
  teacher_vars = jax.lax.stop_gradient(teacher_vars)

  def objective(trainable):
    return loss_fn(trainable["model"], trainable["aux"], state.batch_stats, inputs, hparams,
                   model=model, teacher_vars=teacher_vars)

  (loss, (batch_stats, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(
      state.trainable)
  new_state = _update(state, grads, batch_stats, hparams, tx=tx, weight_decay=weight_decay)
  new_state = new_state.replace(
      class_counts=_count_labels(state.class_counts, batch["labels"], inputs.syn_labels))
  # The learners report train/acc as a fraction; the run's metrics are in percent like eval/*.
  return new_state, {"train/loss": loss, **metrics, "train/acc": 100.0 * metrics["train/acc"]}


# ---- Device-resident data: blocks of steps without the host. ------------------------------------


def gather_batch(data: dict[str, jax.Array], rows: jax.Array, batch_sharding=None
                 ) -> dict[str, jax.Array]:
  """One batch gathered on the device: data "images" (N, H, W, 3) uint8 and "labels" (N,) int32 at
  `rows` (B,) int32 → {"images" (B, H, W, 3), "labels" (B,)}, split over the mesh like a host
  batch (each device slices its own rows of the replicated dataset: no collective)."""
  batch = {"images": data["images"][rows], "labels": data["labels"][rows]}
  if batch_sharding is not None:
    batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
  return batch


def resident_block(num_steps: int, state: TrainState, data: dict[str, jax.Array],
                   rows: jax.Array, first: jax.Array, task_key: jax.Array, epoch_start: jax.Array,
                   hparams: dict[str, Any], *extra, step_fn: Callable,
                   batch_sharding=None) -> tuple[TrainState, dict[str, jax.Array]]:
  """Steps `first` .. `first + num_steps - 1` of an epoch on device-resident data.

  data: the task's dataset on the device (see `gather_batch`); rows: int32 (steps per epoch, B),
  the epoch's batches as row indices into it. Step j of the epoch is the task's step
  `epoch_start + j` and uses the key fold_in(task_key, epoch_start + j), as the host loop does.
  `step_fn(state, batch, rng, hparams, *extra)`: a train step. One step is a plain call; more are
  one lax.scan (what accelerators run fastest; XLA:CPU runs rolled conv loops slowly, see
  `inversion.resolve_loop`). Returns the state and the metrics' mean over the block.
  """
  def body(state, j):
    batch = gather_batch(data, rows[j], batch_sharding)
    return step_fn(state, batch, jax.random.fold_in(task_key, epoch_start + j), hparams, *extra)
  if num_steps == 1:
    return body(state, first)
  state, history = jax.lax.scan(body, state, first + jnp.arange(num_steps, dtype=jnp.int32))
  return state, jax.tree.map(lambda m: jnp.mean(m, axis=0), history)


# ---- The run's jitted steps. ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StepFns:
  """The run's jitted functions, each compiled once per run whatever the number of tasks.

  The `*_step` train steps take a host-fed batch: (state, batch, task_key, step_in_task,
  hparams[, teacher, generator]) and use fold_in(task_key, step_in_task) as the step's key. The
  `*_block` ones run the same steps on device-resident data (`resident_block`): (K, state, data,
  rows, first, task_key, epoch_start, hparams[, teacher, generator]), compiled once per distinct
  number of steps K (1 for the host loop; the epoch lengths for the scanned loop).
  """
  ce_step: Any
  distill_main_step: Any
  distill_finetune_step: Any
  ce_block: Any
  distill_main_block: Any
  distill_finetune_block: Any
  eval_step: Any
  inversion_chunk: Any
  class_weights: Any


# hparams that differ between the runs of a group (the rest are shared)
PER_RUN_HPARAMS = ("class_weights",)


class _GroupBlock:
  """`resident_block` vmapped over a group's runs (rfd_jax.jobs.group), jitted once per set of hparams
  names and number of steps. Per run (axis 0): the state, the labels of the resident data, the
  batch rows, the task key, PER_RUN_HPARAMS, the teacher and generator; shared: the images, the
  first step, the epoch start and the other hparams."""

  def __init__(self, block: Callable):
    self._block, self._jitted = block, {}

  def jitted(self, hparams: dict[str, Any], num_extra: int = 2) -> Callable:
    """The jitted function for hparams with these names (num_extra: teacher and generator)."""
    names = tuple(sorted(hparams)) + (num_extra,)
    if names not in self._jitted:
      in_axes = (0, {"images": None, "labels": 0}, 0, None, 0, None,
                 {k: 0 if k in PER_RUN_HPARAMS else None for k in hparams}) + (0,) * num_extra
      self._jitted[names] = jax.jit(
          lambda n, *args: jax.vmap(functools.partial(self._block, n), in_axes=in_axes)(*args),
          static_argnums=(0,), donate_argnums=(1,))
    return self._jitted[names]

  def __call__(self, num_steps, state, data, rows, first, task_key, epoch_start, hparams, *extra):
    return self.jitted(hparams, len(extra))(num_steps, state, data, rows, first, task_key,
                                            epoch_start, hparams, *extra)

  def _cache_size(self) -> int:
    return sum(f._cache_size() for f in self._jitted.values())  # pylint: disable=protected-access


def build_step_fns(config, learner: learners.Learner, model, generator, tx, data,
                   mesh, *, group: bool = False) -> StepFns:
  """Binds the static arguments and jits every step of the run (the state is donated).

  State, keys, hparams, teacher and generator are replicated; real batches are split on the mesh's
  "data" axis, so BatchNorm sees the global batch. Device-resident data and its batch rows are
  replicated; each device gathers its own rows of a batch.

  group: the functions of a group of runs (rfd_jax.jobs.group): vmapped over a leading run axis of the
  state (and everything per run), device-resident data only; the arrays' own shardings (the run
  axis split over the mesh) place the computation, and batches are not split.
  """
  if group:
    return _group_step_fns(config, learner, model, generator, tx, data, mesh)
  rep, batch = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  common = dict(model=model, tx=tx, weight_decay=config.optim.weight_decay, mean=data.mean,
                std=data.std, augmentation=augment.Augmentation.from_config(config.data))
  ce = functools.partial(train_step, **common, ce_over_all_outputs=learner.ce_over_all_outputs)
  distill = {phase: None if loss_fn is None else functools.partial(
      distill_train_step, loss_fn=loss_fn, generator=generator, batch_sharding=batch, **common)
             for phase, loss_fn in (("main", learner.main_loss),
                                    ("finetune", learner.finetune_loss))}

  def host_fed(step_fn, num_extra):  # (state, batch, task_key, step, ...): key derived on device
    if step_fn is None:
      return None
    keyed = lambda state, b, key, step, *args: step_fn(state, b, jax.random.fold_in(key, step),
                                                       *args)
    return jax.jit(keyed, donate_argnums=(0,), in_shardings=(rep, batch, rep, rep, rep)
                   + (rep,) * num_extra, out_shardings=rep)

  def resident(step_fn, num_extra):
    if step_fn is None:
      return None
    return jax.jit(functools.partial(resident_block, step_fn=step_fn, batch_sharding=batch),
                   static_argnums=(0,), donate_argnums=(1,),
                   in_shardings=(rep,) * (7 + num_extra), out_shardings=rep)

  inv = config.inversion
  inv_loop = inversion.resolve_loop(inv.loop, mesh.devices.flat[0].platform)
  return StepFns(
      ce_step=host_fed(ce, 0),
      distill_main_step=host_fed(distill["main"], 2),
      distill_finetune_step=host_fed(distill["finetune"], 2),
      ce_block=resident(ce, 0),
      distill_main_block=resident(distill["main"], 2),
      distill_finetune_block=resident(distill["finetune"], 2),
      eval_step=jax.jit(functools.partial(evaluation.eval_step, model=model, mean=data.mean,
                                          std=data.std),
                        in_shardings=(rep, batch, rep), out_shardings=rep),
      inversion_chunk=inversion.make_inversion_chunk_fn(
          generator=generator, teacher=model, tx=optax.adam(inv.lr), batch_size=inv.batch_size,
          chunk_steps=inv.chunk_steps, weights=inversion.weights_from_config(config), loop=inv_loop,
          batch_sharding=batch),
      class_weights=jax.jit(losses.class_balance_weights, in_shardings=(rep, rep),
                            out_shardings=rep))


def _group_step_fns(config, learner: learners.Learner, model, generator, tx, data,
                    mesh) -> StepFns:
  common = dict(model=model, tx=tx, weight_decay=config.optim.weight_decay, mean=data.mean,
                std=data.std, augmentation=augment.Augmentation.from_config(config.data))
  block = lambda step_fn: None if step_fn is None else _GroupBlock(
      functools.partial(resident_block, step_fn=step_fn))
  distill = lambda loss_fn: None if loss_fn is None else functools.partial(
      distill_train_step, loss_fn=loss_fn, generator=generator, **common)
  inv = config.inversion
  return StepFns(
      ce_step=None, distill_main_step=None, distill_finetune_step=None,
      ce_block=block(functools.partial(train_step, **common,
                                       ce_over_all_outputs=learner.ce_over_all_outputs)),
      distill_main_block=block(distill(learner.main_loss)),
      distill_finetune_block=block(distill(learner.finetune_loss)),
      eval_step=jax.jit(jax.vmap(functools.partial(evaluation.eval_step, model=model, mean=data.mean,
                                                   std=data.std), in_axes=(0, None, None))),
      inversion_chunk=inversion.make_inversion_chunk_fn(
          generator=generator, teacher=model, tx=optax.adam(inv.lr), batch_size=inv.batch_size,
          chunk_steps=inv.chunk_steps, weights=inversion.weights_from_config(config),
          loop=inversion.resolve_loop(inv.loop, mesh.devices.flat[0].platform), vmapped=True),
      class_weights=jax.jit(jax.vmap(losses.class_balance_weights, in_axes=(0, None))))
