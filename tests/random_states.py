"""Test helper: a TrainState of the right shapes without running (and compiling) the initialiser.

Initialising ResNet-32 / ResNet-18 for real costs several CPU seconds each; the real init is
covered by resnet_test.py and resnet18_test.py.
"""

import functools

import jax
import numpy as np

from rfd_jax.engine.state import create_train_state


def random_train_state(model, tx, *, image_size: int, num_classes: int, seed: int = 0,
                       scale: float = 0.1):
  """N(0, scale²) parameters, running mean 0 / var 1, zero optimizer state and class counts."""
  shapes = jax.eval_shape(functools.partial(create_train_state, model=model,
                                            image_size=image_size, num_classes=num_classes,
                                            tx=tx), rng=jax.random.key(0))
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda s: (scale * rng.standard_normal(s.shape)).astype(s.dtype),
                        shapes.params)
  batch_stats = jax.tree_util.tree_map_with_path(
      lambda path, s: np.full(s.shape, "var" in jax.tree_util.keystr(path), s.dtype),
      shapes.batch_stats)
  zeros = lambda tree: jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), tree)
  return shapes.replace(step=np.zeros((), np.int32), params=params, batch_stats=batch_stats,
                        opt_state=zeros(shapes.opt_state), class_counts=zeros(shapes.class_counts))


def random_variables(module, *init_args, seed: int = 0, scale: float = 0.1, **init_kwargs):
  """{"params", "batch_stats"} of `module.init(key, *init_args, **init_kwargs)`'s shapes without
  running the initialiser: N(0, scale²) parameters, running mean 0 / var 1."""
  shapes = jax.eval_shape(functools.partial(module.init, **init_kwargs), jax.random.key(0),
                          *init_args)
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda s: (scale * rng.standard_normal(s.shape)).astype(s.dtype),
                        shapes["params"])
  batch_stats = jax.tree_util.tree_map_with_path(
      lambda path, s: np.full(s.shape, "var" in jax.tree_util.keystr(path), s.dtype),
      shapes["batch_stats"])
  return {"params": params, "batch_stats": batch_stats}
