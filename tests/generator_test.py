"""Tests for rfd_jax.models.generator: variants, parameter count, and the spec's quirks checked
against an independent numpy forward pass (eps 0.8 BN, tanh then non-affine BN)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rfd_jax.models.generator import generator_for


@pytest.mark.parametrize("size", [16, 32, 64, 224])
def test_output_shapes(size):
  gen = generator_for(size)
  variables = jax.eval_shape(lambda: gen.init(jax.random.key(0), jnp.zeros((2, 1000)), train=False))
  out = jax.eval_shape(lambda v: gen.apply(v, jnp.zeros((2, 1000)), train=False), variables)
  chex.assert_shape(out, (2, size, size, 3))


def test_cifar_generator_parameter_count():
  variables = jax.eval_shape(lambda: generator_for(32).init(jax.random.key(0), jnp.zeros((2, 1000)),
                                                            train=False))
  count = sum(x.size for x in jax.tree.leaves(variables["params"]))
  expected = (1000 * 128 * 8 * 8 + 128 * 8 * 8   # linear
              + 2 * 128                         # BN(128)
              + 9 * 128 * 128 + 128 + 2 * 128   # conv 128→128 + BN
              + 9 * 128 * 64 + 64 + 2 * 64      # conv 128→64 + BN
              + 9 * 64 * 3 + 3)                 # conv 64→3; last BN has no parameters
  assert count == expected


def _conv3x3_numpy(x, kernel, bias):
  """'same' 3×3 convolution, NHWC, HWIO kernel."""
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  height, width = x.shape[1:3]
  out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
  for dy in range(3):
    for dx in range(3):
      out += padded[:, dy:dy + height, dx:dx + width, :] @ kernel[dy, dx]
  return out + bias


def _bn_numpy(x, eps, scale=None, bias=None):
  """Training-mode BN: batch mean / biased variance over (N, H, W)."""
  axes = tuple(range(x.ndim - 1))
  y = (x - x.mean(axes)) / np.sqrt(x.var(axes) + eps)
  return y if scale is None else y * scale + bias


def test_forward_matches_numpy_with_the_quirks():
  gen = generator_for(16)
  variables = gen.init(jax.random.key(0), jnp.zeros((2, 1000)), train=False)
  # non-trivial BN affine parameters so that a wrong eps or order would show
  params = jax.tree_util.tree_map_with_path(
      lambda p, v: v + 0.3 * (1 + jnp.arange(v.size).reshape(v.shape) % 3)
      if "bn" in jax.tree_util.keystr(p) else v, variables["params"])
  z = np.asarray(jax.random.normal(jax.random.key(1), (4, 1000)))
  out, _ = gen.apply({"params": params, "batch_stats": variables["batch_stats"]}, jnp.asarray(z),
                     train=True, mutable=["batch_stats"])
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x = z @ p["linear"]["kernel"] + p["linear"]["bias"]
  x = x.reshape(4, 4, 4, 128)
  x = _bn_numpy(x, 1e-5, p["bn_linear"]["scale"], p["bn_linear"]["bias"])
  for i in range(2):
    x = x.repeat(2, axis=1).repeat(2, axis=2)
    x = _conv3x3_numpy(x, p[f"conv{i}"]["kernel"], p[f"conv{i}"]["bias"])
    x = _bn_numpy(x, 0.8, p[f"bn{i}"]["scale"], p[f"bn{i}"]["bias"])  # eps 0.8
    x = np.where(x > 0, x, 0.2 * x)
  x = _conv3x3_numpy(x, p["conv_out"]["kernel"], p["conv_out"]["bias"])
  expected = _bn_numpy(np.tanh(x), 1e-5)  # tanh, then BN without affine parameters
  np.testing.assert_allclose(out, expected, atol=2e-4)
  assert "bn_out" not in params  # non-affine


def test_torch_default_init_bounds():
  params = generator_for(32).init(jax.random.key(0), jnp.zeros((2, 1000)), train=False)["params"]
  bound = 1 / np.sqrt(9 * 128)
  kernel = np.asarray(params["conv0"]["kernel"])
  assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.95 * bound
  assert np.abs(np.asarray(params["conv0"]["bias"])).max() <= bound


def test_bf16_convs_keep_float32_params_and_match_float32():
  """generator_for(size, "bfloat16"): same float32 parameters, float32 output within bf16 error
  of the float32 generator's; "float32" (the default) is the plain generator."""
  assert generator_for(8, "float32") == generator_for(8)
  gen, gen_bf16 = generator_for(8), generator_for(8, "bfloat16")
  z = jax.random.normal(jax.random.key(1), (4, 1000))
  shapes = jax.eval_shape(lambda: gen.init(jax.random.key(0), z, train=False))
  assert jax.eval_shape(lambda: gen_bf16.init(jax.random.key(0), z, train=False)) == shapes
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: rng.uniform(-0.05, 0.05, s.shape).astype(s.dtype), shapes)
  variables["batch_stats"] = jax.tree.map(jnp.abs, variables["batch_stats"])

  @jax.jit
  def run(z):
    return [g.apply(variables, z, train=True, mutable=["batch_stats"]) for g in (gen, gen_bf16)]

  (out, stats), (out_bf16, stats_bf16) = run(z)
  assert out_bf16.dtype == jnp.float32
  assert {x.dtype for x in jax.tree.leaves(stats_bf16)} == {jnp.dtype(jnp.float32)}
  np.testing.assert_allclose(out_bf16, out, atol=0.05 * float(jnp.max(jnp.abs(out))))
