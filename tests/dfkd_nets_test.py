"""Tests for rfd_jax.models.dfkd_nets: parameter counts, feature shapes, pre-activation stage3, sown
BN input statistics, train / eval modes and the name registry."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from rfd_jax.models import dfkd_nets


def _abstract_init(model, size=16):
  """Shapes and dtypes of the variables, nothing computed."""
  return jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))


def _variables(model, size=8, seed=0):
  """Variables like a fresh init's (fan-out normal kernels, γ = 1, β = 0, running (0, 1)), drawn with
  numpy: compiling the random init of a deep net costs far more than running it at 8 px."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name == "kernel":
      fan = np.prod(shape[:-2]) * shape[-1] if len(shape) == 4 else shape[0]
      return jnp.asarray(rng.normal(0.0, np.sqrt(2.0 / fan), shape), jnp.float32)
    return jnp.ones(shape) if name in ("scale", "var") else jnp.zeros(shape)

  return jax.tree_util.tree_map_with_path(fill, _abstract_init(model, size))


def _apply(model, variables, x, *, train=False, **kwargs):
  return jax.jit(lambda v, x: model.apply(v, x, train=train, **kwargs))(variables, x)


def _images(batch, seed=1):
  # numpy, not jax.random: eager jax.random compiles its kernels, seconds on a loaded CPU
  return np.random.default_rng(seed).normal(size=(batch, 8, 8, 3)).astype(np.float32)


def _count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


# Hand formulas of the architectures: conv k·k·cin·cout (no bias), BN 2·C, Linear (F + 1)·K.
conv = lambda k, cin, cout: k * k * cin * cout
bn = lambda c: 2 * c
linear = lambda f, k: (f + 1) * k


def _wrn_params(depth, widen, num_classes):
  n = (depth - 4) // 6
  total = conv(3, 3, 16)                                              # stem
  cin = 16
  for width in (16 * widen, 32 * widen, 64 * widen):
    for _ in range(n):
      total += bn(cin) + conv(3, cin, width) + bn(width) + conv(3, width, width)
      if cin != width:
        total += conv(1, cin, width)                                  # 1×1 shortcut
      cin = width
  return total + bn(cin) + linear(cin, num_classes)                   # final BN, classifier


def _resnet_params(stage_blocks, num_classes):
  total = conv(3, 3, 64) + bn(64)                                     # stem
  cin = 64
  for width, blocks in zip((64, 128, 256, 512), stage_blocks):
    for _ in range(blocks):
      total += conv(3, cin, width) + bn(width) + conv(3, width, width) + bn(width)
      if cin != width:
        total += conv(1, cin, width) + bn(width)                      # 1×1 shortcut + BN
      cin = width
  return total + linear(512, num_classes)


@pytest.mark.parametrize("name, num_classes, expected, published", [
    ("wrn16_1", 10, _wrn_params(16, 1, 10), 175_066),
    ("wrn16_2", 10, _wrn_params(16, 2, 10), None),
    ("wrn40_1", 10, _wrn_params(40, 1, 10), None),
    ("wrn40_2", 10, _wrn_params(40, 2, 10), 2_243_546),
    ("wrn40_2", 100, _wrn_params(40, 2, 100), None),
    ("resnet18_cifar", 10, _resnet_params((2, 2, 2, 2), 10), 11_173_962),
    ("resnet34_cifar", 10, _resnet_params((3, 4, 6, 3), 10), 21_282_122),
])
def test_parameter_counts(name, num_classes, expected, published):
  variables = _abstract_init(dfkd_nets.build_classifier(name, num_classes))
  assert _count(variables["params"]) == expected
  if published is not None:
    assert expected == published  # the formula itself matches the published CIFAR-10 count


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name, widths", [("wrn16_2", (32, 64, 128)),
                                          ("resnet18_cifar", (64, 128, 256, 512))])
def test_feature_shapes_and_dtypes(name, widths, dtype):
  model = dfkd_nets.build_classifier(name, 7, dtype=dtype)
  assert model.stage_names == tuple(f"stage{i + 1}" for i in range(len(widths)))
  assert model.num_features == widths[-1]
  variables = _abstract_init(model)
  x = jax.ShapeDtypeStruct((3, 16, 16, 3), jnp.float32)
  logits, feats = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert set(feats) == {*model.stage_names, "pooled"}
  sides = (16, 8, 4, 2)
  chex.assert_shape([feats[k] for k in model.stage_names],
                    [(3, s, s, w) for s, w in zip(sides, widths)])
  # config.dtype=bfloat16 runs only the convolutions in bf16 (tests/conv_dtype_test.py)
  chex.assert_type([feats[k] for k in model.stage_names], jnp.float32)
  chex.assert_shape([logits, feats["pooled"]], [(3, 7), (3, widths[-1])])
  chex.assert_type([logits, feats["pooled"]], jnp.float32)
  chex.assert_type(jax.tree.leaves(variables), jnp.float32)  # params and BN statistics


@pytest.fixture(scope="module")
def wrn10():
  """WRN-10-1 (one block per group: an identity and two 1×1 shortcuts), its initial variables and
  its jitted eval-mode forward, shared: each compile costs seconds on a loaded CPU."""
  model = dfkd_nets.WideResNet(10, 1, 10)
  # rbg keys: the same initializers, less to compile than threefry's
  variables = jax.jit(lambda key: model.init(key, jnp.zeros((1, 8, 8, 3)), train=False))(
      jax.random.key(0, impl="rbg"))
  return model, variables, jax.jit(lambda v, x: model.apply(v, x, train=False))


def test_wrn_init(wrn10):
  _, variables, _ = wrn10
  params = variables["params"]
  kernel = np.asarray(params["stage3_block0"]["conv2"]["kernel"])  # fan_out = 9 * 64
  assert kernel.std() == pytest.approx(np.sqrt(2.0 / (9 * 64)), rel=0.03)
  assert np.abs(kernel).max() > 2.5 * np.sqrt(2.0 / (9 * 64))  # normal, not truncated at 2σ
  shortcut = np.asarray(params["stage3_block0"]["shortcut_conv"]["kernel"])  # fan_out = 64
  assert shortcut.std() == pytest.approx(np.sqrt(2.0 / 64), rel=0.08)
  assert "shortcut_conv" not in params["stage1_block0"]  # 16 → 16, stride 1: identity
  for key, value in traverse_util.flatten_dict(params).items():
    if key[-1] == "scale":
      np.testing.assert_array_equal(value, 1.0)
    elif key[-1] == "bias":
      np.testing.assert_array_equal(value, 0.0)  # the BN βs and the classifier bias
  dense = np.abs(np.asarray(params["classifier"]["kernel"]))
  assert 0.9 / np.sqrt(64) < dense.max() <= 1 / np.sqrt(64)  # U(±1/√fan_in)


def test_wrn_stage3_is_before_the_final_bn_relu(wrn10):
  _, variables, forward = wrn10
  x = _images(2)
  logits, feats = forward(variables, x)
  stage3 = np.asarray(feats["stage3"])
  assert stage3.min() < 0
  assert np.asarray(feats["pooled"]).min() >= 0
  # fresh running statistics (0, 1) and γ = 1, β = 0: bn_final is x / √(1 + eps)
  expected = np.maximum(stage3 / np.sqrt(1 + 1e-5), 0).mean(axis=(1, 2))
  np.testing.assert_allclose(feats["pooled"], expected, rtol=1e-5, atol=1e-6)
  params = variables["params"]["classifier"]
  np.testing.assert_allclose(logits, expected @ params["kernel"] + params["bias"], atol=1e-5)


# One block per layer has every BN kind of ResNet-18 (stem, block, shortcut) and compiles faster.
@pytest.mark.parametrize("model, first_bn", [
    (dfkd_nets.build_classifier("wrn16_1", 10), ("stage1_block0", "bn1")),
    (dfkd_nets.CifarResNetV1((1, 1, 1, 1), 10), ("stem_bn",))])
def test_bn_stats_are_sown_for_every_batchnorm(model, first_bn):
  variables = _variables(model)
  x = _images(2)
  _, state = _apply(model, variables, x, mutable=["bn_stats", "intermediates"],
                    capture_intermediates=lambda mdl, _: mdl.name == "stem_conv")
  bn_layers = {k[:-1] for k in traverse_util.flatten_dict(variables["batch_stats"])}
  sown = traverse_util.flatten_dict(state["bn_stats"])
  assert {k[:-1] for k in sown} == bn_layers
  assert len(sown) == 2 * len(bn_layers)  # input_mean and input_var
  # the first BN normalises the stem conv's output
  stem = np.asarray(state["intermediates"]["stem_conv"]["__call__"][0])
  np.testing.assert_allclose(sown[(*first_bn, "input_mean")], stem.mean(axis=(0, 1, 2)),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sown[(*first_bn, "input_var")], stem.var(axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-6)


def test_eval_is_deterministic_and_per_example_train_updates_batch_stats(wrn10):
  model, variables, forward = wrn10
  x = _images(4) + 0.5
  logits, _ = forward(variables, x)
  np.testing.assert_array_equal(forward(variables, x)[0], logits)
  # running statistics: an example's logits do not depend on the rest of the batch
  other = np.concatenate([x[:1], _images(3, seed=2)])
  np.testing.assert_allclose(forward(variables, other)[0][0], logits[0], atol=1e-5)

  (train_logits, _), state = jax.jit(lambda v, x: model.apply(
      v, x, train=True, mutable=["batch_stats", "bn_stats"]))(variables, x)
  assert not np.allclose(train_logits, logits, atol=1e-3)  # batch statistics normalise
  old = traverse_util.flatten_dict(variables["batch_stats"])
  new = traverse_util.flatten_dict(state["batch_stats"])
  assert new.keys() == old.keys()
  for key in new:
    assert not np.allclose(new[key], old[key]), key
  # momentum 0.9 (PyTorch 0.1): a running mean moves 10% of the way from 0 to the batch mean
  np.testing.assert_allclose(new[("stage1_block0", "bn1", "mean")],
                             0.1 * state["bn_stats"]["stage1_block0"]["bn1"]["input_mean"],
                             rtol=1e-5, atol=1e-7)


def test_unknown_name_and_bad_depth():
  with pytest.raises(ValueError, match="expected one of.*wrn40_2.*resnet34_cifar"):
    dfkd_nets.build_classifier("foo", 10)
  assert dfkd_nets.CLASSIFIER_NAMES == ("wrn16_1", "wrn16_2", "wrn40_1", "wrn40_2",
                                        "resnet18_cifar", "resnet34_cifar")
  for depth in (18, 4):
    with pytest.raises(ValueError, match=f"depth={depth}"):
      dfkd_nets.WideResNet(depth, 1, 10)
  with pytest.raises(ValueError, match="stage_blocks"):
    dfkd_nets.CifarResNetV1((2, 2, 2), 10)
