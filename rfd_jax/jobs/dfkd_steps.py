"""RGAL's data-free distillation steps (spec rgal.md §3–§4), pure and jittable; the `dfkd` job
(rfd_jax/jobs/dfkd.py) runs them.

Synthesis (§3): a CMI generator and latents z, optimised with Adam against the frozen teacher and
the frozen (eval-mode) student: bn·L_bn + oh·CE(teacher, random targets) + adv·L_adv +
triplet·L_tri; the lowest-loss batch is kept. Student (§4): SGD on pool batches, each image as two
augmented views: KD(T) + cd·CD + striplet·L_tri.

A synthesis round runs in chunks of `chunk_steps` iterations (`make_synthesis_chunk_fn`): one jitted
lax.scan per chunk, or a host loop over one jitted step (the same keys). The round is data-parallel:
the per-sample arrays of the state (z, its Adam moments, the best batch) and the targets are split
over the mesh's "data" axis, the generator replicated, so the BN statistics of the generator and
the teacher and the generator's gradient are all-reduces over the global batch
(`synthesis_shardings`).
"""

from __future__ import annotations

from collections.abc import Callable
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rfd_jax.methods import inversion, losses, rgal_losses
from rfd_jax.engine import errors, optim, parallel
from rfd_jax.data import augment
from rfd_jax.models.cmi_generator import CmiGenerator


def pooled(feature_map: jax.Array) -> jax.Array:
  """Global average pool (B, H, W, C) → (B, C) float32."""
  return jnp.mean(feature_map.astype(jnp.float32), axis=(1, 2))


def _normalize_float(images: jax.Array, mean, std) -> jax.Array:
  return (images - jnp.asarray(mean)) / jnp.asarray(std)


# ---- Synthesis (spec §3) ----------------------------------------------------------------------


@flax.struct.dataclass
class SynthesisState:
  """One round's generator, latents, Adam state and the best batch so far."""
  params: Any
  batch_stats: Any
  z: jax.Array  # (S, nz)
  opt_state: Any
  best_loss: jax.Array  # () float32, +inf before the first step
  best_images: jax.Array  # (S, H, W, 3) float32 in [0, 1]


def init_synthesis(rng: jax.Array, *, generator: CmiGenerator, batch_size: int,
                   tx: optax.GradientTransformation) -> SynthesisState:
  """A round's start: generator re-initialised (N(0, 0.02)), z ~ N(0, I), fresh Adam moments."""
  rng_init, rng_z = jax.random.split(rng)
  z = jax.random.normal(rng_z, (batch_size, generator.z_dim), jnp.float32)
  variables = generator.init(rng_init, z)
  trainable = {"generator": variables["params"], "z": z}
  size = generator.img_size
  return SynthesisState(params=variables["params"], batch_stats=variables["batch_stats"], z=z,
                        opt_state=tx.init(trainable), best_loss=jnp.float32(jnp.inf),
                        best_images=jnp.zeros((batch_size, size, size, 3), jnp.float32))


def synthesis_loss(trainable: dict[str, Any], gen_batch_stats: Any, teacher_vars: dict[str, Any],
                   student_vars: dict[str, Any], targets: jax.Array, rng: jax.Array, *,
                   generator: nn.Module, teacher: nn.Module, student: nn.Module,
                   weights: dict[str, float], mean, std,
                   augmentation: augment.Augmentation, triplet_layers: tuple[str, ...],
                   swap: bool) -> tuple[jax.Array, tuple[Any, jax.Array, dict[str, jax.Array]]]:
  """L_syn = bn·L_bn + oh·L_oh + adv·L_adv + triplet·L_tri on one augmented view (spec §3.3).

  trainable: {"generator": params, "z": (S, nz)}. The generator runs with batch statistics; the
  teacher and the student in eval mode (their variables are data, not differentiated). Returns
  (loss, (generator batch_stats, images (S, H, W, 3) in [0, 1], metrics)).
  """
  rng_aug, rng_tri = jax.random.split(rng)
  images, updates = generator.apply({"params": trainable["generator"],
                                     "batch_stats": gen_batch_stats}, trainable["z"],
                                    mutable=["batch_stats"])
  views = augment.augment(rng_aug, _normalize_float(images, mean, std), augmentation,
                                 mean, std)
  (t_logits, _), t_out = teacher.apply(teacher_vars, views, train=False, mutable=["bn_stats"])
  s_logits, s_features = student.apply(student_vars, views, train=False)
  loss_bn = rgal_losses.bn_l2_loss(input_stats=t_out["bn_stats"],
                                   running_stats=teacher_vars["batch_stats"])
  loss_oh = jnp.mean(losses.cross_entropy(logits=t_logits, labels=targets))
  loss_adv = rgal_losses.adversarial_kl(teacher_logits=t_logits, student_logits=s_logits)
  loss_tri = rgal_losses.focal_triplet_loss(
      rng_tri, sample_logits=t_logits,
      embeddings=[rgal_losses.embedding(s_features[name]) for name in triplet_layers], swap=swap)
  loss = (weights["bn"] * loss_bn + weights["oh"] * loss_oh + weights["adv"] * loss_adv
          + weights["triplet"] * loss_tri)
  metrics = {"synthesis/loss": loss, "synthesis/loss_bn": loss_bn, "synthesis/loss_oh": loss_oh,
             "synthesis/loss_adv": loss_adv, "synthesis/loss_triplet": loss_tri,
             "synthesis/teacher_student_agree": 100.0 * jnp.mean(  # percent, like accuracies
                 jnp.argmax(t_logits, -1) == jnp.argmax(s_logits, -1))}
  return loss, (updates["batch_stats"], images, metrics)


def synthesis_shardings(state: SynthesisState, tx: optax.GradientTransformation,
                        mesh) -> SynthesisState:
  """The shardings of a synthesis state (arrays or ShapeDtypeStructs) on `mesh`: z (S, nz), its Adam
  moments and the best batch (S, H, W, 3) split on "data"; the generator, its Adam moments, the
  step count and the best loss replicated."""
  rep, batch = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  replicate = functools.partial(jax.tree.map, lambda _: rep)
  trainable = {"generator": replicate(state.params), "z": batch}
  # the Adam moments mirror {"generator", "z"}: by structure, not by shape (nz may equal S)
  opt_state = optax.tree_map_params(tx, lambda _, sharding: sharding, state.opt_state, trainable,
                                    transform_non_params=lambda _: rep)
  return SynthesisState(params=trainable["generator"], batch_stats=replicate(state.batch_stats),
                        z=batch, opt_state=opt_state, best_loss=rep, best_images=batch)


def synthesis_step(state: SynthesisState, teacher_vars, student_vars, targets, rng, *,
                   tx: optax.GradientTransformation, state_sharding: SynthesisState | None = None,
                   **loss_kwargs) -> tuple[SynthesisState, dict[str, jax.Array]]:
  """One Adam step on (generator params, z). The batch whose loss (before the step) is the lowest
  so far becomes the round's best batch. targets: (S,). `state_sharding` (synthesis_shardings)
  pins the new state's layout, so a scan carry stays split over the devices."""
  trainable = {"generator": state.params, "z": state.z}
  (loss, (batch_stats, images, metrics)), grads = jax.value_and_grad(
      synthesis_loss, has_aux=True)(trainable, state.batch_stats, teacher_vars, student_vars,
                                    targets, rng, **loss_kwargs)
  updates, opt_state = tx.update(grads, state.opt_state, trainable)
  trainable = optax.apply_updates(trainable, updates)
  better = loss < state.best_loss
  state = state.replace(
      params=trainable["generator"], batch_stats=batch_stats, z=trainable["z"],
      opt_state=opt_state, best_loss=jnp.where(better, loss, state.best_loss),
      best_images=jnp.where(better, images, state.best_images))
  if state_sharding is not None:
    state = jax.lax.with_sharding_constraint(state, state_sharding)
  return state, metrics


def synthesis_chunk(state: SynthesisState, teacher_vars, student_vars, targets, rng,
                    first_iteration, *, num_steps: int, **step_kwargs
                    ) -> tuple[SynthesisState, dict[str, jax.Array]]:
  """`num_steps` synthesis steps under lax.scan; iteration i uses fold_in(rng, i). The best batch
  is carried in the state. Returns the new state and the metrics averaged over the chunk."""
  def body(carry, i):
    return synthesis_step(carry, teacher_vars, student_vars, targets, jax.random.fold_in(rng, i),
                          **step_kwargs)
  state, metrics = jax.lax.scan(body, state, first_iteration + jnp.arange(num_steps))
  return state, jax.tree.map(jnp.mean, metrics)


def _keyed_synthesis_step(state, teacher_vars, student_vars, targets, rng, iteration,
                          **step_kwargs):
  return synthesis_step(state, teacher_vars, student_vars, targets,
                        jax.random.fold_in(rng, iteration), **step_kwargs)


def make_synthesis_chunk_fn(*, mesh, state_sharding: SynthesisState, chunk_steps: int,
                            loop: str = "auto", **step_kwargs) -> Callable:
  """The chunk function `(state, teacher_vars, student_vars, targets (S,), rng, first_iteration)
  -> (state, mean metrics)`, built once per run; the state is donated.

  loop: "scan" (one jitted lax.scan over the chunk), "host" (a Python loop over one jitted
  synthesis_step; same keys) or "auto" (inversion.resolve_loop: host on CPU). The state and the
  targets come in and go out split on "data" (`state_sharding`), the networks replicated.
  step_kwargs: synthesis_step's (tx, the networks, the loss settings).
  """
  rep, batch = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  shardings = dict(in_shardings=(state_sharding, rep, rep, batch, rep, rep),
                   out_shardings=(state_sharding, rep), donate_argnums=(0,))
  step_kwargs = dict(step_kwargs, state_sharding=state_sharding)
  if inversion.resolve_loop(loop, mesh.devices.flat[0].platform) == "scan":
    return jax.jit(functools.partial(synthesis_chunk, num_steps=chunk_steps, **step_kwargs),
                   **shardings)
  step = jax.jit(functools.partial(_keyed_synthesis_step, **step_kwargs), **shardings)

  def host_chunk(state, teacher_vars, student_vars, targets, rng, first_iteration):
    history = []
    for i in range(int(first_iteration), int(first_iteration) + chunk_steps):
      state, metrics = step(state, teacher_vars, student_vars, targets, rng, np.int32(i))
      history.append(metrics)
    return state, jax.tree.map(lambda *v: jnp.mean(jnp.stack(v)), *history)

  host_chunk.step = step  # exposed so tests can lower and compile the step
  return host_chunk


def quantize(images: jax.Array) -> jax.Array:
  """[0, 1] float images → uint8, as the released code's PNG pool (round to nearest)."""
  return jnp.round(jnp.clip(images, 0.0, 1.0) * 255.0).astype(jnp.uint8)


# ---- Student training (spec §4) ---------------------------------------------------------------


@flax.struct.dataclass
class StudentState:
  """The student, the CD projections (pooled student stage → teacher stage channels) and SGD."""
  step: jax.Array
  params: Any
  batch_stats: Any
  proj: Any  # {"stage_k": {"kernel": (C_s, C_t), "bias": (C_t,)}}
  opt_state: Any

  @property
  def trainable(self) -> dict[str, Any]:
    return {"student": self.params, "proj": self.proj}

  @property
  def variables(self) -> dict[str, Any]:
    return {"params": self.params, "batch_stats": self.batch_stats}


def stage_pairs(student: nn.Module, teacher: nn.Module) -> list[tuple[str, str]]:
  """(student stage, teacher stage) pairs of the CD term: stage k with stage k."""
  if len(student.stage_names) != len(teacher.stage_names):
    raise errors.ConfigError(
        f"the student has stages {student.stage_names} and the teacher {teacher.stage_names}: "
        "the CD term pairs stage k with stage k; use nets of the same family (WRN → WRN, "
        "ResNet → ResNet) or set config.rgal.cd=0.")
  return list(zip(student.stage_names, teacher.stage_names))


def init_projections(rng: jax.Array, student_dims: dict[str, int], teacher_dims: dict[str, int],
                     pairs: list[tuple[str, str]]) -> dict[str, Any]:
  """The CD term's 1×1 convs as Dense maps on pooled features (GAP∘conv1×1 = linear∘GAP), with
  PyTorch's Conv2d default init U(±1/√C_s) for kernel and bias."""
  proj = {}
  for k, (s_name, t_name) in enumerate(pairs):
    c_s, c_t = student_dims[s_name], teacher_dims[t_name]
    bound = 1.0 / np.sqrt(c_s)
    rk, rb = jax.random.split(jax.random.fold_in(rng, k))
    proj[s_name] = {"kernel": jax.random.uniform(rk, (c_s, c_t), jnp.float32, -bound, bound),
                    "bias": jax.random.uniform(rb, (c_t,), jnp.float32, -bound, bound)}
  return proj


def student_loss(trainable, batch_stats, views, t_logits, t_features, rng, *, student: nn.Module,
                 pairs: list[tuple[str, str]], weights: dict[str, float], temperature: float
                 ) -> tuple[jax.Array, tuple[Any, dict[str, jax.Array]]]:
  """L_stu = KD(T) + cd·Σ_k MSE(P_k·GAP(s_k), GAP(t_k)) + striplet·L_tri (spec §4.2).

  views: (2B, H, W, 3) normalised; t_logits (2B, K) and t_features: the frozen teacher's outputs.
  L_tri mines with distance-weighted sampling on the normalised student logits, labels = teacher
  argmax, and pulls/pushes the normalised pooled student feature.
  """
  (s_logits, s_features), updates = student.apply(
      {"params": trainable["student"], "batch_stats": batch_stats}, views, train=True,
      mutable=["batch_stats"])
  loss_kd = rgal_losses.kd_loss(student_logits=s_logits, teacher_logits=t_logits,
                                temperature=temperature)
  projected = [pooled(s_features[s]) @ trainable["proj"][s]["kernel"] + trainable["proj"][s]["bias"]
               for s, _ in pairs]
  loss_cd = rgal_losses.pooled_regression(student=projected,
                                          teacher=[pooled(t_features[t]) for _, t in pairs])
  loss_tri = rgal_losses.distance_weighted_triplet_loss(
      rng, student_logits=s_logits, teacher_logits=t_logits,
      embeddings=[rgal_losses.embedding(s_features["pooled"])])
  loss = loss_kd + weights["cd"] * loss_cd + weights["striplet"] * loss_tri
  metrics = {"train/loss": loss, "train/loss_kd": loss_kd, "train/loss_cd": loss_cd,
             "train/loss_triplet": loss_tri,
             "train/teacher_agreement": 100.0 * jnp.mean(  # percent, like accuracies
                 jnp.argmax(s_logits, -1) == jnp.argmax(t_logits, -1))}
  return loss, (updates["batch_stats"], metrics)


def student_step(state: StudentState, images: jax.Array, teacher_vars, rng, lr, *,
                 student: nn.Module, teacher: nn.Module, tx: optax.GradientTransformation,
                 weight_decay: float, mean, std, augmentation: augment.Augmentation,
                 pair_sample: bool, **loss_kwargs) -> tuple[StudentState, dict[str, jax.Array]]:
  """One SGD step on a pool batch (uint8 (B, H, W, 3)): two augmented views of every image when
  `pair_sample` (so every sample has a positive: its twin), the teacher in eval mode."""
  rng_a, rng_b, rng_tri = jax.random.split(rng, 3)
  x = augment.normalize(images, mean, std)
  views = augment.augment(rng_a, x, augmentation, mean, std)
  if pair_sample:
    views = jnp.concatenate([views, augment.augment(rng_b, x, augmentation, mean, std)])
  t_logits, t_features = teacher.apply(teacher_vars, views, train=False)
  (_, (batch_stats, metrics)), grads = jax.value_and_grad(student_loss, has_aux=True)(
      state.trainable, state.batch_stats, views, t_logits, t_features, rng_tri, student=student,
      **loss_kwargs)
  trainable, opt_state = optim.sgd_update(params=state.trainable, grads=grads,
                                         opt_state=state.opt_state, lr=lr,
                                         weight_decay=weight_decay, tx=tx)
  return state.replace(step=state.step + 1, params=trainable["student"], proj=trainable["proj"],
                       batch_stats=batch_stats, opt_state=opt_state), metrics
