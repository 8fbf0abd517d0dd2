"""Test-set predictions and top-1 accuracy in fixed-size batches sharded over the mesh."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rfd_jax import parallel, steps


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
  """The jitted `steps.eval_step` of `model` (state replicated, batch split on "data")."""
  rep = parallel.replicated(mesh)
  return jax.jit(functools.partial(steps.eval_step, model=model, mean=mean, std=std),
                 in_shardings=(rep, parallel.batch_sharded(mesh), rep), out_shardings=rep)


def top1_accuracy(eval_fn, variables, images: np.ndarray, labels: np.ndarray, *,
                  num_classes: int, batch_size: int, mesh) -> float:
  """Top-1 accuracy in percent of a classifier over all its `num_classes` outputs."""
  preds = predict(eval_fn, variables, images, num_classes, batch_size, mesh)
  return 100.0 * int(np.sum(preds == labels)) / len(labels)
