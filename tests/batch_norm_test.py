"""Tests for rfd_jax.models.batch_norm: the one-pass BatchNorm against flax's nn.BatchNorm and the
two-pass input statistics, in float64 (where only the order of the float sums differs, the results
agree to ~1e-12 relative), and the RFD main step over several steps with and without it."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import common
from rfd_jax.engine import optim
from rfd_jax.engine.state import trainable_mask
from rfd_jax.jobs import steps
from rfd_jax.methods import learners
from rfd_jax.models import batch_norm, resnet
from rfd_jax.models.generator import generator_for

import distill_reference
from gradient_checks import to_float64
import random_states

RTOL = 1e-12


def assert_close(actual, expected, rtol=RTOL, what=""):
  """Every leaf: max |a − e| <= rtol · max(|e|, 1) (relative to the leaf's scale)."""
  def check(path, a, e):
    a, e = np.asarray(a), np.asarray(e)
    scale = max(float(np.max(np.abs(e))) if e.size else 0.0, 1.0)
    err = float(np.max(np.abs(a - e))) if e.size else 0.0
    assert err <= rtol * scale, f"{what}{jax.tree_util.keystr(path)}: {err:.3g} > {rtol:g}·{scale:.3g}"
  jax.tree_util.tree_map_with_path(check, actual, expected)


@pytest.fixture(name="one_pass")
def _one_pass():
  """one_pass(False): the models built from then on get flax's own BatchNorm
  (bench.common.use_flax_batch_norm); one_pass(True): ours, also restored after the test."""
  yield lambda value: common.use_flax_batch_norm(not value)
  common.use_flax_batch_norm(False)


@pytest.mark.parametrize("shape", [(8, 5, 6, 3), (16, 4), (4, 3, 3, 2, 5)])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_matches_flax_in_float64(shape, affine):
  """Outputs, updated running statistics and the gradients w.r.t. the input, scale and bias."""
  kwargs = dict(momentum=0.9, epsilon=1e-3, use_scale=affine, use_bias=affine, dtype=jnp.float64,
                param_dtype=jnp.float64)
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape) * 2.0 + 0.7)
    cotangent = jnp.asarray(rng.normal(size=shape))
    ours, theirs = batch_norm.BatchNorm(**kwargs), nn.BatchNorm(**kwargs)
    variables = to_float64(theirs.init(jax.random.key(0), x, use_running_average=False))
    if affine:
      variables["params"] = {"scale": jnp.asarray(rng.normal(size=shape[-1:])),
                             "bias": jnp.asarray(rng.normal(size=shape[-1:]))}
    assert (jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x, use_running_average=False))
            == jax.tree.map(jnp.shape, variables))

    def run(module, params, x):
      y, updates = module.apply({**variables, "params": params}, x, use_running_average=False,
                                mutable=["batch_stats"])
      # a loss that also depends on the new running statistics (their gradient is zero in flax)
      return jnp.sum(y * cotangent), (y, updates)

    params = variables.get("params", {})
    for_ours = jax.jit(jax.value_and_grad(functools.partial(run, ours), (0, 1), has_aux=True))
    for_theirs = jax.jit(jax.value_and_grad(functools.partial(run, theirs), (0, 1), has_aux=True))
    (_, (y, updates)), grads = for_ours(params, x)
    (_, (y_ref, updates_ref)), grads_ref = for_theirs(params, x)
    assert y.dtype == jnp.float64
    assert_close(y, y_ref, what="y")
    assert_close(updates, updates_ref, what="batch_stats")
    assert_close(grads, grads_ref, what="grads")
    assert np.abs(np.asarray(grads[1])).max() > 1e-3  # the input gradient is not trivially zero


def test_eval_mode_is_flax_bit_for_bit():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 3, 3, 5)), jnp.float32)
  variables = nn.BatchNorm(use_running_average=True).init(jax.random.key(0), x)
  variables = jax.tree.map(lambda v: v + 0.25, variables)
  np.testing.assert_array_equal(
      batch_norm.BatchNorm(use_running_average=True).apply(variables, x),
      nn.BatchNorm(use_running_average=True).apply(variables, x))


def test_moments_match_two_pass_statistics_in_float64():
  """`moments` (one pass) against mean and variance (two passes), values and gradients."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(6, 4, 5, 3)) * 3.0 - 1.5)
    w_mean, w_var = jnp.asarray(rng.normal(size=3)), jnp.asarray(rng.normal(size=3))

    def loss(stats_fn, x):
      mean, var = stats_fn(x)
      return jnp.sum(w_mean * mean + w_var * jnp.log(var)), (mean, var)

    two_pass = lambda x: (jnp.mean(x, (0, 1, 2)), jnp.var(x, (0, 1, 2)))
    (_, stats), grad = jax.value_and_grad(functools.partial(loss, batch_norm.moments),
                                          0, has_aux=True)(x)
    (_, stats_ref), grad_ref = jax.value_and_grad(functools.partial(loss, two_pass), 0,
                                                  has_aux=True)(x)
    assert stats[0].dtype == jnp.float64
    assert_close(stats, stats_ref, what="moments")
    assert_close(grad, grad_ref, what="grad")


def _float64_rfd_steps(num_steps: int):
  """`num_steps` RFD main-phase steps of a tiny float64 ResNet (one block per stage, 8 px, batch
  16; the frozen generator is float32 as in training): the states and metrics after each."""
  static, (batch, rng, _, teacher_vars, gen_vars) = distill_reference.tiny_rfd_setup()
  model = resnet.CifarResNet(task_sizes=(2,) * 5, stage_blocks=(1, 1, 1, 1), dtype=jnp.float64)
  tx = optim.momentum_transform(0.9)
  learner_loss = functools.partial(learners.rfd_main_loss, temperature=2.0)
  state = random_states.random_train_state(model, tx, image_size=distill_reference.IMAGE_SIZE,
                                           num_classes=10, seed=3)
  state, teacher_vars = to_float64((state, teacher_vars))
  num_old = distill_reference.NUM_OLD
  hparams = {"lr": jnp.float64(0.05), "num_seen": jnp.int32(num_old + 2),
             "num_old": jnp.int32(num_old),
             "trainable": trainable_mask(state, tasks_seen=3, backbone=True),
             "weights": {"ce": 1.0, "dist_old": 1.0, "dist_new": 1.0, "lfd": 1.0,
                         "dist_inter": 1.0, "dist_intra": 1.0},
             "class_weights": jnp.ones((10,))}
  step = jax.jit(functools.partial(
      steps.distill_train_step, loss_fn=learner_loss, model=model, tx=tx, weight_decay=5e-4,
      generator=static["generator"], mean=static["mean"], std=static["std"]))
  history = []
  for i in range(num_steps):
    state, metrics = step(state, batch, jax.random.fold_in(rng, i), hparams, teacher_vars,
                          gen_vars)
    history.append((state.params, state.batch_stats, metrics))
  return history


def test_rfd_steps_in_float64_agree_with_and_without_one_pass(one_pass):
  """The change only reorders float sums: three float64 RFD steps (three train-mode student passes,
  BN running statistics threaded through, SGD) agree to 1e-12 with flax's BatchNorm."""
  with jax.enable_x64(True):
    one_pass(False)
    reference = _float64_rfd_steps(3)
    one_pass(True)
    ours = _float64_rfd_steps(3)
  for i, (got, want) in enumerate(zip(ours, reference)):
    assert_close(got, want, what=f"step {i + 1}: ")
  # the reference really was flax's BatchNorm: the sums' order shows in the last bits
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(ours[-1]),
                                                      jax.tree.leaves(reference[-1])))
  # the steps moved the parameters and the running statistics
  assert not np.allclose(reference[-1][1]["stem_bn"]["mean"], 0.0)
  first = jax.tree.leaves(reference[0][0])
  last = jax.tree.leaves(reference[-1][0])
  assert any(not np.allclose(a, b) for a, b in zip(first, last))


def test_generator_train_mode_keeps_flax_variables():
  """The generator's BN layers (train mode in inversion) keep nn.BatchNorm's variables."""
  generator = generator_for(8)
  z = jnp.zeros((2, generator.z_dim))
  shapes = jax.eval_shape(functools.partial(generator.init, train=True), jax.random.key(0), z)
  assert set(shapes["batch_stats"]) == {"bn_linear", "bn0", "bn1", "bn_out"}
  assert set(shapes["params"]["bn0"]) == {"scale", "bias"}
  assert "bn_out" not in shapes["params"]  # affine=False
