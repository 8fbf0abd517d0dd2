"""Training state containers and their construction."""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax


@flax.struct.dataclass
class TrainState:
  """The student: parameters, BatchNorm running statistics, optimizer state, step counter."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any

  @property
  def variables(self) -> dict[str, Any]:
    return {"params": self.params, "batch_stats": self.batch_stats}


def create_train_state(*, model: nn.Module, rng: jax.Array, image_size: int,
                       tx: optax.GradientTransformation) -> TrainState:
  """Initialises the model on a dummy (1, S, S, 3) batch and the optimizer on its params."""
  variables = model.init(rng, jnp.zeros((1, image_size, image_size, 3), jnp.float32), train=False)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables["batch_stats"], opt_state=tx.init(params))


def trainable_mask(params: Any, *, tasks_seen: int, backbone: bool) -> Any:
  """0/1 float32 scalars per parameter leaf: which params an update may change.

  The heads of tasks >= tasks_seen are never trained (their classes are unseen). The backbone
  (everything outside "head") is trainable iff `backbone` (False during head fine-tuning).
  """
  def leaf_mask(path, _):
    keys = [getattr(k, "key", None) for k in path]
    if keys and keys[0] == "head":
      task = int(keys[1].split("_")[0][len("task"):])
      return np.float32(task < tasks_seen)
    return np.float32(backbone)
  return jax.tree_util.tree_map_with_path(leaf_mask, params)
