"""Tests for rfd_jax.engine.optim: SGD equals optax's reference; masks freeze (the LR schedules: plan_test)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rfd_jax.engine import optim


def _grads(params, i):
  return jax.tree.map(lambda p: jnp.sin(p * (i + 1)) + 0.1 * i, params)


def test_sgd_matches_optax_reference_when_everything_trains():
  params = {"a": jnp.array([1.0, -2.0, 3.0]), "b": {"c": jnp.array([[0.5, 0.25]])}}
  reference = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9))
  tx = optim.momentum_transform(0.9)
  mask = jax.tree.map(lambda _: np.float32(1), params)
  ours, ours_state = params, tx.init(params)
  ref, ref_state = params, reference.init(params)
  for i in range(4):
    ours, ours_state = optim.sgd_update(params=ours, grads=_grads(ours, i), opt_state=ours_state,
                                        trainable=mask, lr=0.1, weight_decay=5e-4, tx=tx)
    updates, ref_state = reference.update(_grads(ref, i), ref_state, ref)
    ref = optax.apply_updates(ref, updates)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), ours, ref)


def test_masked_params_get_no_decay_and_no_momentum():
  params = {"train": jnp.array([1.0, 2.0]), "frozen": jnp.array([3.0, 4.0])}
  tx = optim.momentum_transform(0.9)
  state = tx.init(params)
  on = {"train": np.float32(1), "frozen": np.float32(1)}
  off = {"train": np.float32(1), "frozen": np.float32(0)}
  # build momentum on both, then freeze one: it must not move any more (PyTorch skips it).
  params, state = optim.sgd_update(params=params, grads=_grads(params, 0), opt_state=state,
                                   trainable=on, lr=0.1, weight_decay=0.1, tx=tx)
  frozen_before = np.asarray(params["frozen"])
  for i in range(3):
    params, state = optim.sgd_update(params=params, grads=_grads(params, i), opt_state=state,
                                     trainable=off, lr=0.1, weight_decay=0.1, tx=tx)
  np.testing.assert_array_equal(params["frozen"], frozen_before)
  assert not np.allclose(params["train"], [1.0, 2.0])
