"""Pieces shared by the epoch-based jobs (`teacher`, `dfkd`): plain classifier evaluation, the
per-epoch cosine learning rate, and epoch-granular checkpoints with the resume policy of the
class-incremental job (refuse a checkpoint whose config changes the result, fall back from a
corrupted newest checkpoint; a non-finite run never saves).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Any, Callable

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rfd_jax import checkpointing, config_validation, input_pipeline, parallel

JOBS = ("dfcil", "teacher", "dfkd")


def job_of(config) -> str:
  """config.job, "dfcil" (the class-incremental experiment) when the config has none."""
  job = config.get("job", "dfcil")
  if job not in JOBS:
    raise config_validation.ConfigError(f"config.job={job!r} is unknown; expected one of {JOBS}.")
  return job


def make_mesh_and_workdir(config, workdir: str):
  """The device mesh of an epoch job (every device; batches split on "data"), after checking that
  the device count divides the batch sizes; creates `workdir`."""
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.data.batch_size, mesh)
  parallel.check_batch_size(config.data.eval_batch_size, mesh, field="config.data.eval_batch_size")
  os.makedirs(workdir, exist_ok=True)
  return mesh


def cosine_lr(base_lr: float, epoch: int, num_epochs: int) -> float:
  """PyTorch CosineAnnealingLR (eta_min 0) stepped once per epoch: lr·(1 + cos(π·epoch/E))/2."""
  return float(base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / num_epochs)))


def config_dict(config) -> dict:
  return json.loads(json.dumps(config.to_dict(), default=str))


@functools.partial(jax.jit, static_argnames=("model",))
def _correct(variables, images, labels, mean, std, *, model: nn.Module) -> jax.Array:
  logits, _ = model.apply(variables, input_pipeline.normalize(images, mean, std), train=False)
  return jnp.sum(jnp.argmax(logits, axis=-1) == labels)


def top1_accuracy(model: nn.Module, variables: dict[str, Any], images: np.ndarray,
                  labels: np.ndarray, *, mean: np.ndarray, std: np.ndarray, batch_size: int,
                  mesh) -> float:
  """Top-1 accuracy in percent of a plain classifier on uint8 images (N, H, W, 3), BN on running
  statistics, in fixed-size batches sharded over `mesh` (the last batch padded and its padding
  labelled -1, which never counts as correct)."""
  num = len(images)
  padded_num = -(-num // batch_size) * batch_size
  pad = padded_num - num
  images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
  labels = np.concatenate([labels.astype(np.int32), np.full((pad,), -1, np.int32)])
  rows = parallel.process_batch_indices(np.arange(batch_size), mesh,
                                       field="config.data.eval_batch_size")
  correct = 0
  for i in range(0, padded_num, batch_size):
    batch = parallel.global_batch({"x": images[i + rows], "y": labels[i + rows]}, mesh)
    correct += int(_correct(variables, batch["x"], batch["y"], mean, std, model=model))
  return 100.0 * correct / num


@dataclasses.dataclass
class EpochCheckpoints:
  """Epoch-boundary checkpoints of a job in WORKDIR/checkpoints (or none if disabled).

  A checkpoint holds an arrays pytree and a JSON record with at least "epoch" (epochs done) and
  "config"; `restore` returns the newest readable one whose config matches (see
  `checkpointing.check_config`), else None.
  """
  config: Any
  checkpoints: checkpointing.Checkpoints | None

  @classmethod
  def open(cls, config, workdir: str) -> "EpochCheckpoints":
    checkpoints = None
    if config.ckpt.enabled:
      checkpoints = checkpointing.Checkpoints(os.path.join(workdir, "checkpoints"),
                                              keep=config.ckpt.keep)
    return cls(config, checkpoints)

  def restore(self, abstract_arrays: Callable[[dict], Any]) -> checkpointing.Restored | None:
    if self.checkpoints is None:
      return None
    current = config_dict(self.config)
    source = self.checkpoints.directory
    restored = self.checkpoints.restore(abstract_arrays, check_meta=lambda meta: (
        checkpointing.check_config(meta["config"], current,
                                   allow_change=self.config.ckpt.allow_config_change,
                                   source=source)))
    if restored is not None:
      logging.info("resuming from checkpoint %s (%d epochs done)", restored.directory,
                   restored.meta["epoch"])
    return restored

  def save(self, arrays: dict[str, Any], meta: dict[str, Any]) -> None:
    """Saves after checking every array is finite (a NaN run never overwrites good checkpoints)."""
    finite = all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(arrays)
                 if jnp.issubdtype(x.dtype, jnp.floating))
    if not finite:
      raise checkpointing.NonFiniteError(
          f"non-finite parameters after epoch {meta['epoch']}; not saved"
          + ("" if self.checkpoints is None else
             f" (the last good checkpoint is in {self.checkpoints.directory})"))
    if self.checkpoints is not None:
      self.checkpoints.save(arrays, {**meta, "config": config_dict(self.config)})

  def close(self) -> None:
    if self.checkpoints is not None:
      self.checkpoints.close()


def raise_if_non_finite(values: dict[str, Any], where: str) -> None:
  """NonFiniteError naming the terms of `values` (scalars) that are NaN/inf."""
  bad = {k: float(v) for k, v in values.items() if not np.isfinite(np.asarray(v)).all()}
  if bad:
    raise checkpointing.NonFiniteError(f"non-finite loss at {where}: {bad}")


def stop_requested(signals) -> bool:
  return signals is not None and signals.requested(sync=True)
