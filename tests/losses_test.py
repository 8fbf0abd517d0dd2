"""Each loss against an independent numpy computation (spec §4, §5.2, §6), and its gradient
against finite differences in float64."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rfd_jax.methods import losses
from rfd_jax.models.resnet import mask_unseen

from gradient_checks import FAST_COMPILE, check_gradient

RNG = np.random.default_rng(0)


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_cross_entropy_and_weighted_ce():
  logits = RNG.normal(size=(5, 4))
  labels = np.array([0, 3, 1, 1, 2])
  ce = -_log_softmax(logits)[np.arange(5), labels]
  np.testing.assert_allclose(losses.cross_entropy(logits=jnp.asarray(logits, jnp.float32),
                                                  labels=jnp.asarray(labels)), ce, rtol=1e-5)
  weights = np.array([2.0, 1.0, 0.5, 4.0])
  expected = (weights[labels] * ce).sum() / weights[labels].sum()
  got = losses.weighted_cross_entropy(logits=jnp.asarray(logits, jnp.float32),
                                      labels=jnp.asarray(labels), class_weights=jnp.asarray(weights))
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_class_balance_weights_from_counts():
  counts = np.array([10.0, 40.0, 20.0, 0.0, 7.0])  # class 3 unseen-but-counted-0, class 4 unseen
  got = np.asarray(losses.class_balance_weights(jnp.asarray(counts), 4))
  # seen classes 0..3: w_c = (Σcount / max(count_c, 1)) / min over seen = max_count / max(count_c,1)
  raw = counts.sum() / np.maximum(counts, 1)
  expected = raw[:4] / raw[:4].min()
  np.testing.assert_allclose(got[:4], expected, rtol=1e-6)
  np.testing.assert_allclose(got[:3], 40.0 / counts[:3], rtol=1e-6)
  assert got[4] == 0.0


def test_class_balance_loss_is_one_minus_normalised_entropy():
  logits = RNG.normal(size=(6, 5)).astype(np.float32)
  probs = np.exp(_log_softmax(logits[:, :3]))
  mean = probs.mean(0)
  expected = 1 + (mean * np.log(mean)).sum() / np.log(3)
  got = losses.class_balance_loss(logits=mask_unseen(jnp.asarray(logits), 3), num_classes=3)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # perfectly balanced predictions give 0; gradients stay finite through the masked classes
  balanced = np.log(np.eye(3, 5) + 1e-9).astype(np.float32)
  assert abs(float(losses.class_balance_loss(logits=mask_unseen(jnp.asarray(balanced), 3),
                                             num_classes=3))) < 1e-5
  grad = jax.grad(lambda z: losses.class_balance_loss(logits=mask_unseen(z, 3), num_classes=3))(
      jnp.asarray(logits))
  assert np.all(np.isfinite(grad))
  assert float(losses.class_balance_loss(logits=jnp.asarray(logits), num_classes=1)) == 0.0


def test_gaussian_blur_kernel_values():
  # weights ∝ exp(−((i−2)/(2σ))²), σ = 1: the effective std is √2
  one_d = np.exp(-((np.arange(5) - 2) / 2.0) ** 2)
  expected = np.outer(one_d, one_d) / np.outer(one_d, one_d).sum()
  kernel = np.asarray(losses.gaussian_blur_kernel())
  np.testing.assert_allclose(kernel, expected, rtol=1e-6)
  np.testing.assert_allclose(kernel[2, 2], 1 / (1 + 2 * np.exp(-0.25) + 2 * np.exp(-1)) ** 2,
                             rtol=1e-6)
  marginal = kernel.sum(1)
  variance = (marginal * (np.arange(5) - 2) ** 2).sum()
  assert 1.3 < variance < 2.0  # truncated N(0, 2): about 1.55, far from σ² = 1


def test_smoothness_prior_matches_numpy_convolution():
  images = RNG.normal(size=(2, 7, 6, 3)).astype(np.float32)
  kernel = np.asarray(losses.gaussian_blur_kernel())
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
  blurred = np.zeros_like(images)
  for dy in range(5):
    for dx in range(5):
      blurred += kernel[dy, dx] * padded[:, dy:dy + 7, dx:dx + 6, :]
  expected = ((images - blurred) ** 2).mean()
  np.testing.assert_allclose(losses.smoothness_prior(images=jnp.asarray(images)), expected,
                             rtol=1e-5)


def test_bn_statistics_kl_matches_gaussian_kl():
  stats_in, stats_run, expected = {}, {}, []
  for layer in ("a", "b"):
    x = RNG.normal(1.0, 2.0, size=(16, 4))
    mean, var = x.mean(0), x.var(0)  # biased
    run_mean, run_var = RNG.normal(size=4), RNG.uniform(0.5, 2.0, size=4)
    stats_in[layer] = {"input_mean": jnp.asarray(mean, jnp.float32),
                       "input_var": jnp.asarray(var, jnp.float32)}
    stats_run[layer] = {"mean": jnp.asarray(run_mean, jnp.float32),
                        "var": jnp.asarray(run_var, jnp.float32)}
    # closed-form KL(N(μ_r, σ_r²) ‖ N(μ, σ²))
    kl = np.log(np.sqrt(var) / np.sqrt(run_var)) + (run_var + (run_mean - mean) ** 2) / (2 * var) - 0.5
    expected.append(kl.mean())
  got = losses.bn_statistics_kl(input_stats={"block": stats_in}, running_stats={"block": stats_run})
  np.testing.assert_allclose(got, np.mean(expected), rtol=1e-4)


def test_bn_statistics_kl_is_zero_when_matched():
  stats = {"input_mean": jnp.array([0.5, -1.0]), "input_var": jnp.array([2.0, 0.3])}
  running = {"mean": stats["input_mean"], "var": stats["input_var"]}
  assert abs(float(losses.bn_statistics_kl(input_stats={"l": stats}, running_stats={"l": running}))) < 1e-6


def test_masked_l1_over_old_classes():
  s, t = RNG.normal(size=(4, 6)), RNG.normal(size=(4, 6))
  got = losses.masked_l1(student=jnp.asarray(s), teacher=jnp.asarray(t), num_classes=jnp.int32(3))
  np.testing.assert_allclose(got, np.abs(s[:, :3] - t[:, :3]).mean(), rtol=1e-5)


def _rkd_angles_numpy(e):
  b = len(e)
  out = np.zeros((b, b, b))
  for i in range(b):
    for j in range(b):
      for k in range(b):
        u, v = e[j] - e[i], e[k] - e[i]
        nu, nv = np.linalg.norm(u), np.linalg.norm(v)
        u = u / nu if nu > 1e-12 else u * 0
        v = v / nv if nv > 1e-12 else v * 0
        out[i, j, k] = u @ v
  return out


def test_rkd_angle_matches_triple_loop():
  s, t = RNG.normal(size=(5, 3)), RNG.normal(size=(5, 3))
  expected = np.abs(_rkd_angles_numpy(s) - _rkd_angles_numpy(t)).mean()
  got = losses.rkd_angle(student=jnp.asarray(s, jnp.float32), teacher=jnp.asarray(t, jnp.float32))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # its gradient: test_rkd_angle_float32_gradient_matches_numpy and test_rkd_angle_gradients


def test_soft_cross_entropy_lwf_is_abds_loss_fn_kd():
  """No T² factor; student_classes > num_classes zero-pads the teacher's softmax (ABD's KD on
  synthetic rows)."""
  s, t = RNG.normal(size=(3, 6)), RNG.normal(size=(3, 6))
  temp = 2.0
  q = np.exp(_log_softmax(t[:, :4] / temp))
  expected = (-(q * _log_softmax(s[:, :4] / temp)).sum(1)).mean()
  got = losses.soft_cross_entropy(student=jnp.asarray(s, jnp.float32),
                                  teacher=jnp.asarray(t, jnp.float32), num_classes=4,
                                  temperature=temp)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  padded = np.concatenate([q, np.zeros((3, 1))], axis=1)
  expected_padded = (-(padded * _log_softmax(s[:, :5] / temp)).sum(1)).mean()
  got_padded = losses.soft_cross_entropy(student=jnp.asarray(s, jnp.float32),
                                         teacher=jnp.asarray(t, jnp.float32), num_classes=4,
                                         temperature=temp, student_classes=5)
  np.testing.assert_allclose(got_padded, expected_padded, rtol=1e-5)


def test_masked_squared_error_abd():
  s, t = RNG.normal(size=(4, 6)), RNG.normal(size=(4, 6))
  expected = ((s[:, :2] - t[:, :2]) ** 2).sum(1).mean() / 2
  got = losses.masked_squared_error(student=jnp.asarray(s, jnp.float32),
                                    teacher=jnp.asarray(t, jnp.float32), num_classes=2)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def _softmax_np(z):
  return np.exp(_log_softmax(z))


def _pearson_np(a, b):
  a, b = a - a.mean(), b - b.mean()
  return (a * b).sum() / (np.sqrt((a * a).sum()) * np.sqrt((b * b).sum()) + 1e-8)


def _dist_np(s, t, num_classes, tau):
  p, q = _softmax_np(s[:, :num_classes] / tau), _softmax_np(t[:, :num_classes] / tau)
  inter = 1 - np.mean([_pearson_np(p[i], q[i]) for i in range(len(p))])
  intra = 1 - np.mean([_pearson_np(p[:, c], q[:, c]) for c in range(num_classes)])
  return inter + intra


def test_dist_matches_numpy_over_the_old_classes():
  s, t = RNG.normal(size=(6, 7)) * 3, RNG.normal(size=(6, 7)) * 3
  got = losses.dist_loss(student=jnp.asarray(s, jnp.float32), teacher=jnp.asarray(t, jnp.float32),
                         num_classes=jnp.int32(4), temperature=4.0)
  np.testing.assert_allclose(got, _dist_np(s, t, 4, 4.0), rtol=1e-5)
  same = losses.dist_loss(student=jnp.asarray(t), teacher=jnp.asarray(t), num_classes=4)
  assert abs(float(same)) < 1e-5  # identical predictions: perfect correlation both ways


def _dist_parts_np(s, t, num_classes, tau):
  p, q = _softmax_np(s[:, :num_classes] / tau), _softmax_np(t[:, :num_classes] / tau)
  inter = 1 - np.mean([_pearson_np(p[i], q[i]) for i in range(len(p))])
  intra = 1 - np.mean([_pearson_np(p[:, c], q[:, c]) for c in range(num_classes)])
  return inter, intra


def test_dist_term_weights_match_numpy():
  s, t = RNG.normal(size=(6, 7)) * 3, RNG.normal(size=(6, 7)) * 3
  inter, intra = _dist_parts_np(s, t, 4, 4.0)
  for beta, gamma in ((1.0, 1.0), (0.0, 1.0), (0.5, 2.0), (1.0, 0.0)):
    got = losses.dist_loss(student=jnp.asarray(s, jnp.float32),
                           teacher=jnp.asarray(t, jnp.float32), num_classes=jnp.int32(4),
                           temperature=4.0, inter_weight=jnp.float32(beta),
                           intra_weight=jnp.float32(gamma))
    np.testing.assert_allclose(got, beta * inter + gamma * intra, rtol=1e-5, atol=1e-6)


def test_dist_inter_term_with_two_classes_is_a_step_with_a_spike_at_ties():
  # With 2 classes a centred row is (d, −d): pearson(P_i, Q_i) = ±x/(x + 1e-8), x = 2|d_P||d_Q|.
  # Away from a tie its gradient is ~0; at a tie it is ~|d_Q|/1e-8 (issue #21). Three classes
  # have no such point, and inter_weight = 0 removes it.
  t = jnp.asarray(RNG.normal(size=(8, 2)) * 3, jnp.float32)
  s = RNG.normal(size=(8, 2)).astype(np.float32)
  inter_only = lambda z, n=2, w=1.0: losses.dist_loss(student=z, teacher=t, num_classes=n,
                                                      inter_weight=w, intra_weight=0.0)
  away = jax.grad(inter_only)(jnp.asarray(s))
  value = float(inter_only(jnp.asarray(s)))
  signs = np.sign(s[:, 0] - s[:, 1]) * np.sign(np.asarray(t[:, 0] - t[:, 1]))
  np.testing.assert_allclose(value, 1 - np.mean(signs), atol=1e-5)  # a count of sign agreements
  assert float(jnp.max(jnp.abs(away))) < 1e-4
  tied = s.copy()
  tied[0, 1] = tied[0, 0]
  spike = jax.grad(inter_only)(jnp.asarray(tied))
  assert float(jnp.max(jnp.abs(spike))) > 1e3
  assert float(jnp.max(jnp.abs(jax.grad(lambda z: inter_only(z, w=0.0))(jnp.asarray(tied))))) == 0
  t3 = jnp.asarray(RNG.normal(size=(8, 3)) * 3, jnp.float32)
  tied3 = np.concatenate([tied, RNG.normal(size=(8, 1)).astype(np.float32)], axis=1)
  three = jax.grad(lambda z: losses.dist_loss(student=z, teacher=t3, num_classes=3,
                                              intra_weight=0.0))(jnp.asarray(tied3))
  assert float(jnp.max(jnp.abs(three))) < 1.0


def test_dist_is_shift_and_scale_invariant_per_row():
  t = RNG.normal(size=(5, 4))
  s = 2.0 * t + 1.5  # the softmax at τ changes, but the relation loss stays low
  low = float(losses.dist_loss(student=jnp.asarray(s), teacher=jnp.asarray(t), num_classes=4))
  high = float(losses.dist_loss(student=jnp.asarray(-t), teacher=jnp.asarray(t), num_classes=4))
  assert low < 0.1 < 2.0 < high


def test_dist_constant_class_column_gives_no_nan():
  s, t = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 3))
  s[:, :] = s[0]  # every sample has the same student logits: each class column is constant
  fn = lambda z: losses.dist_loss(student=z, teacher=jnp.asarray(t, jnp.float32), num_classes=3)
  value, grad = jax.value_and_grad(fn)(jnp.asarray(s, jnp.float32))
  np.testing.assert_allclose(value, _dist_np(s, t, 3, 4.0), rtol=1e-5)
  assert np.all(np.isfinite(grad))
  one_class = jax.grad(lambda z: losses.dist_loss(student=z, teacher=z * 2, num_classes=1))(
      jnp.asarray(s, jnp.float32))  # a single old class: every slice is constant
  assert np.all(np.isfinite(one_class))


def test_feature_mse_and_its_gradient_into_both_sides():
  a, b = RNG.normal(size=(3, 5)), RNG.normal(size=(3, 5))
  value, (ga, gb) = jax.value_and_grad(
      lambda x, y: losses.feature_mse(student=x, hybrid=y), argnums=(0, 1))(
          jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
  np.testing.assert_allclose(value, ((a - b) ** 2).mean(), rtol=1e-6)
  np.testing.assert_allclose(ga, 2 * (a - b) / a.size, rtol=1e-5)
  np.testing.assert_allclose(gb, -ga, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Gradients against central finite differences in float64 (gradient_checks.check_gradient), with
# respect to every differentiable input, each required to be clearly nonzero. Inputs are random
# normal draws from fixed seeds, so no abs or hinge sits at its kink. Not checked: accuracy
# (argmax), class_balance_weights (label counts) and gaussian_blur_kernel (a constant): no
# differentiable input. Traced class counts sit below C, so the masks are exercised.


def _normal(seed, *shape, scale=1.0):
  return scale * np.random.default_rng(seed).normal(size=shape)


def test_cross_entropy_gradients():
  labels = jnp.asarray([0, 2, 1, 1, 2])
  check_gradient(lambda z: jnp.mean(losses.cross_entropy(logits=z, labels=labels)),
                 _normal(1, 5, 4))
  # as the fine-tuning phase uses it: over the seen classes (3 of 4), with class weights
  weights = np.random.default_rng(2).uniform(0.5, 2.0, size=4)
  g_logits, g_weights = check_gradient(
      lambda z, w: losses.weighted_cross_entropy(logits=mask_unseen(z, jnp.int32(3)),
                                                 labels=labels, class_weights=w),
      _normal(3, 5, 4), weights, min_norm=0.0)
  assert np.linalg.norm(g_logits[:, :3]) > 1e-2
  np.testing.assert_array_equal(g_logits[:, 3], 0.0)  # the unseen class
  assert np.linalg.norm(g_weights[:3]) > 1e-2  # class 3 never occurs as a label


def test_class_balance_loss_gradient():
  check_gradient(lambda z: losses.class_balance_loss(logits=mask_unseen(z, jnp.int32(3)),
                                                     num_classes=jnp.int32(3)),
                 _normal(4, 6, 5))


def test_smoothness_prior_gradient():
  check_gradient(lambda x: losses.smoothness_prior(images=x), _normal(5, 2, 6, 5, 3))


def test_bn_statistics_kl_gradient_into_both_statistics():
  rng = np.random.default_rng(6)
  stats = lambda mean_key, var_key: {
      layer: {mean_key: rng.normal(size=c), var_key: rng.uniform(0.5, 2.0, size=c)}
      for layer, c in (("a", 3), ("b", 4))}
  inputs, running = stats("input_mean", "input_var"), stats("mean", "var")
  check_gradient(lambda i, r: losses.bn_statistics_kl(input_stats=i, running_stats=r),
                 inputs, running)


def _two_sided(fn, student, teacher, **kwargs):
  """check_gradient of fn(student=, teacher=) with respect to both."""
  return check_gradient(lambda s, t: fn(student=s, teacher=t, **kwargs), student, teacher)


def test_masked_l1_gradient():
  s, t = _normal(7, 4, 6), _normal(8, 4, 6)
  assert np.abs(s - t)[:, :3].min() > 1e-3  # |·| away from its kink
  g_s, g_t = _two_sided(losses.masked_l1, s, t, num_classes=jnp.int32(3))
  np.testing.assert_array_equal(g_s[:, 3:], 0.0)
  np.testing.assert_array_equal(g_t[:, 3:], 0.0)


def test_rkd_angle_gradients():
  # Both sides: the teacher side trains R-DFCIL's teacher projection. |A_s − A_t| sits at its kink
  # only where both are constant (i = j or i = k: 0; j = k: 1), where no input moves it.
  g_s, g_t = _two_sided(losses.rkd_angle, _normal(9, 6, 4), _normal(10, 6, 4))
  chex.assert_shape([g_s, g_t], (6, 4))


def test_soft_cross_entropy_gradient():
  g_s, _ = _two_sided(losses.soft_cross_entropy, _normal(11, 4, 5), _normal(12, 4, 5),
                      num_classes=jnp.int32(3), temperature=2.0)
  np.testing.assert_array_equal(g_s[:, 3:], 0.0)


def test_masked_squared_error_gradient():
  g_s, _ = _two_sided(losses.masked_squared_error, _normal(13, 4, 6), _normal(14, 4, 6),
                      num_classes=jnp.int32(2))
  np.testing.assert_array_equal(g_s[:, 2:], 0.0)


def test_dist_loss_gradient():
  g_s, g_t = _two_sided(losses.dist_loss, _normal(15, 6, 7, scale=3.0),
                        _normal(16, 6, 7, scale=3.0), num_classes=jnp.int32(4), temperature=4.0)
  np.testing.assert_array_equal(g_s[:, 4:], 0.0)
  np.testing.assert_array_equal(g_t[:, 4:], 0.0)


def test_dist_loss_gradient_with_term_weights():
  for beta, gamma in ((0.0, 1.0), (0.5, 2.0)):
    g_s, _ = _two_sided(losses.dist_loss, _normal(19, 6, 5, scale=3.0),
                        _normal(20, 6, 5, scale=3.0), num_classes=jnp.int32(3), temperature=4.0,
                        inter_weight=beta, intra_weight=gamma)
    np.testing.assert_array_equal(g_s[:, 3:], 0.0)


def test_feature_mse_gradient():
  check_gradient(lambda s, h: losses.feature_mse(student=s, hybrid=h), _normal(17, 3, 5),
                 _normal(18, 3, 5))


# ---------------------------------------------------------------------------------------------
# rkd_angle in float32 at the sizes R-DFCIL uses: its gradient was once exactly 0 there.


def _rkd_angle_value_and_grad_numpy(student, teacher):
  """mean |A_s − A_t| and its gradient w.r.t. the student, analytically, in float64.

  d_ij = e_j − e_i, u_ij = d_ij/‖d_ij‖ (0 for i = j), A[i,j,k] = ⟨u_ij, u_ik⟩, L = mean |A_s − A_t|:
    ∂L/∂A_s[i,j,k] = sign(A_s − A_t)[i,j,k] / B³ =: S[i,j,k]
    ∂L/∂u_ij = Σ_k (S[i,j,k] + S[i,k,j]) u_ik          (u_ij is both A's first and second vector)
    ∂L/∂d_ij = (I − u_ij u_ijᵀ) ∂L/∂u_ij / ‖d_ij‖      (0 for i = j: u_ii = 0 does not move)
    ∂L/∂e_m = Σ_i ∂L/∂d_im − Σ_j ∂L/∂d_mj
  """
  def units(e):
    diff = e[None, :, :] - e[:, None, :]
    norm = np.linalg.norm(diff, axis=-1, keepdims=True)
    return np.divide(diff, norm, out=np.zeros_like(diff), where=norm > 0), norm

  (u_s, norm_s), (u_t, _) = units(np.float64(student)), units(np.float64(teacher))
  a_s, a_t = (np.einsum("ijd,ikd->ijk", u, u, optimize=True) for u in (u_s, u_t))
  size = len(student)
  sign = np.sign(a_s - a_t) / size ** 3
  g_u = np.einsum("ijk,ikd->ijd", sign + sign.transpose(0, 2, 1), u_s, optimize=True)
  g_d = (g_u - u_s * np.sum(u_s * g_u, axis=-1, keepdims=True)) / np.maximum(norm_s, 1e-30)
  g_d = np.where(norm_s > 0, g_d, 0.0)
  return np.abs(a_s - a_t).mean(), g_d.sum(0) - g_d.sum(1)


@pytest.mark.parametrize("batch", [8, 32, 128])
def test_rkd_angle_float32_gradient_matches_numpy(batch):
  for dim in (16, 128):
    rng = np.random.default_rng(batch + dim)
    s, t = (rng.normal(size=(batch, dim)).astype(np.float32) for _ in "st")
    value, grad = jax.jit(jax.value_and_grad(
        lambda e, t=t: losses.rkd_angle(student=e, teacher=jnp.asarray(t))),
                          compiler_options=FAST_COMPILE)(jnp.asarray(s))
    chex.assert_type([value, grad], jnp.float32)
    chex.assert_shape(grad, (batch, dim))
    expected_value, expected = _rkd_angle_value_and_grad_numpy(s, t)
    np.testing.assert_allclose(value, expected_value, rtol=1e-5)
    grad = np.asarray(grad)
    assert np.linalg.norm(grad) > 0.5 * np.linalg.norm(expected) > 0
    # float32 rounding can flip a few signs of A_s − A_t where the two nearly agree
    np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
