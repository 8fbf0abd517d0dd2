"""Tests for rfd_jax.models.cmi_generator: shapes and range, init of CMI's reset_model, batch-statistic
BatchNorm in every call."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from rfd_jax.models.cmi_generator import CmiGenerator


def _z(gen, batch=4, seed=1):
  # numpy, not jax.random: eager jax.random compiles its kernels, seconds on a loaded CPU
  return np.random.default_rng(seed).normal(size=(batch, gen.z_dim)).astype(np.float32)


def _variables(gen, z, seed=0):
  """Variables distributed like CMI's init, drawn with numpy: compiling the random init costs more
  than these tests' forward passes."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name == "kernel":
      return jnp.asarray(rng.normal(0.0, 0.02, shape), jnp.float32)
    if name == "scale":
      return jnp.asarray(rng.normal(1.0, 0.02, shape), jnp.float32)
    return jnp.ones(shape) if name == "var" else jnp.zeros(shape)

  return jax.tree_util.tree_map_with_path(fill, jax.eval_shape(gen.init, jax.random.key(0), z))


@pytest.mark.parametrize("size", [8, 16])
def test_output_shape_range_and_running_stats(size):
  gen = CmiGenerator(nz=32, ngf=8, img_size=size)
  z = _z(gen)
  variables = _variables(gen, z)
  images, updates = jax.jit(lambda v, z: gen.apply(v, z, mutable=["batch_stats"]))(variables, z)
  chex.assert_shape(images, (4, size, size, 3))
  chex.assert_type(images, jnp.float32)
  assert images.min() >= 0.0 and images.max() <= 1.0
  # the running statistics move but never normalise: an immutable call gives the same images
  old = traverse_util.flatten_dict(variables["batch_stats"])
  new = traverse_util.flatten_dict(updates["batch_stats"])
  assert all(not np.allclose(new[k], old[k]) for k in new)
  sample = jax.jit(gen.apply)
  np.testing.assert_allclose(sample(variables, z), images, atol=1e-6)
  np.testing.assert_allclose(sample(updates | {"params": variables["params"]}, z), images,
                             atol=1e-6)


def test_bad_image_size():
  for size in (10, 4):
    with pytest.raises(ValueError, match=f"img_size={size}"):
      CmiGenerator(nz=8, ngf=4, img_size=size)


def test_default_layout():
  gen = CmiGenerator()  # nz 256, ngf 64, 32 px: 8×8×128 after the linear layer
  assert gen.z_dim == 256 and gen.init_size == 8
  variables = jax.eval_shape(gen.init, jax.random.key(0), jnp.zeros((2, 256)))
  shapes = jax.tree.map(lambda x: x.shape, variables["params"])
  assert shapes["linear"] == {"kernel": (256, 128 * 64), "bias": (128 * 64,)}
  assert shapes["conv1"] == {"kernel": (3, 3, 128, 128)}  # no bias
  assert shapes["conv2"] == {"kernel": (3, 3, 128, 64)}
  assert shapes["conv_out"] == {"kernel": (3, 3, 64, 3), "bias": (3,)}
  assert {k: v.shape for k, v in variables["batch_stats"]["bn2"].items()} == {"mean": (64,),
                                                                             "var": (64,)}
  chex.assert_shape(jax.eval_shape(gen.apply, variables, jnp.zeros((2, 256))), (2, 32, 32, 3))


def test_init_statistics():
  gen = CmiGenerator(nz=64, ngf=64, img_size=8)  # ≥ 16k values per kernel, 320 BN scales
  # rbg keys: the same initializers, less to compile than threefry's
  params = jax.jit(gen.init)(jax.random.key(0, impl="rbg"), jnp.zeros((2, 64)))["params"]
  for name in ("linear", "conv1", "conv2", "conv_out"):
    kernel = np.asarray(params[name]["kernel"])
    assert abs(kernel.mean()) < 0.002 and kernel.std() == pytest.approx(0.02, rel=0.1), name
  for name in ("linear", "conv_out"):
    np.testing.assert_array_equal(params[name]["bias"], 0.0)
  scales = np.concatenate([params[f"bn{i}"]["scale"] for i in range(3)])  # 320 values
  assert scales.mean() == pytest.approx(1.0, abs=0.005)
  assert scales.std() == pytest.approx(0.02, rel=0.25)
  for i in range(3):
    np.testing.assert_array_equal(params[f"bn{i}"]["bias"], 0.0)


@pytest.mark.parametrize("mutable", [(), ("batch_stats",)])  # BatchStatsNorm's two code paths
def test_batchnorm_normalises_with_batch_statistics(mutable):
  gen = CmiGenerator(nz=16, ngf=8, img_size=8)
  z = _z(gen, batch=4)
  variables = _variables(gen, z)
  # make every BN's affine part the identity, so its output is the normalised input
  params = dict(variables["params"])
  for i in range(3):
    params[f"bn{i}"] = {"scale": jnp.ones_like(params[f"bn{i}"]["scale"]),
                        "bias": jnp.zeros_like(params[f"bn{i}"]["bias"])}
  variables = {"params": params, "batch_stats": variables["batch_stats"]}
  _, state = jax.jit(lambda v, z: gen.apply(
      v, z, mutable=[*mutable, "intermediates"],
      capture_intermediates=lambda mdl, _: (mdl.name or "").startswith("bn")))(
          variables, 3.0 * z + 1.0)
  for i in range(3):
    out = np.asarray(state["intermediates"][f"bn{i}"]["__call__"][0])
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.var(axis=(0, 1, 2)), 1.0, rtol=1e-2)  # var / (var + eps)
