"""Tests for the PODNet ResNet-18 (rfd_jax.models.resnet.ResNet18): shapes, parameter count, init,
ReLU placement and the stage-1 split."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rfd_jax.models import resnet

TASK_SIZES = (4, 6)
STAGES = ("stage1", "stage2", "stage3", "stage4")


def _count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def _perturbed(variables, scale):
  """Parameters plus N(0, scale²) noise (so γ_b != 0 turns the residual branches on); BN
  statistics unchanged."""
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda v: v + scale * rng.standard_normal(v.shape, np.float32),
                        variables["params"])
  return {**variables, "params": params}


def _expected_backbone_params():
  """Counted from spec §2.1: convs (no bias) + BN (γ, β); downsample = conv1×1 + BN."""
  conv = lambda k, cin, cout: k * k * cin * cout
  bn = lambda c: 2 * c
  block = lambda cin, cout: (conv(3, cin, cout) + bn(cout) + conv(3, cout, cout) + bn(cout)
                             + (conv(1, cin, cout) + bn(cout) if cin != cout else 0))
  total = conv(3, 3, 64) + bn(64)
  for cin, cout in ((64, 64), (64, 128), (128, 256), (256, 512)):
    total += block(cin, cout) + block(cout, cout)
  return total


@pytest.fixture(scope="module", name="initialised")
def _initialised():
  """(model, variables, x, features of x at init)."""
  model = resnet.ResNet18(task_sizes=TASK_SIZES)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  # jit + the unsafe_rbg PRNG: eager init with threefry compiles one sampler per kernel shape
  # (~20 s on 2 CPU cores); the init functions, not the key's bits, are what these tests check.
  (_, feats), variables = jax.jit(lambda key, x: model.init_with_output(key, x, train=False))(
      jax.random.key(0, impl="unsafe_rbg"), x)
  return model, variables, x, feats


def test_parameter_count():
  model = resnet.ResNet18(task_sizes=TASK_SIZES)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                             train=False))["params"]
  assert _count({k: v for k, v in params.items() if k != "head"}) == _expected_backbone_params()
  # torchvision's resnet18 has 11,689,512 parameters; minus fc (513,000) and with a 3×3 instead
  # of a 7×7 stem conv (1,728 instead of 9,408 weights): 11,168,832.
  assert _expected_backbone_params() == 11_689_512 - 513_000 - 9_408 + 1_728 == 11_168_832
  assert _count(params["head"]) == len(TASK_SIZES) * 512 * 512 + 512 * sum(TASK_SIZES)


@pytest.mark.parametrize("size, spatial", [(224, (112, 112, 56, 28, 14)), (32, (16, 16, 8, 4, 2))])
def test_output_and_feature_shapes(size, spatial):
  model = resnet.ResNet18(task_sizes=TASK_SIZES)
  (logits, feats), _ = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.key(0), x, train=False),
      jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))
  chex.assert_shape(logits, (2, 10))
  names = ("stem",) + STAGES
  chex.assert_shape([feats[k] for k in names],
                    [(2, s, s, c) for s, c in zip(spatial, (64, 64, 128, 256, 512))])
  chex.assert_shape(feats["pooled"], (2, 512))


def test_init_quirks_and_zero_residual(initialised):
  _, variables, _, feats = initialised
  params = variables["params"]
  for stage in STAGES:
    for name, block in params[stage].items():
      np.testing.assert_array_equal(block["bn_b"]["scale"], 0.0)  # zero-init bn2 γ
      np.testing.assert_array_equal(block["bn_a"]["scale"], 1.0)
      assert ("shortcut_conv" in block) == (stage != "stage1" and name == "block0")
  np.testing.assert_array_equal(params["stage2"]["block0"]["shortcut_bn"]["scale"], 1.0)
  chex.assert_shape(params["stage2"]["block0"]["shortcut_conv"]["kernel"], (1, 1, 64, 128))
  chex.assert_shape(params["stem_conv"]["kernel"], (3, 3, 3, 64))
  kernel = np.asarray(params["stage4"]["block1"]["conv_a"]["kernel"])  # fan_out = 9 * 512
  assert kernel.std() == pytest.approx(np.sqrt(2.0 / (9 * 512)), rel=0.01)
  assert np.abs(kernel).max() > 3 * np.sqrt(2.0 / (9 * 512))  # normal, not truncated
  # with γ = 0 the residual branches are off: layer1 = ReLU(stem) = stem (stem is >= 0)
  np.testing.assert_allclose(feats["stage1"], feats["stem"], atol=1e-6)


def test_stem_is_relu_then_maxpool_3x3_stride2_pad1(initialised):
  model, variables, x, feats = initialised
  pre = model.apply(variables, x, method=lambda m, x: nn.relu(
      m.stem_bn(m.stem_conv(x), use_running_average=True)))
  padded = np.pad(np.asarray(pre), ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  expected = np.max([padded[:, i:i + 32:2, j:j + 32:2] for i in range(3) for j in range(3)],
                    axis=0)
  np.testing.assert_allclose(feats["stem"], expected, atol=1e-6)


def test_stage1_then_from_stage1_equals_full_forward(initialised):
  model, variables, x, _ = initialised
  variables = _perturbed(variables, 0.05)
  (logits, feats), state = model.apply(variables, x, train=False, capture_intermediates=True,
                                       mutable=["intermediates"])
  f1 = model.apply(variables, x, train=False, method=model.stage1)
  logits2, feats2 = model.apply(variables, f1, train=False, method=model.from_stage1)
  np.testing.assert_allclose(f1, feats["stage1"], atol=1e-6)
  np.testing.assert_allclose(logits2, logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(feats2["pooled"], feats["pooled"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(feats["pooled"], feats["stage4"].mean(axis=(1, 2)), rtol=1e-5)
  for stage in STAGES:  # the first block of a layer ends with ReLU, the last one does not
    first = state["intermediates"][stage]["block0"]["__call__"][0]
    assert float(first.min()) == 0.0 and float(feats[stage].min()) < 0.0
    np.testing.assert_array_equal(feats[stage],
                                  state["intermediates"][stage]["block1"]["__call__"][0])


def test_build_model_names_resnet18():
  cfg = ml_collections.ConfigDict({"name": "resnet18", "head": "linear"})
  model = resnet.build_model(cfg, TASK_SIZES)
  assert isinstance(model, resnet.ResNet18) and model.head == "linear"
  assert model.num_features == 512
