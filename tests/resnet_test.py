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
  """CifarResNet(dtype=bfloat16): activations in bf16; params, BN statistics, logits, grads in
  f32. (No config reaches it: config.dtype sets `conv_dtype`, tests/conv_dtype_test.py.)"""
  model = resnet.CifarResNet(task_sizes=TASK_SIZES, dtype=jnp.bfloat16,
                             stage_blocks=(1, 1, 1, 1))  # every layer kind, quick to compile
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


# ---- He et al.'s ResNet-32 (ABD's backbone, config.model.name = "resnet32_he") ----------------


def _he_model(task_sizes=TASK_SIZES, head="abd"):
  config = type("ModelConfig", (), {"name": "resnet32_he", "head": head})
  return resnet.build_model(config, task_sizes)


def _abd_parameter_count(out_dim):
  """numel summed over the parameters ABD's models/resnet.py creates for `resnet32(out_dim)`,
  following its constructor: conv1 (16, 3, 3, 3) + bn1; `_make_layer` over planes 16/32/64 with
  5 blocks each (in_planes tracked), each block conv1 (planes, in, 3, 3), bn1, conv2 (planes,
  planes, 3, 3), bn2 (option-A shortcut: no parameters); `last` = Linear(64, out_dim), bias."""
  shapes = [(16, 3, 3, 3), (16,), (16,)]
  in_planes = 16
  for planes in (16, 32, 64):
    for _ in range(5):
      shapes += [(planes, in_planes, 3, 3), (planes,), (planes,), (planes, planes, 3, 3),
                 (planes,), (planes,)]
      in_planes = planes
  shapes += [(out_dim, 64), (out_dim,)]
  return sum(int(np.prod(s)) for s in shapes)


def test_he_resnet32_parameter_count_is_abds():
  model = _he_model((10,) * 10)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jnp.zeros((1, 32, 32, 3)))
  assert _count(shapes["params"]) == _abd_parameter_count(100) == 463_504 + 64 * 100 + 100
  assert _abd_parameter_count(10) == 464_154  # He et al.'s "ResNet32 | 0.46M" on CIFAR-10
  assert set(shapes["params"]) == {"stem_conv", "stem_bn", "stage1", "stage2", "stage3", "head"}
  assert all(len(shapes["params"][f"stage{i}"]) == 5 for i in (1, 2, 3))
  num_bn = 1 + 3 * 5 * 2
  assert len(jax.tree.leaves(shapes["batch_stats"])) == 2 * num_bn  # ABD's 31 inversion hooks


def test_he_resnet32_shapes_and_post_relu_features():
  model = _he_model().clone(stage_blocks=(2, 2, 2))  # every layer kind; eager ops are slow on CPU
  variables = _init(model, 16)
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  (logits, feats), _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  chex.assert_shape(logits, (4, 10))
  chex.assert_type([logits, feats["pooled"]], jnp.float32)
  assert set(feats) == {"stem", "stage1", "stage2", "stage3", "pooled"}
  chex.assert_shape([feats["stem"], feats["stage1"], feats["stage2"], feats["stage3"],
                     feats["pooled"]],
                    [(4, 16, 16, 16), (4, 16, 16, 16), (4, 8, 8, 32), (4, 4, 4, 64), (4, 64)])
  np.testing.assert_allclose(feats["pooled"], feats["stage3"].mean(axis=(1, 2)), rtol=1e-5)
  # ReLU after every residual add: the stage outputs, hence the pooled feature, are >= 0
  for name in ("stage1", "stage2", "stage3", "pooled"):
    assert float(jnp.min(feats[name])) >= 0.0 and float(jnp.max(feats[name])) > 0.0
  # the interface the learners use: stage-1 split, head alone, BN input statistics
  logits_eval, feats_eval = model.apply(variables, x, train=False)
  f1 = model.apply(variables, x, train=False, method=model.stage1)
  logits2, feats2 = model.apply(variables, f1, train=False, method=model.from_stage1)
  np.testing.assert_allclose(logits2, logits_eval, atol=1e-5)
  assert set(feats2) == {"stage2", "stage3", "pooled"}
  head = model.apply({"params": variables["params"]}, feats_eval["pooled"],
                     method=model.head_logits)
  np.testing.assert_allclose(head, logits_eval, atol=1e-5)
  _, sown = model.apply(variables, x, train=False, mutable=["bn_stats"])
  assert len(jax.tree.leaves(sown["bn_stats"])) == 2 * (1 + 3 * 2 * 2)


def test_he_resnet32_init_is_abds():
  params = _init(_he_model((60, 40)).clone(stage_blocks=(2, 2, 2)), 8)["params"]
  for stage in ("stage1", "stage2", "stage3"):
    for block in params[stage].values():
      np.testing.assert_array_equal(block["bn_b"]["scale"], 1.0)  # no zero-init residual
      np.testing.assert_array_equal(block["bn_b"]["bias"], 0.0)
  # kaiming_normal_ defaults: N(0, 2 / fan_in), fan_in = 9 · C_in (fan_out would be 9 · C_out)
  for kernel, fan_in in ((params["stage3"]["block0"]["conv_a"]["kernel"], 9 * 32),
                         (params["stem_conv"]["kernel"], 9 * 3)):
    assert np.asarray(kernel).std() == pytest.approx(np.sqrt(2.0 / fan_in), rel=0.12)
  head = params["head"]
  assert set(head) == {"task0_out", "task1_out"}
  kernel = np.concatenate([head["task0_out"]["kernel"], head["task1_out"]["kernel"]], axis=1)
  bias = np.concatenate([head["task0_out"]["bias"], head["task1_out"]["bias"]])
  assert kernel.shape == (64, 100) and bias.shape == (100,)
  assert kernel.std() == pytest.approx(np.sqrt(2.0 / 64), rel=0.05)
  assert np.abs(kernel).max() > 2.5 * np.sqrt(2.0 / 64)  # normal, not truncated
  assert np.abs(bias).max() <= 1 / 8 and np.abs(bias).max() > 0.9 / 8  # U(±1/√64)


@pytest.mark.parametrize("style, before", [(resnet.HE_BLOCK, 8), (resnet.CL_LITE_BLOCK, 0)])
def test_stride_shortcut_padding(style, before):
  """With zero convs the block returns [ReLU of] its shortcut: He et al.'s option A pads the
  subsampled input with C/4 zero channels on each side, cl_lite appends them after it."""
  block = resnet.BasicBlock(32, stride=2, style=style)
  x = jax.random.uniform(jax.random.key(3), (2, 8, 8, 16), minval=0.1, maxval=1.0)
  variables = block.init(jax.random.key(0), x, train=False)
  variables = {"params": jax.tree_util.tree_map_with_path(
      lambda path, v: jnp.zeros_like(v) if path[-1].key == "kernel" else v, variables["params"]),
               "batch_stats": variables["batch_stats"]}
  out = np.asarray(block.apply(variables, x, train=False))
  chex.assert_shape(out, (2, 4, 4, 32))
  np.testing.assert_allclose(out[..., before:before + 16], np.asarray(x)[:, ::2, ::2], atol=1e-6)
  np.testing.assert_array_equal(np.delete(out, np.arange(before, before + 16), axis=-1), 0.0)


def test_build_model_names_resnet32_he():
  model = _he_model(head="linear")
  assert isinstance(model, resnet.CifarResNet) and model.style == resnet.HE_BLOCK
  assert tuple(model.stage_blocks) == (5, 5, 5) and tuple(model.widths) == (16, 32, 64)
  assert model.num_features == 64 and model.head == "linear"
  with pytest.raises(ValueError, match="expected one of.*resnet32_he"):
    resnet.build_model(type("ModelConfig", (), {"name": "resnet20", "head": "abd"}), TASK_SIZES)
