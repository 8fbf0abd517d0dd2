"""RGAL's loss functions (spec rgal.md §3.3–3.5, §4.2–4.3, §8). Shapes in the docstrings.

Triplet mining works on a dense B × B grid with fixed shapes (spec §8): for every anchor row a the
negatives get log sampling weights (−inf where not sampleable), one negative is drawn per (a, p)
cell, and the hinge loss is averaged over the cells that are real positive pairs.
"""

from __future__ import annotations

from typing import Sequence

from flax import traverse_util
import jax
import jax.numpy as jnp

_PAIRWISE_EPS = 1e-6  # torch.nn.functional.pairwise_distance's eps
_DIST_CLIP = 1e-4     # keeps log d and log(1 − d²/4) finite: d is clipped to [1e-4, 2 − 1e-4]


def _at_least_f32(x: jax.Array) -> jax.Array:
  """x upcast to float32 (bfloat16 activations), float64 kept: the gradient tests run in float64."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _safe_sqrt(sq: jax.Array) -> jax.Array:
  """sqrt(max(sq, 0)) with a zero (not NaN) gradient where sq <= 0."""
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def l2_normalize(x: jax.Array) -> jax.Array:
  """x / max(‖x‖₂, 1e-12) along the last axis (torch's F.normalize). (..., D) → (..., D)."""
  x = _at_least_f32(x)
  norm = _safe_sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
  return x / jnp.maximum(norm, 1e-12)


def embedding(features: jax.Array) -> jax.Array:
  """The triplet losses' embedding of a stage map (B, H, W, C) or a vector (B, C): global average
  pooled (maps), then L2-normalised. → float32 (B, C)."""
  features = _at_least_f32(features)
  if features.ndim == 4:
    features = jnp.mean(features, axis=(1, 2))
  return l2_normalize(features)


# ---------------------------------------------------------------------------------------------
# Negative mining (spec §3.4, §4.3)


def sphere_distances(emb: jax.Array) -> jax.Array:
  """Pairwise Euclidean distances of unit vectors: d_ij = sqrt(max(2 − 2 e_i·e_j, 0) + [i = j]).

  emb (B, n), rows already L2-normalised → float32 (B, B), values in [0, 2]. The diagonal is 1,
  not 0: the released code adds 1 on the diagonal before the sqrt so that log d_ii stays finite.
  The sqrt's gradient is 0 (not NaN) where two rows coincide.
  """
  emb = _at_least_f32(emb)
  sq = 2.0 - 2.0 * emb @ emb.T
  sq = jnp.maximum(sq, 0.0) + jnp.eye(emb.shape[0], dtype=jnp.float32)
  return _safe_sqrt(sq)


def negative_log_weights(dist: jax.Array, labels: jax.Array, *, num_dims: int, lower: float,
                         upper: float, clamp: bool) -> tuple[jax.Array, jax.Array]:
  """Log sampling weights of the negatives of every anchor row, in log space.

  With d = clip(dist, 1e-4, 2 − 1e-4) (then max(d, lower) if clamp) and n = num_dims, the inverse
  density of distances between uniform points on the (n−1)-sphere (Wu et al. 2017) is
    log w_aj = (2 − n)·log d_aj − ((n − 3)/2)·log(1 − d_aj²/4).
  j is a negative of a iff y_j ≠ y_a (so the diagonal and the positives never are). Sampleable:
    clamp=False (focal weighted sampling, synthesis §3.4): negative and lower < dist_aj < upper;
    clamp=True (distance-weighted sampling, student phase §4.3): negative and dist_aj < upper,
      with d clamped below at `lower` (near negatives all get the weight of d = lower).
  A row with negatives but none sampleable falls back to uniform over all its negatives (log
  weight 0 each). softmax(logits[a]) is then row a's sampling distribution.

  Deliberate deviation from the released PyTorch code: it normalises exp(log w − rowmax) with the
  max over the whole row (positives and the diagonal included), which for n = 100 underflows to 0
  in float32 for every in-band weight whenever some sample is close to the anchor, and then
  silently falls back to uniform. Here the weights stay in log space (softmax normalises within
  the sampleable set), so no underflow happens.

  dist (B, B) from `sphere_distances`; labels int (B,). Returns (logits float32 (B, B) with −inf
  where not sampleable, has_negative bool (B,): row a has at least one y_j ≠ y_a). Rows without a
  negative are all −inf.
  """
  dist = _at_least_f32(dist)
  d = jnp.clip(dist, _DIST_CLIP, 2.0 - _DIST_CLIP)
  if clamp:
    d = jnp.maximum(d, lower)
  log_w = (2.0 - num_dims) * jnp.log(d) - ((num_dims - 3.0) / 2.0) * jnp.log(1.0 - 0.25 * d * d)
  negative = labels[:, None] != labels[None, :]
  in_band = dist < upper
  if not clamp:
    in_band = in_band & (dist > lower)
  valid = negative & in_band
  has_valid = jnp.any(valid, axis=1, keepdims=True)
  in_band_logits = jnp.where(valid, log_w, -jnp.inf)
  uniform_logits = jnp.where(negative, 0.0, -jnp.inf)
  logits = jnp.where(has_valid, in_band_logits, uniform_logits)
  return logits, jnp.any(negative, axis=1)


def sample_negatives(rng: jax.Array, neg_logits: jax.Array) -> jax.Array:
  """One independent negative per (anchor a, positive p) cell: out[a, p] ~ Categorical(softmax(
  neg_logits[a])).

  neg_logits (B, B) from `negative_log_weights` → int32 (B, B). Row a uses its own key (split from
  rng) and draws B samples. A row that is all −inf gives an arbitrary valid index (the triplet
  loss masks such anchors out). No gradient flows through the sampling.
  """
  neg_logits = jax.lax.stop_gradient(neg_logits)
  size = neg_logits.shape[0]
  row_ok = jnp.any(jnp.isfinite(neg_logits), axis=1, keepdims=True)
  neg_logits = jnp.where(row_ok, neg_logits, 0.0)
  keys = jax.random.split(rng, size)
  draw = lambda key, row: jax.random.categorical(key, row, shape=(size,))
  return jax.vmap(draw)(keys, neg_logits).astype(jnp.int32)


# ---------------------------------------------------------------------------------------------
# Triplet losses (spec §3.5, §4.2)


def _pairwise_distance(emb: jax.Array) -> jax.Array:
  """D[i, j] = ‖e_i − e_j + 1e-6‖₂ (torch's pairwise_distance, p = 2). (B, D) → (B, B).

  Never 0 (the eps), so the gradient stays finite when two embeddings coincide.
  """
  emb = _at_least_f32(emb)
  diff = emb[:, None, :] - emb[None, :, :] + _PAIRWISE_EPS
  return jnp.sqrt(jnp.sum(diff * diff, axis=-1))


def triplet_loss(*, embeddings: Sequence[jax.Array], labels: jax.Array, negatives: jax.Array,
                 has_negative: jax.Array, margin: float = 0.2, swap: bool = False) -> jax.Array:
  """Triplet margin loss averaged over the mined triplets.

  Triplets: every ordered pair (a, p), a ≠ p, y_a = y_p, with has_negative[a]; its negative is
  n = negatives[a, p]. With d(u, v) = ‖u − v + 1e-6‖₂ and f^k the k-th embedding:
    ℓ(a, p, n) = Σ_k relu(d(f^k_a, f^k_p) − d(f^k_a, f^k_n) + margin)        (swap=False)
    ℓ(a, p, n) = Σ_k relu(d(f^k_a, f^k_n) − d(f^k_a, f^k_p) + margin)        (swap=True)
  swap=True pushes same-label samples apart and pulls different-label ones together (the paper's
  synthesis direction; the released code uses swap=False in both phases, spec §3.5).
  Returns Σ ℓ / max(#triplets, 1): exactly 0 with zero gradient when there is no triplet.

  embeddings: sequence of float (B, D_k), rows already L2-normalised; labels int (B,);
  negatives int (B, B) from `sample_negatives`; has_negative bool (B,). → float32 scalar.
  """
  size = labels.shape[0]
  triplet = ((labels[:, None] == labels[None, :]) & ~jnp.eye(size, dtype=bool)
             & has_negative[:, None])
  per_triplet = jnp.zeros((size, size), jnp.float32)
  for emb in embeddings:
    dist = _pairwise_distance(emb)
    d_ap = dist
    # d_an[a, p] = D[a, negatives[a, p]]
    d_an = jnp.take_along_axis(dist, negatives.astype(jnp.int32), axis=1)
    if swap:
      d_ap, d_an = d_an, d_ap
    per_triplet = per_triplet + jax.nn.relu(d_ap - d_an + margin)
  count = jnp.sum(triplet.astype(jnp.float32))
  return jnp.sum(jnp.where(triplet, per_triplet, 0.0)) / jnp.maximum(count, 1.0)


def mined_triplet_loss(rng: jax.Array, *, mining: jax.Array, labels: jax.Array,
                       embeddings: Sequence[jax.Array], lower: float, upper: float, clamp: bool,
                       margin: float = 0.2, swap: bool = False,
                       num_dims: int | jax.Array | None = None) -> jax.Array:
  """Mine one negative per positive pair, then `triplet_loss` (spec §3.4 / §4.3).

  Mining (no gradient): e = l2_normalize(stop_gradient(mining)) (B, K), d = sphere_distances(e),
  `negative_log_weights` with n = num_dims (default K; may be traced, e.g. the number of old
  classes when the other logits are zeroed) and the band/clamp given, one negative per (a, p)
  drawn with rng. labels: int (B,). embeddings: sequence of (B, D_k) L2-normalised. → scalar.
  """
  mining = jax.lax.stop_gradient(mining)
  labels = jax.lax.stop_gradient(labels)
  dist = sphere_distances(l2_normalize(mining))
  logits, has_negative = negative_log_weights(
      dist, labels, num_dims=mining.shape[-1] if num_dims is None else num_dims, lower=lower,
      upper=upper, clamp=clamp)
  negatives = sample_negatives(rng, logits)
  return triplet_loss(embeddings=embeddings, labels=labels, negatives=negatives,
                      has_negative=has_negative, margin=margin, swap=swap)


def focal_triplet_loss(rng: jax.Array, *, sample_logits: jax.Array,
                       embeddings: Sequence[jax.Array], margin: float = 0.2, swap: bool = False,
                       lower: float = 0.5, upper: float = 1.0) -> jax.Array:
  """Synthesis-phase RGAL triplet loss with focal weighted sampling (spec §3.4–3.5).

  `mined_triplet_loss` with mining = sample_logits (the teacher's, (B, K)), labels = their
  argmax, n = K, band lower < d < upper (no clamp); swap=True is the paper's direction.
  embeddings: sequence of (B, D_k) L2-normalised student features. → float32 scalar.
  """
  return mined_triplet_loss(rng, mining=sample_logits, labels=jnp.argmax(sample_logits, axis=-1),
                            embeddings=embeddings, lower=lower, upper=upper, clamp=False,
                            margin=margin, swap=swap)


def distance_weighted_triplet_loss(rng: jax.Array, *, student_logits: jax.Array,
                                   teacher_logits: jax.Array, embeddings: Sequence[jax.Array],
                                   margin: float = 0.2, lower: float = 0.5,
                                   upper: float = 1.4) -> jax.Array:
  """Student-phase triplet loss with distance-weighted sampling (spec §4.2–4.3).

  `mined_triplet_loss` with mining = student_logits (B, K), labels = argmax(teacher_logits), n = K,
  d clamped below at `lower`, sampleable iff d < upper, the ordinary direction (same class pulled
  together). embeddings: sequence of (B, D_k) L2-normalised. → float32 scalar.
  """
  return mined_triplet_loss(rng, mining=student_logits,
                            labels=jnp.argmax(teacher_logits, axis=-1), embeddings=embeddings,
                            lower=lower, upper=upper, clamp=True, margin=margin)


# ---------------------------------------------------------------------------------------------
# Distillation and inversion terms (spec §3.3, §4.2)


def _kl_rows(teacher_logits: jax.Array, student_logits: jax.Array) -> jax.Array:
  """Per row KL(softmax(t_i) ‖ softmax(s_i)) = Σ_c p_t,c (log p_t,c − log p_s,c). (B, C) → (B,)."""
  log_p = jax.nn.log_softmax(_at_least_f32(teacher_logits), axis=-1)
  log_q = jax.nn.log_softmax(_at_least_f32(student_logits), axis=-1)
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def adversarial_kl(*, teacher_logits: jax.Array, student_logits: jax.Array) -> jax.Array:
  """Decision-adversarial term: L_adv = −(1/B) Σ_i m_i · KL(softmax(t_i) ‖ softmax(s_i)).

  m_i = [argmax s_i = argmax t_i] (no gradient): only samples on which teacher and student still
  agree are pushed to disagree; the mean is over the whole batch. (B, C) each → float32 scalar.
  """
  agree = jnp.argmax(student_logits, axis=-1) == jnp.argmax(teacher_logits, axis=-1)
  mask = jax.lax.stop_gradient(agree.astype(jnp.float32))
  return -jnp.mean(mask * _kl_rows(teacher_logits, student_logits))


def kd_loss(*, student_logits: jax.Array, teacher_logits: jax.Array,
            temperature: float) -> jax.Array:
  """T² · (1/B) Σ_i KL(softmax(t_i/T) ‖ softmax(s_i/T)) (torch kl_div 'batchmean' · T²).

  student_logits, teacher_logits (B, C) → float32 scalar.
  """
  kl = _kl_rows(teacher_logits / temperature, student_logits / temperature)
  return temperature ** 2 * jnp.mean(kl)


def bn_l2_loss(*, input_stats: dict, running_stats: dict) -> jax.Array:
  """DeepInversion / CMI BN statistic loss: Σ_layers ‖μ − μ_run‖₂ + ‖σ² − σ²_run‖₂.

  Plain (not squared) L2 norms over channels, summed over layers; μ, σ² are the batch mean and
  biased variance of each BN layer's input. The norms' gradients are 0 (not NaN) when matched.

  input_stats: the "bn_stats" collection, per layer {"input_mean", "input_var"} (C,).
  running_stats: the "batch_stats" collection, per layer {"mean", "var"} (C,); same layer paths.
  → float32 scalar.
  """
  inputs = traverse_util.flatten_dict(input_stats)
  running = traverse_util.flatten_dict(running_stats)
  norm = lambda v: _safe_sqrt(jnp.sum(jnp.square(_at_least_f32(v))))
  total = jnp.zeros((), jnp.float32)
  for layer in sorted({key[:-1] for key in inputs}):
    total = total + norm(inputs[layer + ("input_mean",)] - running[layer + ("mean",)])
    total = total + norm(inputs[layer + ("input_var",)] - running[layer + ("var",)])
  return total


def pooled_regression(*, student: Sequence[jax.Array], teacher: Sequence[jax.Array]) -> jax.Array:
  """RGAL's CD term (spec §4.2) on pooled, projected features: Σ_k mean_{b,c} (s_k − t_k)².

  The released code applies a 1×1 conv W·x + b to each student stage map, then global-average-
  pools both maps. A 1×1 conv is the same affine map at every pixel, so it commutes with the
  average: GAP(W·x + b) = W·GAP(x) + b. The caller therefore pools first and projects the pooled
  student feature with a Dense layer. student[k], teacher[k]: (B, C_k) → float32 scalar.
  """
  terms = [jnp.mean((_at_least_f32(s) - _at_least_f32(t)) ** 2)
           for s, t in zip(student, teacher, strict=True)]
  return jnp.sum(jnp.stack(terms))
