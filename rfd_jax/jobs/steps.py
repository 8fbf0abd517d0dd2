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


# ---- The job's jitted steps, over the run axis. --------------------------------------------------

# hparams that differ between the runs (a leading run axis); the others are shared
PER_RUN_HPARAMS = ("class_weights",)
TRAIN_KINDS = ("ce", "distill_main", "distill_finetune")


def _split_hparams(hparams: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """(the shared hparams, the per-run ones)."""
  return ({k: v for k, v in hparams.items() if k not in PER_RUN_HPARAMS},
          {k: v for k, v in hparams.items() if k in PER_RUN_HPARAMS})


def over_runs(fn: Callable, num_runs: int) -> Callable:
  """`fn(per_run, shared)` over the runs of the step form (see rfd_jax.jobs.dfcil_run): vmapped
  over the leading run axis of per_run's leaves for R > 1; fn itself for R = 1, whose arrays have
  no run axis while they are stepped (XLA:CPU rounds a jitted step differently when its outputs
  are reshaped or vmapped, even over an axis of 1, and RFD amplifies rounding)."""
  if num_runs == 1:
    return fn
  return jax.vmap(fn, in_axes=(0, None))


@dataclasses.dataclass(frozen=True)
class StepParts:
  """What the steps are built of (the job's setup builds them once from the config)."""
  learner: learners.Learner
  model: nn.Module
  generator: nn.Module
  tx: optax.GradientTransformation
  mean: np.ndarray
  std: np.ndarray
  weight_decay: float
  augmentation: augment.Augmentation | None
  inversion_lr: float
  inversion_batch_size: int
  inversion_chunk_steps: int
  inversion_weights: dict[str, Any]
  inversion_loop: str  # "scan" or "host" (inversion.resolve_loop)


@dataclasses.dataclass(frozen=True)
class StepFns:
  """The job's jitted functions over its runs, each compiled once per job whatever the number of
  tasks. Arguments and results in the step form (rfd_jax.jobs.dfcil_run): for R > 1 every per-run
  array (state, keys, rows, the labels of the device-resident data, class weights, teacher,
  generator, the metrics) carries the leading run axis; images, steps and the other hparams are
  shared. For R = 1 the same functions take and return the one run's arrays.

  `train_fn(kind, resident)`, kind one of TRAIN_KINDS: resident=False, a host-fed batch (R = 1
  only): (state, batch, task_keys, step_in_task, hparams[, teacher, generator]), the step's key
  fold_in(task_key, step_in_task). resident=True, the same steps on device-resident data
  (`resident_block`): (K, state, data, rows, first, task_keys, epoch_start, hparams[, teacher,
  generator]), compiled once per distinct number of steps K (1 for the host loop; the epoch
  lengths for the scanned loop). None where the learner has no such step.
  """
  train: dict[tuple[str, bool], Any]
  eval_step: Any
  inversion_chunk: Any
  class_weights: Any

  def train_fn(self, kind: str, resident: bool) -> Any:
    return self.train[kind, resident]

  @staticmethod
  def train_name(kind: str, resident: bool) -> str:
    """The name a train function goes by in compile reports: e.g. "distill_main_block"."""
    return f"{kind}_{'block' if resident else 'step'}"


def build_step_fns(parts: StepParts, mesh, *, num_runs: int = 1) -> StepFns:
  """Binds the static arguments and jits every step of the job over `num_runs` runs (the state
  is donated).

  One run (R = 1), no run axis: state, keys, hparams, teacher and generator replicated; real
  batches split on the mesh's "data" axis, so BatchNorm sees the global batch; device-resident
  data and its batch rows replicated, each device gathering its own rows of a batch. Several runs: vmapped over the
  run axis, device-resident data only; the arrays' own shardings (the run axis split over the
  mesh) place the computation, and batches are not split.
  """
  learner, single = parts.learner, num_runs == 1
  rep, batch = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  batch_sharding = batch if single else None
  common = dict(model=parts.model, tx=parts.tx, weight_decay=parts.weight_decay, mean=parts.mean,
                std=parts.std, augmentation=parts.augmentation)
  step_fns = {"ce": functools.partial(train_step, **common,
                                      ce_over_all_outputs=learner.ce_over_all_outputs)}
  for phase, loss_fn in (("main", learner.main_loss), ("finetune", learner.finetune_loss)):
    step_fns[f"distill_{phase}"] = None if loss_fn is None else functools.partial(
        distill_train_step, loss_fn=loss_fn, generator=parts.generator,
        batch_sharding=batch_sharding, **common)

  def host_fed(step_fn):  # (state, batch, task_key, step, ...), one run: key derived on device
    keyed = lambda state, b, key, step, *args: step_fn(state, b, jax.random.fold_in(key, step),
                                                       *args)
    num_extra = 0 if step_fn is step_fns["ce"] else 2
    return jax.jit(keyed, donate_argnums=(0,), in_shardings=(rep, batch, rep, rep, rep)
                   + (rep,) * num_extra, out_shardings=rep)

  def resident(step_fn):
    def block(num_steps, state, data, rows, first, keys, epoch_start, hparams, *extra):
      shared_hp, per_hp = _split_hparams(hparams)
      def one(p, s):
        images, first, epoch_start, shared_hp = s
        return resident_block(num_steps, p[0], {"images": images, "labels": p[1]}, p[2], first,
                              p[3], epoch_start, {**shared_hp, **p[4]}, *p[5], step_fn=step_fn,
                              batch_sharding=batch_sharding)
      return over_runs(one, num_runs)((state, data["labels"], rows, keys, per_hp, extra),
                                      (data["images"], first, epoch_start, shared_hp))
    if not single:
      return jax.jit(block, static_argnums=(0,), donate_argnums=(1,))
    num_extra = 0 if step_fn is step_fns["ce"] else 2
    return jax.jit(block, static_argnums=(0,), donate_argnums=(1,),
                   in_shardings=(rep,) * (7 + num_extra), out_shardings=rep)

  train = {}
  for kind, step_fn in step_fns.items():
    train[kind, True] = None if step_fn is None else resident(step_fn)
    train[kind, False] = None if step_fn is None or not single else host_fed(step_fn)
  evaluate = functools.partial(evaluation.eval_step, model=parts.model, mean=parts.mean,
                               std=parts.std)
  eval_fn = lambda variables, images, num_seen: over_runs(
      lambda v, s: evaluate(v, *s), num_runs)(variables, (images, num_seen))
  weights_fn = lambda counts, num_seen: over_runs(
      losses.class_balance_weights, num_runs)(counts, num_seen)
  placed = dict(in_shardings=(rep, batch, rep), out_shardings=rep) if single else {}
  return StepFns(
      train=train,
      eval_step=jax.jit(eval_fn, **placed),
      inversion_chunk=inversion.make_inversion_chunk_fn(
          generator=parts.generator, teacher=parts.model, tx=optax.adam(parts.inversion_lr),
          batch_size=parts.inversion_batch_size, chunk_steps=parts.inversion_chunk_steps,
          weights=parts.inversion_weights, loop=parts.inversion_loop,
          batch_sharding=batch_sharding, vmapped=not single),
      class_weights=jax.jit(weights_fn, **(dict(in_shardings=(rep, rep), out_shardings=rep)
                                           if single else {})))
