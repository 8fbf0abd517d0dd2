"""Pure, jittable train and eval steps. No I/O, no globals.

Static pieces (the model, the optimizer transform, normalisation constants) are bound with
`functools.partial` where the loop builds the jitted functions; everything that changes during a run
(learning rate, number of seen classes, trainable mask) is passed as data, so each step compiles
once per run.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rfd_jax import input_pipeline, losses, optim
from rfd_jax.models.resnet import mask_unseen
from rfd_jax.state import TrainState


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array,
               hparams: dict[str, Any], *, model: nn.Module, tx: optax.GradientTransformation,
               weight_decay: float, mean: np.ndarray, std: np.ndarray,
               augment: bool = True) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step of cross-entropy over the seen classes (the finetune / joint learners).

  Args:
    state: the student.
    batch: "images" uint8 (B, H, W, 3), "labels" int32 (B,) model labels.
    rng: key for this step's augmentation.
    hparams: "lr" f32 scalar, "num_seen" int32 scalar, "trainable" 0/1 mask pytree (see
      `state.trainable_mask`).
  Returns:
    (new_state, metrics) with metrics "train/loss", "train/acc" (batch means).
  """
  images = input_pipeline.normalize(batch["images"], mean, std)
  if augment:
    images = input_pipeline.random_crop_flip(rng, images)
  labels = batch["labels"]

  def loss_fn(params):
    (logits, _), new_vars = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, images, train=True,
        mutable=["batch_stats"])
    logits = mask_unseen(logits, hparams["num_seen"])
    loss = jnp.mean(losses.cross_entropy(logits=logits, labels=labels))
    return loss, (new_vars["batch_stats"], logits)

  (loss, (batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  params, opt_state = optim.sgd_update(
      params=state.params, grads=grads, opt_state=state.opt_state, trainable=hparams["trainable"],
      lr=hparams["lr"], weight_decay=weight_decay, tx=tx)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state)
  metrics = {"train/loss": loss,
             "train/acc": jnp.mean(losses.accuracy(logits=logits, labels=labels))}
  return new_state, metrics


def eval_step(variables: dict[str, Any], images: jax.Array, num_seen: jax.Array, *,
              model: nn.Module, mean: np.ndarray, std: np.ndarray) -> jax.Array:
  """Class-IL predictions: argmax over all seen classes, BN on running statistics.

  images: uint8 (B, H, W, 3) → int32 (B,) model labels.
  """
  logits, _ = model.apply(variables, input_pipeline.normalize(images, mean, std), train=False)
  return jnp.argmax(mask_unseen(logits, num_seen), axis=-1).astype(jnp.int32)
