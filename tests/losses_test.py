"""Each loss against an independent numpy computation (spec §4, §5.2, §6)."""

import jax
import jax.numpy as jnp
import numpy as np

from rfd_jax import losses
from rfd_jax.models.resnet import mask_unseen

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
  grad = jax.grad(lambda e: losses.rkd_angle(student=e, teacher=jnp.asarray(t, jnp.float32)))(
      jnp.asarray(s, jnp.float32))
  assert np.all(np.isfinite(grad))  # the i == j zero vectors must not give NaN


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
