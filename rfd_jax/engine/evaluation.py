"""Test-set predictions and top-1 accuracy in fixed-size batches sharded over the mesh."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn

import jax
import jax.numpy as jnp
import numpy as np

from rfd_jax.data import augment
from rfd_jax.engine import parallel
from rfd_jax.models.resnet import mask_unseen


def eval_step(variables: dict[str, Any], images: jax.Array, num_seen: jax.Array, *,
              model: nn.Module, mean: np.ndarray, std: np.ndarray) -> jax.Array:
  """Class-IL predictions: argmax over all seen classes, BN on running statistics.

  images: uint8 (B, H, W, 3) → int32 (B,) model labels.
  """
  logits, _ = model.apply(variables, augment.normalize(images, mean, std), train=False)
  return jnp.argmax(mask_unseen(logits, num_seen), axis=-1).astype(jnp.int32)


def predict(eval_fn, variables, images: np.ndarray, num_seen: int, batch_size: int,
            mesh) -> np.ndarray:
  """Predictions int32 (N,) for all `images` uint8 (N, H, W, 3): eval_fn(variables, batch,
  num_seen) per batch of `batch_size` (the last one zero-padded); (R, N) for the variables of a
  group of R runs and its vmapped eval_fn.

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
  # (B,) per batch, or (R, B) from a group's vmapped eval_fn
  return np.concatenate([np.asarray(p) for p in preds], axis=-1)[..., :num]


def make_eval_fn(model, *, mean, std, mesh):
  """The jitted `eval_step` of `model` (state replicated, batch split on "data")."""
  rep = parallel.replicated(mesh)
  return jax.jit(functools.partial(eval_step, model=model, mean=mean, std=std),
                 in_shardings=(rep, parallel.batch_sharded(mesh), rep), out_shardings=rep)


def top1_accuracy(eval_fn, variables, images: np.ndarray, labels: np.ndarray, *,
                  num_classes: int, batch_size: int, mesh) -> float:
  """Top-1 accuracy in percent of a classifier over all its `num_classes` outputs."""
  preds = predict(eval_fn, variables, images, num_classes, batch_size, mesh)
  return 100.0 * int(np.sum(preds == labels)) / len(labels)
