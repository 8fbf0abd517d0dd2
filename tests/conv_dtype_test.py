"""config.dtype: bf16 convolutions inside float32 networks (rfd_jax.models.layers.Conv).

bfloat16 must reach every network a config builds: ResNet-32 and ResNet-18 (`build_model`), the
DFCIL generator (`generator_for`), the dfkd classifiers (`build_classifier`) and the CMI generator;
the jaxpr of each is read for its convolutions' dtypes, so an ignored knob fails. Tiny models (one
block per stage, 8 px, batch 2) with random float32 variables from eval_shape, so nothing compiles
flax's initialisers.
"""

import functools
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import cifar100, dfkd_digits, imagenet100
from rfd_jax.cli import config_validation
from rfd_jax.models import dfkd_nets, resnet
from rfd_jax.models.cmi_generator import CmiGenerator
from rfd_jax.models.generator import generator_for
from rfd_jax.models.layers import conv_compute_dtype
from rfd_jax.engine import errors

TASK_SIZES = (2, 3)
SMALL = {"resnet32": dict(stage_blocks=(1, 1, 1, 1)),
         "resnet18": dict(stage_blocks=(1, 1, 1, 1), widths=(8, 8, 16, 16))}


def _model(name, dtype):
  config = ml_collections.ConfigDict({"name": name, "head": "rfd"})
  return resnet.build_model(config, TASK_SIZES, dtype=dtype).clone(**SMALL[name])


def _variables(model, x):
  """Random float32 variables of `model`'s shapes; γ, running var in [0.5, 1) keep branches on."""
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: rng.uniform(0.5, 1.0, s.shape).astype(s.dtype) * 0.5, shapes)


def _conv_dtypes(fn, *args) -> list[str]:
  """The result dtype of every convolution in fn's jaxpr (nested jaxprs included): "bf16" when
  the conv's inputs are bf16."""
  text = str(jax.make_jaxpr(fn)(*args))
  return re.findall(r"\w+:(\w+)\[[^\]]*\] = conv_general_dilated", text)


def _train_apply(model, variables, x, **kwargs):
  return model.apply(variables, x, mutable=["batch_stats"], **kwargs)


@pytest.mark.parametrize("name", ["resnet32", "resnet18"])
def test_bf16_convs_keep_float32_params_and_match_float32(name):
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  bf16, f32 = _model(name, "bfloat16"), _model(name, "float32")
  assert bf16.conv_dtype == jnp.bfloat16 and f32.conv_dtype is None  # float32: default unchanged
  variables = _variables(f32, x)
  shapes = jax.eval_shape(functools.partial(bf16.init, train=False), jax.random.key(0), x)
  assert jax.tree.structure(shapes) == jax.tree.structure(variables)  # same parameters
  assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
  f32_explicit = f32.clone(conv_dtype=jnp.float32)  # the cast-through path with f32 in and out

  with_grads = name == "resnet32"  # ResNet-18: forward only, to keep the compile short

  @jax.jit  # one compile for everything
  def run(x):
    def loss_fn(params, model):
      (logits, features), new_vars = model.apply(
          {"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
          mutable=["batch_stats"])
      return jnp.mean(logits ** 2), (logits, features["stage1"], new_vars)
    outs = [loss_fn(variables["params"], m)[1] for m in (f32, f32_explicit, bf16)]
    grad = lambda m: jax.grad(lambda p: loss_fn(p, m)[0])(variables["params"])
    return outs, ([grad(f32), grad(bf16)] if with_grads else None)

  ((logits, stage1, stats), (logits_e, stage1_e, stats_e), (logits_b, stage1_b, stats_b)), grads = (
      run(x))
  # dtype float32 == the plain model, exactly
  for a, b in ((logits, logits_e), (stage1, stage1_e), (stats, stats_e)):
    jax.tree.map(np.testing.assert_array_equal, a, b)
  # bf16 convs: float32 activations, statistics and gradients, close to float32 within bf16
  assert {leaf.dtype for leaf in jax.tree.leaves((logits_b, stage1_b, stats_b, grads))} == {
      jnp.dtype(jnp.float32)}
  scale = float(jnp.max(jnp.abs(logits)))
  assert scale > 0.1
  np.testing.assert_allclose(logits_b, logits, rtol=0.05, atol=0.05 * scale)
  np.testing.assert_allclose(stage1_b, stage1, rtol=0.05, atol=0.05)
  if with_grads:  # all gradients as one vector: within a few % (bf16 has 8 mantissa bits)
    flat = lambda g: np.concatenate([np.ravel(v) for v in jax.tree.leaves(g)])
    g, g_b = flat(grads[0]), flat(grads[1])
    assert np.linalg.norm(g_b - g) < 0.05 * np.linalg.norm(g)


def _networks(dtype: str):
  """(name, model, apply-fn arguments) of every network kind a config builds, for `dtype`."""
  x = jnp.zeros((2, 16, 16, 3))
  conv_dtype = conv_compute_dtype(dtype)
  nets = [(name, _model(name, dtype), x, {"train": True}) for name in SMALL]
  nets.append(("generator", generator_for(16, dtype), jnp.zeros((2, 1000)), {"train": True}))
  nets += [(name, dfkd_nets.build_classifier(name, 5, dtype=dtype), x, {"train": True})
           for name in ("wrn16_1", "resnet18_cifar")]
  nets.append(("cmi_generator", CmiGenerator(nz=8, ngf=4, img_size=16, conv_dtype=conv_dtype),
               jnp.zeros((2, 8)), {}))
  return nets


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_config_dtype_reaches_every_networks_convolutions(dtype):
  """Every convolution of every network runs in config.dtype; its output and every parameter
  stay float32."""
  expected = {"float32": "f32", "bfloat16": "bf16"}[dtype]
  for name, model, x, kwargs in _networks(dtype):
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, **kwargs), x)
    assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}, name
    variables = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), shapes)
    convs = _conv_dtypes(functools.partial(_train_apply, model, **kwargs), variables, x)
    assert len(convs) >= 3 and set(convs) == {expected}, (name, convs)
    out, _ = jax.eval_shape(functools.partial(_train_apply, model, **kwargs), variables, x)
    assert {leaf.dtype for leaf in jax.tree.leaves(out)} == {jnp.dtype(jnp.float32)}, name


def test_configs_default_to_float32_and_validation_names_dtype():
  for config in (cifar100.get_config(), imagenet100.get_config(), dfkd_digits.get_config()):
    assert config.dtype == "float32"
    assert "conv_dtype" not in config.model
  config = cifar100.get_config()
  config.dtype = "float16"
  with pytest.raises(errors.ConfigError, match="config.dtype='float16'"):
    config_validation.validate(config)
  with pytest.raises(ValueError, match="config.dtype='float16'"):
    conv_compute_dtype("float16")
