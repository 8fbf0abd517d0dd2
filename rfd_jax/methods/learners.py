"""The data-free class-incremental learners: which data they see and the losses they optimise.

Every learner trains task 0 with plain cross-entropy. For tasks >= 1 the distillation learners
get, per step, a real batch, a fresh synthetic batch from the frozen generator and the frozen
teacher's outputs on both (see `steps.distill_train_step`), and combine them here:

  rfd            (spec §5) main: local CE + DIST relation distillation on synthetic and real old
                 logits + low-level feature distillation through the teacher's stage 1; then head
                 fine-tuning: class-weighted global CE + both DIST terms.
  rdfcil         (spec §6.1) main: local CE + L1 hard KD on synthetic old logits + RKD-angle on
                 projected real features; then head fine-tuning: class-weighted global CE + hard KD.
  abd            (spec §6.2) local CE + global CE over all head outputs on detached features +
                 feature distillation through the teacher's head; real and synthetic in one pass.
  deepinversion  (spec §6.3, ABD's DeepInversionGenBN) CE on the real rows + two-part LwF KD
                 (T = 2, no T² factor); real and synthetic in one forward pass.

Loss functions are pure: (params, aux, batch_stats, inputs, hparams) → (loss, (batch_stats, metrics)).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rfd_jax.methods import inversion, losses, rgal_losses
from rfd_jax.models.resnet import BN_MOMENTUM, mask_classes, mask_unseen


class DistillInputs(NamedTuple):
  """What a distillation loss sees in one step (teacher outputs already masked to old classes).

  real, syn: normalised images (B, H, W, 3); labels, syn_labels: int32 (B,) (syn_labels = teacher
  argmax); t_real_logits, t_syn_logits: (B, C); t_real_pooled, t_syn_pooled: (B, F);
  t_real_stage1: the teacher's stage-1 map of the real images (B, H', W', C1); rng: a key for
  losses that sample (RGAL's triplet mining).
  """
  real: jax.Array
  labels: jax.Array
  syn: jax.Array
  syn_labels: jax.Array
  t_real_logits: jax.Array
  t_syn_logits: jax.Array
  t_real_pooled: jax.Array
  t_syn_pooled: jax.Array
  t_real_stage1: jax.Array
  rng: jax.Array | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Learner:
  """A method: whether it inverts the teacher, its phases, its losses and its head semantics."""
  name: str
  uses_inversion: bool
  has_finetune_phase: bool  # head fine-tuning in the last optim.ft_epochs of tasks >= 1
  reuse_generator: bool  # ABD keeps one generator (and its Adam state) across tasks
  # ABD's single Linear (with bias) covers every class from the start: its CE terms run over all
  # outputs (unseen classes included) and the unseen rows are trained (pushed down) like the
  # others. Only with that head (model.head = "abd"): through RFD's bias-free heads the push-down
  # stalls learning (README, "Protocol").
  ce_over_all_outputs: bool = False
  main_loss: Callable | None = None
  finetune_loss: Callable | None = None
  init_aux: Callable | None = None  # (rng, num_features) → per-task extra trainable params
  train_on_seen_classes: bool = False  # joint: every seen class's real data; else the task's
  weight_scheme: str | None = None  # R-DFCIL's adaptive loss weights ("rdfcil", "rfd"), or none

  def train_indices(self, labels: np.ndarray, offsets: Any, task: int) -> np.ndarray:
    """Indices of the training examples this learner sees in task `task`: the task's classes
    (every seen class with `train_on_seen_classes`). labels: model labels (N,); offsets: the
    first model label of each task, then the number of classes."""
    low = 0 if self.train_on_seen_classes else offsets[task]
    return np.flatnonzero((labels >= low) & (labels < offsets[task + 1]))

  def loss_weights(self, distill_config, *, num_old: int, num_new: int) -> dict[str, float]:
    """The loss weights of a task with `num_old` old and `num_new` new classes ({} if none)."""
    if self.weight_scheme is None:
      return {}
    return loss_weights(distill_config, self.weight_scheme, num_old=num_old, num_new=num_new)


def _apply(model: nn.Module, params, batch_stats, x, *, train: bool):
  """Student forward; in train mode BN uses batch statistics and its running stats are updated.

  Returns (logits, features, new batch_stats).
  """
  variables = {"params": params, "batch_stats": batch_stats}
  if train:
    (logits, feats), updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return logits, feats, updates["batch_stats"]
  logits, feats = model.apply(variables, x, train=False)
  return logits, feats, batch_stats


def _seen_accuracy(z_real, inputs: DistillInputs, hparams):
  return jnp.mean(losses.accuracy(logits=mask_unseen(z_real, hparams["num_seen"]),
                                  labels=inputs.labels))


def _frozen_backbone(params):
  """params with everything outside the heads behind stop_gradient: head fine-tuning then
  differentiates the heads only, and XLA drops the backbone's backward pass."""
  return {k: v if k == "head" else jax.lax.stop_gradient(v) for k, v in params.items()}


def _local_ce(logits, labels, num_old, num_seen):
  """CE over the new classes only: logits[:, n_old:n_seen] against y − n_old. (B,)"""
  return losses.cross_entropy(logits=mask_classes(logits, num_old, num_seen), labels=labels)


def loss_weights(distill_config, scheme: str, *, num_old: int, num_new: int) -> dict[str, float]:
  """Task-dependent loss weights: R-DFCIL's adaptive scheme ("rdfcil"), and RFD's ("rfd").

  α = log2(n_new/2 + 1), β = √(n_old/n_new); w_ce = λ_ce(1 + 1/α)/β;
  rdfcil: w_hkd = λ_hkd·αβ, w_rkd = λ_rkd·αβ;
  rfd: w_dist_old = λ_dist_old·αβ², w_dist_new = λ_dist_new·αβ², w_lfd = λ_lfd·αβ, and DIST's
    own term weights dist_inter = β_DIST (0 while n_old < dist_inter_min_old), dist_intra = γ_DIST;
  both: w_ft_ce = λ_ft_ce (the fine-tuning phase's weighted global CE). {} for other methods.
  """
  if scheme not in ("rdfcil", "rfd") or num_old == 0:
    return {}
  alpha = math.log2(num_new / 2 + 1)
  beta = math.sqrt(num_old / num_new)
  weights = {"ce": distill_config.lambda_ce * (1 + 1 / alpha) / beta,
             "ft_ce": distill_config.lambda_ft_ce}
  if scheme == "rdfcil":
    weights.update(hkd=distill_config.lambda_hkd * alpha * beta,
                   rkd=distill_config.lambda_rkd * alpha * beta)
  else:
    weights.update(dist_old=distill_config.lambda_dist_old * alpha * beta ** 2,
                   dist_new=distill_config.lambda_dist_new * alpha * beta ** 2,
                   lfd=distill_config.lambda_lfd * alpha * beta,
                   dist_inter=(distill_config.get("dist_inter_weight", 1.0)
                               if num_old >= distill_config.get("dist_inter_min_old", 2) else 0.0),
                   dist_intra=distill_config.get("dist_intra_weight", 1.0))
  return weights


# ---- R-DFCIL -------------------------------------------------------------------------------


def init_rkd_projections(rng: jax.Array, num_features: int) -> dict[str, Any]:
  """Student and teacher Linear(F → 2F) projections for the RKD loss, PyTorch default init
  (weights and biases U(±1/√F)); fresh every task and trained with the student."""
  bound = 1.0 / np.sqrt(num_features)
  keys = jax.random.split(rng, 4)
  uniform = lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -bound, bound)
  return {name: {"kernel": uniform(keys[2 * i], (num_features, 2 * num_features)),
                 "bias": uniform(keys[2 * i + 1], (2 * num_features,))}
          for i, name in enumerate(("student_proj", "teacher_proj"))}


def _project(proj, x):
  return x @ proj["kernel"] + proj["bias"]


def rdfcil_main_loss(params, aux, batch_stats, inputs: DistillInputs, hparams, *, model,
                     teacher_vars):
  """w_ce·local CE(real) + w_hkd·L1(student, teacher old logits on syn) + w_rkd·RKD-angle."""
  del teacher_vars
  w, num_old, num_seen = hparams["weights"], hparams["num_old"], hparams["num_seen"]
  z_real, f_real, batch_stats = _apply(model, params, batch_stats, inputs.real, train=True)
  z_syn, _, batch_stats = _apply(model, params, batch_stats, inputs.syn, train=True)
  loss_ce = jnp.mean(_local_ce(z_real, inputs.labels, num_old, num_seen))
  loss_hkd = losses.masked_l1(student=z_syn, teacher=inputs.t_syn_logits, num_classes=num_old)
  loss_rkd = losses.rkd_angle(student=_project(aux["student_proj"], f_real["pooled"]),
                              teacher=_project(aux["teacher_proj"], inputs.t_real_pooled))
  loss = w["ce"] * loss_ce + w["hkd"] * loss_hkd + w["rkd"] * loss_rkd
  metrics = {"train/loss_ce": loss_ce, "train/loss_hkd": loss_hkd, "train/loss_rkd": loss_rkd,
             "train/acc": _seen_accuracy(z_real, inputs, hparams)}
  return loss, (batch_stats, metrics)


def _class_weighted_global_ce(z_real, z_syn, inputs: DistillInputs, hparams):
  logits = mask_unseen(jnp.concatenate([z_real, z_syn]), hparams["num_seen"])
  labels = jnp.concatenate([inputs.labels, inputs.syn_labels])
  return losses.weighted_cross_entropy(logits=logits, labels=labels,
                                       class_weights=hparams["class_weights"])


def rdfcil_finetune_loss(params, aux, batch_stats, inputs: DistillInputs, hparams, *, model,
                         teacher_vars):
  """Head fine-tuning (backbone frozen, BN on running stats): λ·class-weighted global CE on
  real ∪ synthetic + w_hkd·L1 hard KD."""
  del aux, teacher_vars
  w, num_old = hparams["weights"], hparams["num_old"]
  params = _frozen_backbone(params)
  z_real, _, _ = _apply(model, params, batch_stats, inputs.real, train=False)
  z_syn, _, _ = _apply(model, params, batch_stats, inputs.syn, train=False)
  loss_ce = _class_weighted_global_ce(z_real, z_syn, inputs, hparams)
  loss_hkd = losses.masked_l1(student=z_syn, teacher=inputs.t_syn_logits, num_classes=num_old)
  loss = w["ft_ce"] * loss_ce + w["hkd"] * loss_hkd
  metrics = {"train/loss_wce": loss_ce, "train/loss_hkd": loss_hkd,
             "train/acc": _seen_accuracy(z_real, inputs, hparams)}
  return loss, (batch_stats, metrics)


# ---- RFD ------------------------------------------------------------------------------------


def _rfd_dist_terms(z_real, z_syn, inputs: DistillInputs, num_old, temperature, weights):
  """DIST on the old-class logits of the synthetic batch and of the real batch."""
  term_weights = dict(inter_weight=weights.get("dist_inter", 1.0),
                      intra_weight=weights.get("dist_intra", 1.0))
  dist_syn = losses.dist_loss(student=z_syn, teacher=inputs.t_syn_logits, num_classes=num_old,
                              temperature=temperature, **term_weights)
  dist_real = losses.dist_loss(student=z_real, teacher=inputs.t_real_logits, num_classes=num_old,
                               temperature=temperature, **term_weights)
  return dist_syn, dist_real


def rfd_main_loss(params, aux, batch_stats, inputs: DistillInputs, hparams, *, model,
                  teacher_vars, temperature: float, striplet: float = 0.0):
  """RFD main phase (spec §5.1): w_ce·local CE(real) + w_dist_old·DIST(syn) + w_dist_new·DIST(real)
  + w_lfd·LFD.

  Three separate train-mode student passes, BN running stats threaded through in the original's
  order: real, synthetic, then the hybrid path — the student's stages 2–4 on the teacher's stage-1
  map of the real images (it only touches the BN layers of stages 2–4). LFD is the MSE between the
  student's pooled feature of the real images and the hybrid path's, with gradients into both.

  striplet > 0 (config.rgal.striplet with inversion.kind = "rgal", rgal.md §7): + striplet·RGAL's student-phase triplet on
  the replay batch: distance-weighted sampling on the student's normalised old-class logits, labels
  = the teacher's argmax, pulling same-label pooled features together (key: inputs.rng).
  """
  del aux, teacher_vars
  w, num_old, num_seen = hparams["weights"], hparams["num_old"], hparams["num_seen"]
  z_real, f_real, batch_stats = _apply(model, params, batch_stats, inputs.real, train=True)
  z_syn, f_syn, batch_stats = _apply(model, params, batch_stats, inputs.syn, train=True)
  (_, f_hybrid), updates = model.apply(
      {"params": params, "batch_stats": batch_stats}, inputs.t_real_stage1, train=True,
      mutable=["batch_stats"], method=model.from_stage1)
  loss_ce = jnp.mean(_local_ce(z_real, inputs.labels, num_old, num_seen))
  dist_syn, dist_real = _rfd_dist_terms(z_real, z_syn, inputs, num_old, temperature, w)
  loss_lfd = losses.feature_mse(student=f_real["pooled"], hybrid=f_hybrid["pooled"])
  loss = (w["ce"] * loss_ce + w["dist_old"] * dist_syn + w["dist_new"] * dist_real
          + w["lfd"] * loss_lfd)
  metrics = {"train/loss_ce": loss_ce, "train/loss_dist_syn": dist_syn,
             "train/loss_dist_real": dist_real, "train/loss_lfd": loss_lfd,
             "train/acc": _seen_accuracy(z_real, inputs, hparams)}
  if striplet > 0:
    loss_tri = rgal_replay_triplet(z_syn, f_syn["pooled"], inputs, num_old)
    loss = loss + striplet * loss_tri
    metrics["train/loss_triplet"] = loss_tri
  return loss, (updates["batch_stats"], metrics)


def rgal_replay_triplet(z_syn, pooled_syn, inputs: DistillInputs, num_old) -> jax.Array:
  """RGAL's student-phase triplet on the replay batch (rgal.md §4.3 sampling, §7 plug-in)."""
  return rgal_losses.mined_triplet_loss(
      inputs.rng, mining=inversion.old_class_logits(z_syn, num_old), labels=inputs.syn_labels,
      num_dims=num_old, embeddings=[rgal_losses.embedding(pooled_syn)], lower=0.5, upper=1.4,
      clamp=True)


def rfd_finetune_loss(params, aux, batch_stats, inputs: DistillInputs, hparams, *, model,
                      teacher_vars, temperature: float):
  """RFD head fine-tuning (spec §5.2; backbone frozen, BN on running stats): w_ft_ce·class-weighted
  global CE on real ∪ synthetic + both DIST terms with the main phase's weights; no LFD."""
  del aux, teacher_vars
  w = hparams["weights"]
  params = _frozen_backbone(params)
  z_real, _, _ = _apply(model, params, batch_stats, inputs.real, train=False)
  z_syn, _, _ = _apply(model, params, batch_stats, inputs.syn, train=False)
  loss_ce = _class_weighted_global_ce(z_real, z_syn, inputs, hparams)
  dist_syn, dist_real = _rfd_dist_terms(z_real, z_syn, inputs, hparams["num_old"], temperature,
                                        w)
  loss = w["ft_ce"] * loss_ce + w["dist_old"] * dist_syn + w["dist_new"] * dist_real
  metrics = {"train/loss_wce": loss_ce, "train/loss_dist_syn": dist_syn,
             "train/loss_dist_real": dist_real, "train/acc": _seen_accuracy(z_real, inputs, hparams)}
  return loss, (batch_stats, metrics)


# ---- ABD and DeepInversion: one forward pass over real ∪ synthetic ----------------------------


def _update_running_stats_twice(new_stats, old_stats, momentum: float = BN_MOMENTUM):
  """The running statistics after a second train-mode pass over the same batch.

  One pass gives new = m·old + (1−m)·b; a second with the same batch statistics b gives
  m·new + (1−m)·b = new + m·(new − old).
  """
  return jax.tree.map(lambda new, old: new + momentum * (new - old), new_stats, old_stats)


def abd_loss(params, aux, batch_stats, inputs: DistillInputs, hparams, *, model, teacher_vars,
             mu: float, all_outputs: bool = False):
  """ABD (`AlwaysBeDreaming.update_model`): local CE (real) + global CE on detached features
  (real ∪ syn) over the seen classes (all head outputs with `all_outputs`, ABD's own head), both
  weighted per example by old/new class balance
  (old: n_old/n_seen, new: 1 − that), + μ·feature distillation through the teacher's head:
  mean_i Σ_{c<n_old} (head_T(h_S(x_i)) − z_T(x_i))²_c / n_old.

  The original takes the detached features from a second train-mode forward pass under no_grad:
  the same values as the first pass, but BN's running statistics are updated twice per step,
  which is reproduced here.
  """
  del aux
  num_old, num_seen = hparams["num_old"], hparams["num_seen"]
  x = jnp.concatenate([inputs.real, inputs.syn])
  labels = jnp.concatenate([inputs.labels, inputs.syn_labels])
  z, feats, new_stats = _apply(model, params, batch_stats, x, train=True)
  old_share = num_old / num_seen
  weight = jnp.where(labels < num_old, old_share, 1.0 - old_share)
  batch = inputs.real.shape[0]
  loss_local = jnp.mean(weight[:batch] * _local_ce(z[:batch], inputs.labels, num_old, num_seen))
  head_only = model.apply({"params": params}, jax.lax.stop_gradient(feats["pooled"]),
                          method=model.head_logits)
  if not all_outputs:
    head_only = mask_unseen(head_only, num_seen)
  loss_global = jnp.mean(weight * losses.cross_entropy(logits=head_only, labels=labels))
  through_teacher_head = model.apply({"params": teacher_vars["params"]}, feats["pooled"],
                                     method=model.head_logits)
  teacher_logits = jnp.concatenate([inputs.t_real_logits, inputs.t_syn_logits])
  loss_kd = losses.masked_squared_error(student=through_teacher_head, teacher=teacher_logits,
                                        num_classes=num_old)
  loss = loss_local + loss_global + mu * loss_kd
  metrics = {"train/loss_ce": loss_local, "train/loss_global_ce": loss_global,
             "train/loss_kd": loss_kd,
             "train/acc": jnp.mean(losses.accuracy(logits=mask_unseen(z[:batch], num_seen),
                                                   labels=inputs.labels))}
  return loss, (_update_running_stats_twice(new_stats, batch_stats), metrics)


def deepinversion_loss(params, aux, batch_stats, inputs: DistillInputs, hparams, *, model,
                       teacher_vars, mu: float, temperature: float):
  """ABD's DeepInversion baseline (`DeepInversionGenBN.update_model`), one forward pass over
  real ∪ synthetic:

    CE over the seen classes on the real rows only
    + μ·KD_old: real rows, −Σ_{c<n_old} softmax(t/T)_c · log_softmax_{c<n_old}(s/T)_c
    + μ·KD_syn: synthetic rows, −Σ_{c<n_old} softmax(t/T)_c · log_softmax_{c<n_seen}(s/T)_c
      (the teacher's softmax zero-padded over the new classes),
  each KD a mean over its rows, without the T² factor (commented out in ABD's `loss_fn_kd`).
  """
  del aux, teacher_vars
  num_old, num_seen = hparams["num_old"], hparams["num_seen"]
  batch = inputs.real.shape[0]
  z, _, batch_stats = _apply(model, params, batch_stats,
                             jnp.concatenate([inputs.real, inputs.syn]), train=True)
  z_real, z_syn = z[:batch], z[batch:]
  loss_ce = jnp.mean(losses.cross_entropy(logits=mask_unseen(z_real, num_seen),
                                          labels=inputs.labels))
  kd_real = losses.soft_cross_entropy(student=z_real, teacher=inputs.t_real_logits,
                                      num_classes=num_old, temperature=temperature,
                                      student_classes=num_old)
  kd_syn = losses.soft_cross_entropy(student=z_syn, teacher=inputs.t_syn_logits,
                                     num_classes=num_old, temperature=temperature,
                                     student_classes=num_seen)
  metrics = {"train/loss_ce": loss_ce, "train/loss_kd_real": kd_real,
             "train/loss_kd_syn": kd_syn,
             "train/acc": jnp.mean(losses.accuracy(logits=mask_unseen(z_real, num_seen),
                                                   labels=inputs.labels))}
  return loss_ce + mu * (kd_real + kd_syn), (batch_stats, metrics)


def get_learner(config) -> Learner:
  """The Learner of `config.method`, its static hyperparameters bound from `config.distill`."""
  method, distill = config.method, config.distill
  reuse = {"auto": method == "abd", "fresh": False, "reuse": True}[config.inversion.generator]
  if method in ("finetune", "joint"):
    return Learner(name=method, uses_inversion=False, has_finetune_phase=False,
                   reuse_generator=False, train_on_seen_classes=method == "joint")
  if method == "rfd":
    bind = lambda fn: functools.partial(fn, temperature=distill.dist_temperature)
    striplet = config.rgal.striplet if config.inversion.get("kind") == "rgal" else 0.0
    return Learner(name=method, uses_inversion=True, has_finetune_phase=True,
                   reuse_generator=reuse, weight_scheme="rfd",
                   main_loss=functools.partial(bind(rfd_main_loss), striplet=striplet),
                   finetune_loss=bind(rfd_finetune_loss))
  if method == "rdfcil":
    return Learner(name=method, uses_inversion=True, has_finetune_phase=True,
                   reuse_generator=reuse, weight_scheme="rdfcil", main_loss=rdfcil_main_loss,
                   finetune_loss=rdfcil_finetune_loss, init_aux=init_rkd_projections)
  if method == "abd":
    all_outputs = config.model.head == "abd"
    return Learner(name=method, uses_inversion=True, has_finetune_phase=False,
                   reuse_generator=reuse, ce_over_all_outputs=all_outputs,
                   main_loss=functools.partial(abd_loss, mu=distill.abd_mu,
                                               all_outputs=all_outputs))
  if method == "deepinversion":
    return Learner(name=method, uses_inversion=True, has_finetune_phase=False,
                   reuse_generator=reuse, main_loss=functools.partial(
                       deepinversion_loss, mu=distill.lwf_mu,
                       temperature=distill.lwf_temperature))
  raise ValueError(f"config.method={method!r} is unknown")
