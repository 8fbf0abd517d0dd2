"""Tests for rfd_jax.models.layers.upsample2x_conv3x3 / UpsampleConv: the generators' nearest ×2
upsample → conv3×3 computed as four 2×2 phase convolutions at the low resolution. Against numpy
(values), finite differences (gradients), the upsample-then-Conv layer it replaces (parameters and
outputs), and float64 inversion and RFD steps with either layer (the change only regroups float
sums, so they agree to ~1e-12)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rfd_jax.engine import optim
from rfd_jax.engine.state import trainable_mask
from rfd_jax.jobs import steps
from rfd_jax.methods import inversion, learners
from rfd_jax.models import cmi_generator, generator, layers, resnet

from batch_norm_test import assert_close
from gradient_checks import check_gradient, to_float64
import random_states


def _numpy_upsample_conv(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
  """Every pixel repeated in a 2×2 block, zero-padded by 1, then a direct 3×3 correlation."""
  up = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)
  padded = np.pad(up, ((0, 0), (1, 1), (1, 1), (0, 0)))
  height, width = up.shape[1:3]
  out = np.zeros(up.shape[:3] + (kernel.shape[-1],))
  for u in range(3):
    for v in range(3):
      out += padded[:, u:u + height, v:v + width, :] @ kernel[u, v]
  return out


class _UpsampledConv(layers.Conv):
  """The layer UpsampleConv replaces: nearest ×2 upsampling, then a 3×3 `Conv` with padding 1."""

  def __call__(self, inputs):
    return super().__call__(jnp.repeat(jnp.repeat(inputs, 2, axis=1), 2, axis=2))


def _reference_layer(features, **kwargs):
  return _UpsampledConv(features, (3, 3), padding=((1, 1), (1, 1)), **kwargs)


@pytest.mark.parametrize("shape", [(2, 3, 3, 4, 5), (1, 4, 2, 3, 2), (3, 1, 1, 2, 3)])
def test_matches_numpy_in_float64(shape):
  """(B, H, W, Ci, Co): the output equals upsampling + a direct 3×3 convolution in numpy; border
  rows and columns included (zero padding at the high resolution)."""
  batch, height, width, cin, cout = shape
  rng = np.random.default_rng(0)
  x = rng.normal(size=(batch, height, width, cin))
  kernel = rng.normal(size=(3, 3, cin, cout))
  with jax.enable_x64(True):
    out = jax.jit(layers.upsample2x_conv3x3)(jnp.asarray(x), jnp.asarray(kernel))
    chex.assert_shape(out, (batch, 2 * height, 2 * width, cout))
    chex.assert_type(out, jnp.float64)
    np.testing.assert_allclose(np.asarray(out), _numpy_upsample_conv(x, kernel), rtol=1e-12,
                               atol=1e-12)


def test_gradients_match_finite_differences():
  """∇ w.r.t. the low-resolution input and the 3×3 kernel (the phase kernels are sums of its
  taps) against central differences in float64, non-zero."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 3, 4, 3)).astype(np.float32)
  kernel = rng.normal(size=(3, 3, 3, 2)).astype(np.float32)
  weights = rng.normal(size=(2, 6, 8, 2)).astype(np.float32)
  check_gradient(lambda x, k: jnp.sum(weights * jnp.tanh(layers.upsample2x_conv3x3(x, k))),
                 x, kernel)


@pytest.mark.parametrize("phases", [True, False])
def test_module_keeps_the_parameters_and_function_of_the_layer_it_replaces(phases):
  """Either form: the parameter tree and initial values of upsample → Conv (same key), the same
  output in float64, and with bfloat16 compute a float32 output within bf16 error of float32."""
  init = jax.nn.initializers.normal(0.5)
  ours = layers.UpsampleConv(6, phases=phases, kernel_init=init, bias_init=init)
  reference = _reference_layer(6, kernel_init=init, bias_init=init)
  x = np.random.default_rng(2).normal(size=(2, 5, 4, 3)).astype(np.float32)
  variables = ours.init(jax.random.key(0), x)
  chex.assert_trees_all_equal(variables, reference.init(jax.random.key(0), x))
  chex.assert_shape(variables["params"]["kernel"], (3, 3, 3, 6))
  with jax.enable_x64(True):
    x64, vars64 = to_float64((x, variables))
    out = ours.apply(vars64, x64)
    chex.assert_shape(out, (2, 10, 8, 6))
    assert_close(out, reference.apply(vars64, x64), what="float64 output")
  bf16 = layers.UpsampleConv(6, phases=phases, kernel_init=init, bias_init=init, dtype=jnp.bfloat16,
                             out_dtype=jnp.float32)
  out_bf16, out_f32 = bf16.apply(variables, x), ours.apply(variables, x)
  chex.assert_type(out_bf16, jnp.float32)
  np.testing.assert_allclose(out_bf16, out_f32, atol=0.05 * float(jnp.max(jnp.abs(out_f32))))


def _float64_inversion_steps(num_steps: int, phases: bool):
  """`num_steps` generator steps of inversion in float64: a 2×2 → 8 px generator against a random
  one-block-per-stage ResNet teacher. The generator variables and metrics after each.

  SGD, not inversion's Adam: a conv bias followed by a train-mode BN has a gradient that is zero in
  exact arithmetic, so its float value is rounding noise, and Adam divides it by its own size —
  any regrouping of sums then moves those biases by a learning-rate-sized step."""
  gen = generator.Generator(init_size=2, init_channels=8, block_channels=(8, 4),
                            conv_dtype=jnp.float64, upsample_phases=phases)
  teacher = resnet.CifarResNet(task_sizes=(2,) * 5, stage_blocks=(1, 1, 1, 1), dtype=jnp.float64)
  teacher_state = random_states.random_train_state(teacher, optim.momentum_transform(0.9),
                                                   image_size=8, num_classes=10, seed=4)
  gen_vars = random_states.random_variables(gen, jnp.zeros((2, gen.z_dim)), seed=5, train=False)
  tx = optax.sgd(1e-4)
  teacher_vars, gen_vars = to_float64((teacher_state.variables, gen_vars))
  state = inversion.GeneratorState(step=jnp.int32(0), params=gen_vars["params"],
                                   batch_stats=gen_vars["batch_stats"],
                                   opt_state=tx.init(gen_vars["params"]))
  weights = {"ce": 1.0, "balance": 1.0, "smoothness": 1e-3, "bn": 50.0, "ce_temperature": 10.0}
  step = jax.jit(functools.partial(inversion.generator_step, generator=gen, teacher=teacher,
                                   tx=tx, batch_size=6, weights=weights))
  history = []
  for i in range(num_steps):
    state, metrics = step(state, teacher_vars, jax.random.key(i), jnp.int32(4))
    history.append((state.params, state.batch_stats, metrics))
  return history


def test_inversion_steps_in_float64_agree_with_the_upsampled_convolution():
  """Three float64 inversion steps (generator in train mode, forward and backward through both
  upsampling blocks, SGD) agree to 1e-12 with the generator built from upsample → Conv."""
  with jax.enable_x64(True):
    ours = _float64_inversion_steps(3, phases=True)
    reference = _float64_inversion_steps(3, phases=False)
  for i, (got, want) in enumerate(zip(ours, reference)):
    assert_close(got, want, what=f"step {i + 1}: ")
  first, last = jax.tree.leaves(reference[0][0]), jax.tree.leaves(reference[-1][0])
  assert any(not np.allclose(a, b) for a, b in zip(first, last))  # the steps trained


def _float64_rfd_steps(num_steps: int, phases: bool):
  """`num_steps` RFD main-phase steps with a float64 generator making the synthetic batch."""
  gen = generator.Generator(init_size=2, init_channels=8, block_channels=(8, 4),
                            conv_dtype=jnp.float64, upsample_phases=phases)
  model = resnet.CifarResNet(task_sizes=(2,) * 5, stage_blocks=(1, 1, 1, 1), dtype=jnp.float64)
  tx = optim.momentum_transform(0.9)
  state = random_states.random_train_state(model, tx, image_size=8, num_classes=10, seed=3)
  teacher = random_states.random_train_state(model, tx, image_size=8, num_classes=10, seed=6)
  gen_vars = random_states.random_variables(gen, jnp.zeros((2, gen.z_dim)), seed=7, train=False)
  state, teacher_vars, gen_vars = to_float64((state, teacher.variables, gen_vars))
  hparams = {"lr": jnp.float64(0.05), "num_seen": jnp.int32(6), "num_old": jnp.int32(4),
             "trainable": trainable_mask(state, tasks_seen=3, backbone=True),
             "weights": {"ce": 1.0, "dist_old": 1.0, "dist_new": 1.0, "lfd": 1.0,
                         "dist_inter": 1.0, "dist_intra": 1.0},
             "class_weights": jnp.ones((10,))}
  step = jax.jit(functools.partial(
      steps.distill_train_step, loss_fn=functools.partial(learners.rfd_main_loss, temperature=2.0),
      model=model, tx=tx, weight_decay=5e-4, generator=gen, mean=np.full(3, 0.5),
      std=np.full(3, 0.25)))
  rng = np.random.default_rng(0)
  batch = {"images": rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8),
           "labels": rng.integers(4, 6, (8,)).astype(np.int32)}
  history = []
  for i in range(num_steps):
    state, metrics = step(state, batch, jax.random.key(i), hparams, teacher_vars, gen_vars)
    history.append((state.params, state.batch_stats, metrics))
  return history


def test_rfd_steps_in_float64_agree_with_the_upsampled_convolution():
  """Three float64 RFD main steps whose synthetic batch comes from the generator agree to 1e-12
  with the generator built from upsample → Conv."""
  with jax.enable_x64(True):
    ours = _float64_rfd_steps(3, phases=True)
    reference = _float64_rfd_steps(3, phases=False)
  for i, (got, want) in enumerate(zip(ours, reference)):
    assert_close(got, want, what=f"step {i + 1}: ")


def test_cmi_generator_matches_the_upsampled_convolution():
  """The CMI / RGAL generator (two upsampling blocks, no conv bias) gives the same images in
  float64 in either form, from the same parameters."""
  gen = cmi_generator.CmiGenerator(nz=16, ngf=4, img_size=8, nc=3)
  z = np.random.default_rng(3).normal(size=(5, 16)).astype(np.float32)
  variables = gen.init(jax.random.key(0), z)
  with jax.enable_x64(True):
    z64, vars64 = to_float64((z, variables))
    ours = gen.apply(vars64, z64)
    reference = gen.clone(upsample_phases=False).apply(vars64, z64)
  chex.assert_shape(ours, (5, 8, 8, 3))
  assert_close(ours, reference, what="images")
  assert float(jnp.std(ours)) > 1e-3


def test_phases_on_cpu_only_unless_the_config_says():
  """"auto" computes by phases on CPU and upsamples on GPU / TPU (fewer kernels there by the
  compiler's counts); "phases" / "repeat" force a form; anything else is refused."""
  assert layers.resolve_upsample("auto", "cpu")
  assert not layers.resolve_upsample("auto", "gpu") and not layers.resolve_upsample("auto", "tpu")
  assert layers.resolve_upsample("phases", "tpu") and not layers.resolve_upsample("repeat", "cpu")
  with pytest.raises(ValueError, match="upsample='nearest'"):
    layers.resolve_upsample("nearest", "cpu")
  assert generator.generator_for(32, platform="cpu").upsample_phases
  assert not generator.generator_for(32, platform="tpu").upsample_phases
  assert not generator.generator_for(32, upsample="repeat", platform="cpu").upsample_phases
  assert generator.generator_for(32).upsample_phases == (jax.default_backend() == "cpu")
