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
  """The student and everything its updates carry.

  Attributes:
    step: updates so far.
    params: the model's parameters.
    batch_stats: the model's BatchNorm running statistics.
    aux_params: trainable parameters outside the model, e.g. R-DFCIL's RKD projections ({} if none).
    opt_state: optimizer state over {"model": params, "aux": aux_params}.
    class_counts: float32 (C,) labels seen this task (real + synthetic), for class-balanced CE.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  aux_params: Any
  opt_state: Any
  class_counts: jax.Array

  @property
  def trainable(self) -> dict[str, Any]:
    """The pytree the optimizer updates."""
    return {"model": self.params, "aux": self.aux_params}

  @property
  def variables(self) -> dict[str, Any]:
    return {"params": self.params, "batch_stats": self.batch_stats}


def create_train_state(*, model: nn.Module, rng: jax.Array, image_size: int, num_classes: int,
                       tx: optax.GradientTransformation, aux_params: Any = None) -> TrainState:
  """Initialises the model on a dummy (1, S, S, 3) batch and the optimizer on its params."""
  variables = model.init(rng, jnp.zeros((1, image_size, image_size, 3), jnp.float32), train=False)
  aux_params = {} if aux_params is None else aux_params
  state = TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                     batch_stats=variables["batch_stats"], aux_params=aux_params, opt_state=None,
                     class_counts=jnp.zeros((num_classes,), jnp.float32))
  return state.replace(opt_state=tx.init(state.trainable))


def trainable_mask(state: TrainState, *, tasks_seen: int, backbone: bool) -> dict[str, Any]:
  """0/1 float32 scalars per leaf of `state.trainable`: which params an update may change.

  The heads of tasks >= tasks_seen are never trained (their classes are unseen). The backbone
  (everything outside "head") and the aux params are trainable iff `backbone` (False during head
  fine-tuning).
  """
  def leaf_mask(path, _):
    keys = [getattr(k, "key", None) for k in path]
    if keys and keys[0] == "head":
      task = int(keys[1].split("_")[0][len("task"):])
      return np.float32(task < tasks_seen)
    return np.float32(backbone)
  return {"model": jax.tree_util.tree_map_with_path(leaf_mask, state.params),
          "aux": jax.tree.map(lambda _: np.float32(backbone), state.aux_params)}
