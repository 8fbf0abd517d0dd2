"""Tests for rfd_jax.models.resnet: shapes, parameter counts, init quirks, stage split, masking."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rfd_jax.models import resnet

TASK_SIZES = (2, 3, 5)


def _init(model, size=32):
  return model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)


def _count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def _expected_backbone_params():
  """Counted from the architecture of spec §2.1: convs (no bias) + BN (γ, β)."""
  conv = lambda cin, cout: 9 * cin * cout
  block = lambda cin, cout: conv(cin, cout) + conv(cout, cout) + 2 * 2 * cout
  total = conv(3, 16) + 2 * 16                                   # stem
  total += 5 * block(16, 16)                                     # stage1
  total += block(16, 32) + 4 * block(32, 32)                     # stage2
  total += block(32, 64) + 3 * block(64, 64)                     # stage3
  total += block(64, 64)                                         # stage4
  return total


@pytest.mark.parametrize("head, head_params", [
    ("rfd", len(TASK_SIZES) * 64 * 64 + 64 * sum(TASK_SIZES)),
    ("linear", 64 * sum(TASK_SIZES))])
def test_parameter_counts(head, head_params):
  params = _init(resnet.CifarResNet(task_sizes=TASK_SIZES, head=head))["params"]
  assert _count({k: v for k, v in params.items() if k != "head"}) == _expected_backbone_params()
  assert _count(params["head"]) == head_params
  assert _expected_backbone_params() == 463_504  # the 15-block ResNet-32 of cl_lite


@pytest.mark.parametrize("size", [32, 16])
def test_output_and_feature_shapes(size):
  model = resnet.CifarResNet(task_sizes=TASK_SIZES)
  variables = _init(model, size)
  x = jax.random.normal(jax.random.key(1), (4, size, size, 3))
  (logits, feats), _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  chex.assert_shape(logits, (4, 10))
  chex.assert_type(logits, jnp.float32)
  chex.assert_shape([feats["stem"], feats["stage1"], feats["stage2"], feats["stage3"],
                     feats["stage4"], feats["pooled"]],
                    [(4, size, size, 16), (4, size, size, 16), (4, size // 2, size // 2, 32),
                     (4, size // 4, size // 4, 64), (4, size // 4, size // 4, 64), (4, 64)])
  np.testing.assert_allclose(feats["pooled"], feats["stage4"].mean(axis=(1, 2)), rtol=1e-5)


def test_stage1_then_from_stage1_equals_full_forward():
  model = resnet.CifarResNet(task_sizes=TASK_SIZES)
  variables = _init(model)
  # perturb so that the residual branches are active (bn_b starts at γ = 0)
  variables = jax.tree.map(lambda v: v + 0.05, variables)
  x = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
  logits, feats = model.apply(variables, x, train=False)
  f1 = model.apply(variables, x, train=False, method=model.stage1)
  logits2, feats2 = model.apply(variables, f1, train=False, method=model.from_stage1)
  np.testing.assert_allclose(f1, feats["stage1"], atol=1e-6)
  np.testing.assert_allclose(logits2, logits, atol=1e-5)
  np.testing.assert_allclose(feats2["pooled"], feats["pooled"], atol=1e-6)


def test_init_quirks():
  params = _init(resnet.CifarResNet(task_sizes=TASK_SIZES))["params"]
  for stage in ("stage1", "stage2", "stage3", "stage4"):
    for block in params[stage].values():
      np.testing.assert_array_equal(block["bn_b"]["scale"], 0.0)  # zero_residual
      np.testing.assert_array_equal(block["bn_a"]["scale"], 1.0)
  kernel = np.asarray(params["stage3"]["block1"]["conv_a"]["kernel"])  # fan_out = 9 * 64
  assert kernel.std() == pytest.approx(np.sqrt(2.0 / (9 * 64)), rel=0.03)
  assert np.abs(kernel).max() > 2.5 * np.sqrt(2.0 / (9 * 64))  # normal, not truncated at 2σ
  hidden = np.asarray(params["head"]["task0_hidden"]["kernel"])
  assert np.abs(hidden).max() <= 1 / 8 and np.abs(hidden).max() > 0.9 / 8  # U(±1/√64)


def test_zero_residual_makes_blocks_identity_and_stride_shortcut_pads_zeros():
  model = resnet.CifarResNet(task_sizes=TASK_SIZES)
  variables = _init(model)
  x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
  _, feats = model.apply(variables, x, train=False)
  # with γ = 0 in every block's last BN each block returns its shortcut
  np.testing.assert_allclose(feats["stage1"], feats["stem"], atol=1e-6)
  expected = np.asarray(feats["stage1"])[:, ::2, ::2, :]
  np.testing.assert_allclose(feats["stage2"][..., :16], expected, atol=1e-6)
  np.testing.assert_array_equal(feats["stage2"][..., 16:], 0.0)


def test_mask_unseen_blocks_probability_and_gradient():
  logits = jnp.array([[1.0, 2.0, 3.0, 4.0]])
  masked = resnet.mask_unseen(logits, jnp.int32(2))
  np.testing.assert_array_equal(masked[0, :2], [1.0, 2.0])
  probs = jax.nn.softmax(masked)
  np.testing.assert_array_equal(probs[0, 2:], 0.0)
  grad = jax.grad(lambda z: jax.nn.log_softmax(resnet.mask_unseen(z, 2))[0, 0])(logits)
  np.testing.assert_array_equal(grad[0, 2:], 0.0)
  # num_seen is data: the same jitted function serves every task
  f = jax.jit(resnet.mask_unseen)
  assert f(logits, 3)[0, 2] == 3.0 and f(logits, 1)[0, 1] == resnet.MASKED_LOGIT
  assert f._cache_size() == 1


def test_bfloat16_activations_keep_params_statistics_and_logits_float32():
  """config.dtype=bfloat16: activations in bf16; params, BN statistics, logits, grads in f32."""
  config = type("ModelConfig", (), {"name": "resnet32", "head": "rfd"})
  model = resnet.build_model(config, TASK_SIZES, dtype="bfloat16")
  assert model.dtype == jnp.bfloat16
  model = model.clone(stage_blocks=(1, 1, 1, 1))  # every layer kind, quick to compile
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))

  # random float32 variables of the right shapes: compiling flax's initialisers takes ~10 s on CPU
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: rng.uniform(0.5, 1.0, s.shape).astype(s.dtype), shapes)
  assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}

  @jax.jit  # one compile for everything
  def run(x):
    def loss_fn(params):
      (logits, features), new_vars = model.apply(
          {"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
          mutable=["batch_stats"])
      return jnp.mean(logits ** 2), (logits, features, new_vars)
    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    (logits_f32, _), _ = model.clone(dtype=jnp.float32).apply(variables, x, train=True,
                                                              mutable=["batch_stats"])
    return aux, grads, logits_f32

  (logits, features, new_vars), grads, logits_f32 = run(x)
  assert {leaf.dtype for leaf in jax.tree.leaves((new_vars, grads))} == {
      jnp.dtype(jnp.float32)}
  assert logits.dtype == jnp.float32 and features["pooled"].dtype == jnp.float32
  assert all(features[k].dtype == jnp.bfloat16 for k in ("stem", "stage1", "stage4"))
  # the same parameters in float32 give the same logits up to bf16 precision
  assert float(jnp.max(jnp.abs(logits_f32))) > 0.1
  np.testing.assert_allclose(logits, logits_f32, rtol=0.1, atol=0.05)


def test_eval_pass_over_concatenated_batches_equals_separate_passes():
  """distill_train_step runs the teacher once (eval mode) over real ∪ synthetic and splits the
  logits and the stage-1 map: the same as two separate passes (BN uses running statistics)."""
  model = resnet.CifarResNet(task_sizes=TASK_SIZES, stage_blocks=(1, 1, 1, 1))
  real, syn = jax.random.normal(jax.random.key(1), (2, 2, 8, 8, 3))
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), real)
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: rng.uniform(0.5, 1.0, s.shape).astype(s.dtype), shapes)

  @jax.jit
  def run(real, syn):
    joint = model.apply(variables, jnp.concatenate([real, syn]), train=False)
    return joint, model.apply(variables, real, train=False), model.apply(variables, syn, train=False)

  (logits, feats), (logits_r, feats_r), (logits_s, feats_s) = run(real, syn)
  np.testing.assert_allclose(logits, jnp.concatenate([logits_r, logits_s]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(feats["stage1"][:2], feats_r["stage1"], rtol=1e-5, atol=1e-5)
