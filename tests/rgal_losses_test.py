"""RGAL's losses against independent numpy loops over the spec formulas (rgal.md §3.3–3.5,
§4.2–4.3), and their gradients against finite differences in float64."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from rfd_jax.methods import rgal_losses

from gradient_checks import check_gradient

RNG = np.random.default_rng(0)
# The losses take any key type; "rbg" keys compile about twice as fast as threefry on CPU.
_key = lambda seed: jax.random.key(seed, impl="rbg")
_log_weights = jax.jit(rgal_losses.negative_log_weights,
                       static_argnames=("num_dims", "lower", "upper", "clamp"))


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _arc_points(angles, num_dims):
  """Unit vectors at the given angles in the first coordinate plane of R^num_dims.

  Two of them at angles θ, φ are 2·sin(|θ − φ|/2) apart.
  """
  points = np.zeros((len(angles), num_dims))
  points[:, 0], points[:, 1] = np.cos(angles), np.sin(angles)
  return points


def _np_distances(emb):
  size = emb.shape[0]
  out = np.ones((size, size))
  for i in range(size):
    for j in range(size):
      if i != j:
        out[i, j] = np.linalg.norm(emb[i] - emb[j])
  return out


def _np_negative_probs(dist, labels, num_dims, lower, upper, clamp):
  """Row-normalised sampling probabilities (float64), straight from spec §3.4 / §4.3."""
  size = len(labels)
  probs = np.zeros((size, size))
  for a in range(size):
    negatives = [j for j in range(size) if labels[j] != labels[a]]
    weights = np.zeros(size)
    for j in negatives:
      d = float(dist[a, j])
      in_band = d < upper if clamp else lower < d < upper
      if in_band:
        d = max(d, lower) if clamp else d
        weights[j] = np.exp((2 - num_dims) * np.log(d)
                            - (num_dims - 3) / 2 * np.log(1 - d * d / 4))
    if weights.sum() == 0:
      weights[negatives] = 1.0  # uniform fallback (stays 0 when there is no negative)
    if weights.sum() > 0:
      probs[a] = weights / weights.sum()
  return probs


def _np_pair(u, v):
  return np.linalg.norm(u - v + 1e-6)


def _np_triplet(embeddings, labels, negatives, has_negative, margin, swap):
  total, count = 0.0, 0
  for a in range(len(labels)):
    for p in range(len(labels)):
      if a == p or labels[a] != labels[p] or not has_negative[a]:
        continue
      n = negatives[a, p]
      for f in embeddings:
        d_ap, d_an = _np_pair(f[a], f[p]), _np_pair(f[a], f[n])
        total += max(d_an - d_ap + margin, 0.0) if swap else max(d_ap - d_an + margin, 0.0)
      count += 1
  return total / max(count, 1)


def _np_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


def _np_kl(t, s):
  p, q = _np_softmax(t), _np_softmax(s)
  return (p * (np.log(p) - np.log(q))).sum(-1)


# ---------------------------------------------------------------------------------------------
# Mining


def test_sphere_distances_matches_numpy_with_unit_diagonal():
  emb = _unit(RNG.normal(size=(7, 10)))
  emb[3] = emb[1]  # coinciding rows: distance 0 off the diagonal
  got = rgal_losses.sphere_distances(jnp.asarray(emb, jnp.float32))
  chex.assert_shape(got, (7, 7))
  chex.assert_type(got, jnp.float32)
  np.testing.assert_allclose(got, _np_distances(emb), atol=2e-3)
  np.testing.assert_array_equal(np.diag(np.asarray(got)), 1.0)
  assert float(got[1, 3]) < 2e-3
  grad = jax.jit(jax.grad(lambda e: jnp.sum(rgal_losses.sphere_distances(e))))(
      jnp.asarray(emb, jnp.float32))
  assert np.all(np.isfinite(grad))


# Angles (rad) and labels of the hand-built set; d = 2 sin(Δθ/2).
#   row 0: positive 1 (d 0.10), negatives 4 (d 0.20, below the focal band), 2 (d 0.69), 3 (d 0.87),
#          5 (d ≈ 2.0, above both bands)
#   row 5: every negative is at d > 1.7: outside both bands → uniform over its 5 negatives
_ANGLES = np.array([0.0, 0.1, 0.7, 0.9, 0.2, 3.0])
_LABELS = np.array([0, 0, 1, 2, 1, 3])


def _check_log_weights(dist, labels, num_dims, lower, upper, clamp):
  logits, has_negative = _log_weights(
      jnp.asarray(dist, jnp.float32), jnp.asarray(labels), num_dims=num_dims, lower=lower,
      upper=upper, clamp=clamp)
  chex.assert_shape([logits, has_negative], [dist.shape, (len(labels),)])
  chex.assert_type([logits, has_negative], [jnp.float32, bool])
  expected = _np_negative_probs(np.asarray(dist, np.float32), labels, num_dims, lower, upper,
                                clamp)
  logits = np.asarray(logits)
  same = labels[:, None] == labels[None, :]
  assert np.all(logits[same] == -np.inf)  # diagonal and positives are never sampled
  assert not np.any(np.isnan(logits)) and not np.any(logits == np.inf)
  probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))
  np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(has_negative), (~same).any(1))
  return logits, probs


def test_negative_log_weights_focal_band_matches_numpy():
  for num_dims in (10, 100):
    emb = _arc_points(_ANGLES, num_dims)
    _, probs = _check_log_weights(_np_distances(emb), _LABELS, num_dims, 0.5, 1.0, clamp=False)
    # row 0: only 2 and 3 are in (0.5, 1); the nearer one gets most of the mass
    assert probs[0, 4] == 0 and probs[0, 5] == 0 and probs[0, 2] > probs[0, 3] > 0
    np.testing.assert_allclose(probs[5, :5], 0.2, rtol=1e-6)  # uniform fallback


def test_negative_log_weights_clamped_band_matches_numpy():
  for num_dims in (10, 100):
    emb = _arc_points(_ANGLES, num_dims)
    _, probs = _check_log_weights(_np_distances(emb), _LABELS, num_dims, 0.5, 1.4, clamp=True)
    # row 0: 4 (d 0.2) is clamped to 0.5 and so weighs most; 5 (d ≈ 2) is above 1.4
    assert probs[0, 4] > probs[0, 2] > probs[0, 3] > 0 and probs[0, 5] == 0
    np.testing.assert_allclose(probs[5, :5], 0.2, rtol=1e-6)


def test_negative_log_weights_random_batch_matches_numpy():
  centres = _unit(RNG.normal(size=(3, 10)))
  labels = RNG.integers(0, 3, size=12)
  emb = _unit(centres[labels] + 0.5 * RNG.normal(size=(12, 10)))
  dist = _np_distances(emb)
  for clamp, upper in ((False, 1.0), (True, 1.4)):
    _check_log_weights(dist, labels, 10, 0.5, upper, clamp)


def test_negative_log_weights_row_without_negatives_is_all_minus_inf():
  emb = _arc_points(_ANGLES, 10)
  logits, has_negative = rgal_losses.negative_log_weights(
      jnp.asarray(_np_distances(emb), jnp.float32), jnp.zeros(6, jnp.int32), num_dims=10,
      lower=0.5, upper=1.0, clamp=False)
  assert not np.any(np.asarray(has_negative))
  assert np.all(np.asarray(logits) == -np.inf)


def test_log_space_weights_do_not_underflow_for_100_classes():
  """Documents the deliberate deviation from the released code (spec §3.4, float32 quirk)."""
  num_dims = 100
  # anchor 0; a positive at d 0.10 (it sets the row max) and negatives at d ≈ 0.6 and 0.7
  angles = np.array([0.0, 0.1, 2 * np.arcsin(0.3), 2 * np.arcsin(0.35)])
  labels = np.array([0, 0, 1, 2])
  dist = _np_distances(_arc_points(angles, num_dims)).astype(np.float32)
  # the released code: exp(log w − max over the whole row) in float32, masked to the band
  d = np.clip(dist[0], 1e-4, 2 - 1e-4)
  log_w = ((2 - num_dims) * np.log(d) - (num_dims - 3) / 2 * np.log(1 - d * d / 4))
  naive = np.exp((log_w - log_w.max()).astype(np.float32))
  band = (labels != labels[0]) & (dist[0] > 0.5) & (dist[0] < 1.0)
  assert band[2] and band[3] and np.all(naive[band] == 0)  # underflow → uniform fallback there
  _, probs = _check_log_weights(dist, labels, num_dims, 0.5, 1.0, clamp=False)
  assert probs[0, 2] > 0.999 and 0 < probs[0, 3] < 1e-4  # non-uniform, as the formula says


def test_sample_negatives_frequencies_follow_softmax():
  probs = np.array([[0.5, 0.3, 0.2, 0.0],
                    [0.0, 0.25, 0.0, 0.75],
                    [0.1, 0.1, 0.1, 0.7],
                    [0.0, 0.0, 0.0, 0.0]])  # row 3: nothing sampleable
  with np.errstate(divide="ignore"):
    logits = jnp.asarray(np.log(probs) + 1.7, jnp.float32)  # softmax is shift invariant
  draws = jax.jit(jax.vmap(rgal_losses.sample_negatives, in_axes=(0, None)))(
      jax.random.split(_key(0), 2000), logits)
  chex.assert_shape(draws, (2000, 4, 4))
  chex.assert_type(draws, jnp.int32)
  draws = np.asarray(draws)
  for a in range(3):
    freq = np.bincount(draws[:, a, :].ravel(), minlength=4) / draws[:, a, :].size
    np.testing.assert_allclose(freq, probs[a], atol=0.02)
    assert not np.any(probs[a][draws[:, a, :]] == 0)  # never a −inf index
  assert np.all((draws[:, 3] >= 0) & (draws[:, 3] < 4))
  # the cells of a row are independent draws: P(out[a, 0] = out[a, 1]) = Σ p²
  np.testing.assert_allclose(np.mean(draws[:, 0, 0] == draws[:, 0, 1]), (probs[0] ** 2).sum(),
                             atol=0.04)


# ---------------------------------------------------------------------------------------------
# Triplet losses


def _triplet_case():
  labels = np.array([0, 0, 1, 1, 1, 2])
  negatives = np.array([[RNG.choice(np.flatnonzero(labels != labels[a])) for _ in range(6)]
                        for a in range(6)])
  return labels, negatives


def test_triplet_loss_matches_numpy_loop():
  labels, negatives = _triplet_case()
  layers = [_unit(RNG.normal(size=(6, 8))), _unit(RNG.normal(size=(6, 5)))]
  has_negative = np.array([True, True, False, True, True, True])  # anchor 2 is left out
  for num_layers in (1, 2):
    for swap in (False, True):
      kwargs = dict(embeddings=[jnp.asarray(f, jnp.float32) for f in layers[:num_layers]],
                    labels=jnp.asarray(labels), negatives=jnp.asarray(negatives), margin=0.5,
                    swap=swap)
      got = rgal_losses.triplet_loss(has_negative=jnp.asarray(has_negative), **kwargs)
      chex.assert_shape(got, ())
      chex.assert_type(got, jnp.float32)
      expected = _np_triplet(layers[:num_layers], labels, negatives, has_negative, 0.5, swap)
      np.testing.assert_allclose(got, expected, rtol=1e-5)
      every_anchor = rgal_losses.triplet_loss(has_negative=jnp.ones(6, bool), **kwargs)
      np.testing.assert_allclose(
          every_anchor, _np_triplet(layers[:num_layers], labels, negatives, np.ones(6), 0.5, swap),
          rtol=1e-5)
      assert abs(float(every_anchor) - float(got)) > 1e-4  # the exclusion changes the mean


def test_triplet_loss_without_positive_pairs_is_zero_with_zero_gradient():
  emb = jnp.asarray(_unit(RNG.normal(size=(5, 4))), jnp.float32)
  fn = lambda e: rgal_losses.triplet_loss(embeddings=[e], labels=jnp.arange(5),
                                          negatives=jnp.zeros((5, 5), jnp.int32),
                                          has_negative=jnp.ones(5, bool))
  value, grad = jax.jit(jax.value_and_grad(fn))(emb)
  assert float(value) == 0.0
  np.testing.assert_array_equal(grad, 0.0)


def test_triplet_loss_gradient_finite_when_embeddings_coincide():
  emb = _unit(RNG.normal(size=(4, 6)))
  emb[1] = emb[0]  # anchor 0 and its positive coincide
  emb[2] = emb[0]  # and so does its negative
  labels = jnp.asarray([0, 0, 1, 1])
  negatives = jnp.asarray([[2] * 4, [2] * 4, [0] * 4, [1] * 4])
  for swap in (False, True):
    fn = lambda e: rgal_losses.triplet_loss(embeddings=[e], labels=labels, negatives=negatives,
                                            has_negative=jnp.ones(4, bool), swap=swap)
    value, grad = jax.jit(jax.value_and_grad(fn))(jnp.asarray(emb, jnp.float32))
    assert np.isfinite(float(value)) and np.all(np.isfinite(grad))
    assert np.any(np.asarray(grad) != 0)


def _manual_triplet(rng, mining_logits, label_logits, feats, *, upper, clamp, swap):
  """The composition the two wrappers should be: normalise, mine, sample, triplet_loss."""
  labels = jnp.argmax(label_logits, -1)
  emb = mining_logits / jnp.linalg.norm(mining_logits, axis=-1, keepdims=True)
  logits, has_negative = rgal_losses.negative_log_weights(
      rgal_losses.sphere_distances(emb), labels, num_dims=mining_logits.shape[-1], lower=0.5,
      upper=upper, clamp=clamp)
  negatives = rgal_losses.sample_negatives(rng, logits)
  loss = rgal_losses.triplet_loss(embeddings=feats, labels=labels, negatives=negatives,
                                  has_negative=has_negative, swap=swap)
  return loss, labels, negatives, has_negative


def test_focal_triplet_loss_is_the_manual_composition():
  teacher = jnp.asarray(RNG.normal(size=(16, 10)) * 3, jnp.float32)
  feats = [jnp.asarray(_unit(RNG.normal(size=(16, 8))), jnp.float32)]
  rng = _key(3)

  @jax.jit
  def run(r, t, f):
    out = []
    for swap in (False, True):
      value, grads = jax.value_and_grad(
          lambda tt, ff, swap=swap: rgal_losses.focal_triplet_loss(
              r, sample_logits=tt, embeddings=ff, swap=swap, lower=0.5, upper=1.0),
          argnums=(0, 1))(t, f)
      out.append((value, grads, _manual_triplet(r, t, t, f, upper=1.0, clamp=False, swap=swap)))
    return out

  values = []
  for swap, result in zip((False, True), run(rng, teacher, feats)):
    got, (g_t, g_f), (manual, labels, negatives, has_negative) = result
    chex.assert_shape(got, ())
    chex.assert_type(got, jnp.float32)
    assert np.isfinite(float(got)) and float(got) > 0
    np.testing.assert_allclose(got, manual, rtol=1e-5)
    np.testing.assert_allclose(
        got, _np_triplet([np.asarray(feats[0])], np.asarray(labels), np.asarray(negatives),
                         np.asarray(has_negative), 0.2, swap), rtol=1e-5)
    # mining is under stop_gradient: no gradient into the teacher logits, a finite one into feats
    np.testing.assert_array_equal(g_t, 0.0)
    assert np.all(np.isfinite(g_f[0])) and np.any(np.asarray(g_f[0]) != 0)
    values.append(float(got))
  assert values[0] != values[1]


def test_distance_weighted_triplet_loss_is_the_manual_composition():
  student = jnp.asarray(RNG.normal(size=(16, 10)) * 3, jnp.float32)
  teacher = jnp.asarray(RNG.normal(size=(16, 10)) * 3, jnp.float32)  # different argmaxes
  feats = [jnp.asarray(_unit(RNG.normal(size=(16, 8))), jnp.float32)]
  rng = _key(5)

  @jax.jit
  def run(r, s, t, f):
    value, grad = jax.value_and_grad(
        lambda ss: rgal_losses.distance_weighted_triplet_loss(
            r, student_logits=ss, teacher_logits=t, embeddings=f))(s)
    # labels from the teacher, mining space from the student
    return value, grad, _manual_triplet(r, s, t, f, upper=1.4, clamp=True, swap=False)[0]

  got, g_s, manual = run(rng, student, teacher, feats)
  chex.assert_shape(got, ())
  assert np.isfinite(float(got)) and float(got) > 0
  np.testing.assert_allclose(got, manual, rtol=1e-5)
  np.testing.assert_array_equal(g_s, 0.0)


# ---------------------------------------------------------------------------------------------
# Distillation and inversion terms


def test_adversarial_kl_masks_disagreeing_samples():
  t = RNG.normal(size=(5, 4))
  s = t + 0.3 * RNG.normal(size=(5, 4))
  s[1] = t[1]
  s[1, (np.argmax(t[1]) + 1) % 4] = t[1].max() + 1.0  # argmax differs → contributes 0
  s[3, np.argmax(t[3])] = s[3].max() + 0.5  # make sure row 3 agrees
  mask = np.argmax(s, -1) == np.argmax(t, -1)
  assert not mask[1] and mask.sum() >= 3
  expected = -np.mean(mask * _np_kl(t, s))
  fn = lambda ss: rgal_losses.adversarial_kl(teacher_logits=jnp.asarray(t, jnp.float32),
                                             student_logits=ss)
  value, grad = jax.jit(jax.value_and_grad(fn))(jnp.asarray(s, jnp.float32))
  chex.assert_shape(value, ())
  chex.assert_type(value, jnp.float32)
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  grad = np.asarray(grad)
  np.testing.assert_array_equal(grad[~mask], 0.0)
  assert np.all(np.abs(grad[mask]).sum(-1) > 0)


def test_kd_loss_matches_numpy():
  t, s = RNG.normal(size=(6, 7)) * 5, RNG.normal(size=(6, 7)) * 5
  expected = 20.0 ** 2 * np.mean(_np_kl(t / 20.0, s / 20.0))
  got = rgal_losses.kd_loss(student_logits=jnp.asarray(s, jnp.float32),
                            teacher_logits=jnp.asarray(t, jnp.float32), temperature=20.0)
  chex.assert_shape(got, ())
  np.testing.assert_allclose(got, expected, rtol=1e-4)
  assert float(rgal_losses.kd_loss(student_logits=jnp.asarray(t, jnp.float32),
                                   teacher_logits=jnp.asarray(t, jnp.float32),
                                   temperature=4.0)) < 1e-6


def test_bn_l2_loss_matches_numpy_and_is_smooth_when_matched():
  channels = {("block1", "bn1"): 3, ("block1", "bn2"): 5, ("bn_final",): 4}
  inputs, running, expected = {}, {}, 0.0
  for path, c in channels.items():
    mean, var = RNG.normal(size=c), RNG.uniform(0.5, 2, size=c)
    run_mean, run_var = RNG.normal(size=c), RNG.uniform(0.5, 2, size=c)
    expected += np.sqrt(((mean - run_mean) ** 2).sum()) + np.sqrt(((var - run_var) ** 2).sum())
    inner_in, inner_run = inputs, running
    for key in path[:-1]:
      inner_in, inner_run = inner_in.setdefault(key, {}), inner_run.setdefault(key, {})
    inner_in[path[-1]] = {"input_mean": jnp.asarray(mean, jnp.float32),
                          "input_var": jnp.asarray(var, jnp.float32)}
    inner_run[path[-1]] = {"mean": jnp.asarray(run_mean, jnp.float32),
                           "var": jnp.asarray(run_var, jnp.float32)}
  got = rgal_losses.bn_l2_loss(input_stats=inputs, running_stats=running)
  chex.assert_shape(got, ())
  chex.assert_type(got, jnp.float32)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # inputs equal to the running statistics: the loss is 0 and its gradient (of a norm at 0) finite
  as_inputs = {"block1": {k: {"input_mean": v["mean"], "input_var": v["var"]}
                          for k, v in running["block1"].items()},
               "bn_final": {"input_mean": running["bn_final"]["mean"],
                            "input_var": running["bn_final"]["var"]}}
  value, grad = jax.jit(jax.value_and_grad(
      lambda i: rgal_losses.bn_l2_loss(input_stats=i, running_stats=running)))(as_inputs)
  assert float(value) == 0.0
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grad))


def test_pooled_regression_matches_numpy():
  student = [RNG.normal(size=(4, 32)), RNG.normal(size=(4, 64))]
  teacher = [RNG.normal(size=(4, 32)), RNG.normal(size=(4, 64))]
  expected = sum(((s - t) ** 2).mean() for s, t in zip(student, teacher))
  got = rgal_losses.pooled_regression(student=[jnp.asarray(s, jnp.float32) for s in student],
                                      teacher=[jnp.asarray(t, jnp.float32) for t in teacher])
  chex.assert_shape(got, ())
  chex.assert_type(got, jnp.float32)
  np.testing.assert_allclose(got, expected, rtol=1e-5)



# ---------------------------------------------------------------------------------------------
# Gradients against central finite differences in float64 (gradient_checks.check_gradient), with
# respect to every differentiable input, each required to be clearly nonzero. Inputs are random
# draws from fixed seeds, so no hinge, norm or argmax sits at its kink. Mining
# (negative_log_weights, sample_negatives, and the mining/label logits of the mined losses) is
# behind stop_gradient by construction: the wrapper tests above assert that gradient is exactly 0,
# so it is closed over here.


def _normal(seed, *shape, scale=1.0):
  return scale * np.random.default_rng(seed).normal(size=shape)


def test_l2_normalize_embedding_and_sphere_distances_gradients():
  """One check of a sum of the three, each on its own input (one compilation)."""
  vector_weights = jnp.asarray(_normal(20, 5, 6))  # random read-outs of the non-scalar outputs
  pair_weights = jnp.asarray(_normal(23, 5, 5))
  # sphere_distances on unit rows, as used: the diagonal's max(2 − 2‖e_i‖², 0) = max(0, 0) is
  # at its kink, but ‖e_i‖ = 1 does not move, so no direction crosses it.
  check_gradient(
      lambda x, maps, y: (jnp.sum(vector_weights * rgal_losses.l2_normalize(x))
                          + jnp.sum(vector_weights * rgal_losses.embedding(maps))
                          + jnp.sum(pair_weights * rgal_losses.sphere_distances(
                              rgal_losses.l2_normalize(y)))),
      _normal(21, 5, 6), _normal(22, 5, 3, 3, 6), _normal(24, 5, 6))


def test_triplet_loss_gradients_both_directions():
  labels, negatives = np.array([0, 0, 1, 1, 1, 2]), np.array(
      [[2, 3, 0, 5, 0, 0], [4, 5, 0, 0, 1, 3], [0, 1, 5, 0, 5, 1], [5, 0, 1, 1, 0, 0],
       [1, 0, 0, 5, 0, 0], [0, 1, 2, 3, 4, 0]])
  layers = [_unit(_normal(25, 6, 8)), _unit(_normal(26, 6, 5))]
  for swap in (False, True):
    for f in layers:  # each hinge away from its kink, and some triplets active
      dist = np.linalg.norm(f[:, None] - f[None] + 1e-6, axis=-1)
      d_ap, d_an = dist, np.take_along_axis(dist, negatives, axis=1)
      hinge = (d_an - d_ap if swap else d_ap - d_an) + 0.5
      cells = (labels[:, None] == labels[None]) & ~np.eye(6, dtype=bool)
      assert np.abs(hinge[cells]).min() > 1e-3 and np.any(hinge[cells] > 0)
    check_gradient(
        lambda embeddings, swap=swap: rgal_losses.triplet_loss(
            embeddings=embeddings, labels=jnp.asarray(labels), negatives=jnp.asarray(negatives),
            has_negative=jnp.ones(6, bool), margin=0.5, swap=swap), layers)


def test_mined_triplet_losses_gradients():
  """The three mined losses summed, each on its own embeddings (one compilation; each argument's
  gradient is its loss's): mined_triplet_loss mining in the first 3 of 6 logit columns (traced
  num_dims, the replay triplet's old classes) on raw maps; focal_triplet_loss both directions on
  two layers; distance_weighted_triplet_loss."""
  mining = _normal(27, 12, 6, scale=3.0)
  mining[:, 3:] = 0.0
  sample_logits, student, teacher = (jnp.asarray(_normal(seed, 12, 4, scale=3.0))
                                     for seed in (29, 32, 33))

  def total(maps, focal_pull, focal_push, weighted):
    mined = rgal_losses.mined_triplet_loss(
        _key(7), mining=jnp.asarray(mining), labels=jnp.argmax(jnp.asarray(mining[:, :3]), -1),
        num_dims=jnp.int32(3), embeddings=[rgal_losses.embedding(maps)], lower=0.5, upper=1.4,
        clamp=True)
    focal = sum(rgal_losses.focal_triplet_loss(_key(8), sample_logits=sample_logits,
                                               embeddings=embeddings, swap=swap)
                for embeddings, swap in ((focal_pull, False), (focal_push, True)))
    return mined + focal + rgal_losses.distance_weighted_triplet_loss(
        _key(9), student_logits=student, teacher_logits=teacher, embeddings=weighted)

  two_layers = [_unit(_normal(30, 12, 8)), _unit(_normal(31, 12, 5))]
  check_gradient(total, _normal(28, 12, 2, 2, 5), two_layers, two_layers,
                 [_unit(_normal(34, 12, 8))])


def test_adversarial_kl_gradients_into_teacher_and_student():
  t = _normal(35, 6, 4, scale=2.0)
  s = t + _normal(36, 6, 4, scale=0.5)
  mask = np.argmax(s, -1) == np.argmax(t, -1)
  assert 0 < mask.sum() < 6  # some rows agree (gradient), some do not (masked out)
  top2 = lambda z: np.diff(np.sort(z, -1)[:, -2:], axis=-1)
  assert min(top2(s).min(), top2(t).min()) > 1e-3  # no argmax tie: the mask does not flip
  g_t, g_s = check_gradient(lambda tt, ss: rgal_losses.adversarial_kl(
      teacher_logits=tt, student_logits=ss), t, s)
  np.testing.assert_array_equal(g_s[~mask], 0.0)
  np.testing.assert_array_equal(g_t[~mask], 0.0)


def test_kd_loss_gradients():
  check_gradient(lambda s, t: rgal_losses.kd_loss(student_logits=s, teacher_logits=t,
                                                  temperature=4.0),
                 _normal(37, 6, 7, scale=5.0), _normal(38, 6, 7, scale=5.0))


def test_bn_l2_loss_gradient_into_both_statistics():
  rng = np.random.default_rng(39)
  stats = lambda mean_key, var_key: {
      "block1": {"bn1": {mean_key: rng.normal(size=3), var_key: rng.uniform(0.5, 2, size=3)}},
      "bn_final": {mean_key: rng.normal(size=4), var_key: rng.uniform(0.5, 2, size=4)}}
  # the norms are away from their kink at 0: inputs and running statistics differ
  check_gradient(lambda i, r: rgal_losses.bn_l2_loss(input_stats=i, running_stats=r),
                 stats("input_mean", "input_var"), stats("mean", "var"))


def test_pooled_regression_gradients():
  check_gradient(lambda s, t: rgal_losses.pooled_regression(student=s, teacher=t),
                 [_normal(40, 4, 6), _normal(41, 4, 3)], [_normal(42, 4, 6), _normal(43, 4, 3)])
