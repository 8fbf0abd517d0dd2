"""SGD with momentum and weight decay restricted to trainable parameters (the learning-rate
schedules are in rfd_jax.engine.plan).

PyTorch's SGD skips parameters whose gradient is None: they are neither decayed nor moved by their
momentum buffer. We express "trainable" as a 0/1 mask pytree passed as data (unseen-task heads,
and the backbone during head fine-tuning), so changing it never recompiles the step.
"""

from __future__ import annotations

from typing import Any

import jax
import optax


def momentum_transform(momentum: float) -> optax.GradientTransformation:
  """PyTorch SGD momentum (dampening 0): buf ← momentum·buf + g; the first buf is g."""
  return optax.trace(decay=momentum, nesterov=False)


def sgd_update(*, params: Any, grads: Any, opt_state: Any, lr: jax.Array, weight_decay: float,
               tx: optax.GradientTransformation, trainable: Any = None) -> tuple[Any, Any]:
  """One SGD step: p ← p − lr·m·buf with buf from (g + wd·p)·m, m the 0/1 trainable mask (every
  parameter trainable if `trainable` is None). The SGD of every job (tx: `momentum_transform`).

  Returns (new_params, new_opt_state).
  """
  if trainable is None:
    trainable = jax.tree.map(lambda _: 1.0, params)
  grads = jax.tree.map(lambda g, p, m: (g + weight_decay * p) * m, grads, params, trainable)
  direction, opt_state = tx.update(grads, opt_state, params)
  params = jax.tree.map(lambda p, d, m: p - lr * m * d, params, direction, trainable)
  return params, opt_state
