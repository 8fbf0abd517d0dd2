"""Small pure loss functions. Keyword-only arguments; shapes in the docstrings."""

from __future__ import annotations

from flax import traverse_util
import jax
import jax.numpy as jnp


def _at_least_f32(x: jax.Array) -> jax.Array:
  """x upcast to float32 (bfloat16 activations), float64 kept: the gradient tests run in float64."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def cross_entropy(*, logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example CE, −log softmax(logits)[label].

  logits: float (B, C); labels: int (B,) → float (B,).
  """
  log_probs = jax.nn.log_softmax(_at_least_f32(logits), axis=-1)
  return -jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def accuracy(*, logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example 0/1 correctness of argmax(logits). logits (B, C), labels (B,) → float (B,)."""
  return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


def _class_mask(num_classes: int, lo, hi) -> jax.Array:
  """float (C,): 1 for classes in [lo, hi), else 0. lo/hi may be traced."""
  ids = jnp.arange(num_classes)
  return ((ids >= lo) & (ids < hi)).astype(jnp.float32)


def weighted_cross_entropy(*, logits: jax.Array, labels: jax.Array,
                           class_weights: jax.Array) -> jax.Array:
  """Σ_i w_{y_i} CE_i / Σ_i w_{y_i} (PyTorch's weighted-mean semantics).

  logits (B, C), labels (B,), class_weights (C,) → scalar.
  """
  w = class_weights[labels]
  return jnp.sum(w * cross_entropy(logits=logits, labels=labels)) / jnp.sum(w)


def class_balance_weights(counts: jax.Array, num_seen) -> jax.Array:
  """R-DFCIL's fine-tuning class weights from label counts: w_c = max_c' count_c' / max(count_c, 1).

  Equivalently (Σ count / max(count_c, 1)) normalised by its minimum over the seen classes.
  counts (C,) → (C,); classes >= num_seen get weight 0 (they never occur as labels).
  """
  seen = jnp.arange(counts.shape[0]) < num_seen
  raw = jnp.sum(counts) / jnp.maximum(counts, 1.0)
  lowest = jnp.min(jnp.where(seen, raw, jnp.inf))
  return jnp.where(seen, raw / lowest, 0.0)


# ---------------------------------------------------------------------------------------------
# Model inversion (spec §4)


def class_balance_loss(*, logits: jax.Array, num_classes) -> jax.Array:
  """1 + Σ_c p̄_c log p̄_c / log(C_old), p̄ = batch mean of softmax(logits) (no temperature).

  = 1 − H(p̄)/log C_old: 0 when the batch's predictions are balanced over the C_old classes.
  logits (B, C) with classes >= num_classes masked out; num_classes may be traced. 0 if C_old = 1.
  """
  mean_probs = jnp.mean(jax.nn.softmax(_at_least_f32(logits), axis=-1), axis=0)
  # Masked classes have p̄ = 0 exactly; the inner where keeps log() and its gradient finite there.
  positive = mean_probs > 0
  neg_entropy = jnp.sum(jnp.where(positive, mean_probs * jnp.log(jnp.where(positive, mean_probs,
                                                                           1.0)), 0.0))
  safe_log = jnp.log(jnp.maximum(num_classes, 2).astype(jnp.float32))
  return jnp.where(num_classes > 1, 1.0 + neg_entropy / safe_log, 0.0)


def gaussian_blur_kernel(size: int = 5, sigma: float = 1.0) -> jax.Array:
  """The inversion prior's 2-D kernel: k[i,j] ∝ exp(−((i−c)/(2σ))²)·exp(−((j−c)/(2σ))²), sum 1.

  The (2σ)² in the denominator (instead of 2σ²) is the original code's: the effective standard
  deviation is √2·σ. Returns (size, size).
  """
  offsets = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2
  one_d = jnp.exp(-((offsets / (2 * sigma)) ** 2))
  kernel = jnp.outer(one_d, one_d)
  return kernel / jnp.sum(kernel)


def smoothness_prior(*, images: jax.Array) -> jax.Array:
  """mean((x − g(reflect_pad(x, 2)))²), g the depthwise 5×5 `gaussian_blur_kernel`.

  images (B, H, W, C) → scalar.
  """
  channels = images.shape[-1]
  padded = jnp.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
  kernel = jnp.tile(gaussian_blur_kernel()[:, :, None, None].astype(images.dtype),
                    (1, 1, 1, channels))
  blurred = jax.lax.conv_general_dilated(
      padded, kernel, window_strides=(1, 1), padding="VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels)
  return jnp.mean((images - blurred) ** 2)


def bn_statistics_kl(*, input_stats: dict, running_stats: dict) -> jax.Array:
  """Mean over BN layers of mean over channels of KL(N(μ_r, σ_r²) ‖ N(μ, σ²)).

  Per channel: 0.5·(log(σ²/(σ_r²+1e-8)) + (σ_r² + (μ_r−μ)² + 1e-8)/σ² − 1), where μ, σ² are the
  batch mean and biased variance (+1e-8) of the layer's input and μ_r, σ_r² its running stats.

  input_stats: the "bn_stats" collection, per layer {"input_mean", "input_var"} (C,).
  running_stats: the "batch_stats" collection, per layer {"mean", "var"} (C,); same layer paths.
  """
  inputs = traverse_util.flatten_dict(input_stats)
  running = traverse_util.flatten_dict(running_stats)
  terms = []
  for layer in sorted({key[:-1] for key in inputs}):
    mean, var = inputs[layer + ("input_mean",)], inputs[layer + ("input_var",)] + 1e-8
    run_mean, run_var = running[layer + ("mean",)], running[layer + ("var",)]
    kl = 0.5 * (jnp.log(var / (run_var + 1e-8)) + (run_var + (run_mean - mean) ** 2 + 1e-8) / var
                - 1.0)
    terms.append(jnp.mean(kl))
  return jnp.mean(jnp.stack(terms))


# ---------------------------------------------------------------------------------------------
# Distillation (spec §6)


def masked_l1(*, student: jax.Array, teacher: jax.Array, num_classes) -> jax.Array:
  """Mean |s − t| over the B × num_classes entries of the first num_classes columns.

  R-DFCIL's hard KD on old-class logits. student, teacher (B, C); num_classes may be traced.
  """
  mask = _class_mask(student.shape[-1], 0, num_classes)
  total = jnp.sum(jnp.abs(student - teacher) * mask)
  return total / (student.shape[0] * jnp.maximum(num_classes, 1))


def rkd_angle(*, student: jax.Array, teacher: jax.Array) -> jax.Array:
  """RKD angle loss: mean over (i, j, k) of |A_s[i,j,k] − A_t[i,j,k]|.

  A[i,j,k] = ⟨n(e_j − e_i), n(e_k − e_i)⟩ with n(v) = v / ‖v‖ and n(0) = 0 (PyTorch's
  `F.normalize`). student, teacher: embeddings (B, D) → scalar.
  """
  def angles(e):
    diff = e[None, :, :] - e[:, None, :]  # (i, j, D): e_j − e_i
    sq = jnp.sum(diff ** 2, axis=-1, keepdims=True)
    # The i == j rows are zero vectors. Dividing them by a clamped norm (1e-12) would give them a
    # 1e12 Jacobian: jnp.abs has slope 1 at 0, so the zero entries of |A_s − A_t| send a
    # cotangent into them, and e_i's two ±1e12 contributions then cancel every other gradient term
    # in float32 (the whole gradient came out exactly 0). A zero scale keeps them out instead.
    inv_norm = jnp.where(sq > 0, jax.lax.rsqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
    unit = diff * inv_norm
    return jnp.einsum("ijd,ikd->ijk", unit, unit)
  return jnp.mean(jnp.abs(angles(_at_least_f32(student)) - angles(_at_least_f32(teacher))))


def soft_cross_entropy(*, student: jax.Array, teacher: jax.Array, num_classes, temperature: float,
                       student_classes=None) -> jax.Array:
  """LwF knowledge distillation as ABD's `loss_fn_kd`, without a T² factor:

  mean_i Σ_{c<num_classes} −softmax_{c<num_classes}(t_i/T)_c · log_softmax_{c<student_classes}(s_i/T)_c.

  student_classes (default num_classes): the columns the student's softmax runs over; larger than
  num_classes, the teacher's softmax is zero-padded over the extra ones. student, teacher (B, C);
  both counts may be traced → scalar.
  """
  if student_classes is None:
    student_classes = num_classes
  columns = jnp.arange(student.shape[-1])
  s = jnp.where(columns < student_classes, student / temperature, -1e9)
  t = jnp.where(columns < num_classes, teacher / temperature, -1e9)
  per_example = -jnp.sum(jax.nn.softmax(t, axis=-1) * jax.nn.log_softmax(s, axis=-1), axis=-1)
  return jnp.mean(per_example)


def masked_squared_error(*, student: jax.Array, teacher: jax.Array, num_classes) -> jax.Array:
  """ABD's importance-weighted feature distillation in logit space:
  mean_i Σ_{c<n_old} (s_ic − t_ic)² / n_old. student, teacher (B, C) → scalar."""
  mask = _class_mask(student.shape[-1], 0, num_classes)
  per_example = jnp.sum(((student - teacher) ** 2) * mask, axis=-1)
  return jnp.mean(per_example) / jnp.maximum(num_classes, 1)


# ---------------------------------------------------------------------------------------------
# RFD (spec §5)


def _masked_pearson(a: jax.Array, b: jax.Array, mask: jax.Array, axis: int) -> jax.Array:
  """Pearson correlation of a and b along `axis`, over the entries where mask is 1.

  Σ(a−ā)(b−b̄) / (‖a−ā‖·‖b−b̄‖ + 1e-8), means over the masked entries. A constant (or empty) slice
  has zero centred norm and gives 0, with finite gradients.
  """
  count = jnp.maximum(jnp.sum(mask, axis=axis, keepdims=True), 1.0)
  a_c = (a - jnp.sum(a * mask, axis=axis, keepdims=True) / count) * mask
  b_c = (b - jnp.sum(b * mask, axis=axis, keepdims=True) / count) * mask

  def norm(x):
    sq = jnp.sum(x * x, axis=axis)
    return jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)  # sqrt'(0) would be inf

  return jnp.sum(a_c * b_c, axis=axis) / (norm(a_c) * norm(b_c) + 1e-8)


def dist_loss(*, student: jax.Array, teacher: jax.Array, num_classes,
              temperature: float = 4.0, inter_weight=1.0, intra_weight=1.0) -> jax.Array:
  """DIST relation distillation over the first num_classes columns (no τ² factor).

  P = softmax(s/τ), Q = softmax(t/τ) over those classes;
  inter = 1 − mean_i pearson(P[i, :], Q[i, :])   (per sample, across classes)
  intra = 1 − mean_c pearson(P[:, c], Q[:, c])   (per class, across the batch)
  returns inter_weight·inter + intra_weight·intra (DIST's β and γ; RFD uses 1 and 1).
  student, teacher (B, C); num_classes and the weights may be traced.

  With num_classes == 2 the inter term is degenerate: a centred 2-vector is (d, −d), so
  pearson(P[i], Q[i]) = sign(d_P)·sign(d_Q)·x/(x + 1e-8) with x = 2|d_P||d_Q|, a step function of
  the student whose gradient is ~0 except within ~1e-8 of a tie p_i0 = p_i1, where it reaches
  ~|d_Q|/1e-8 (docs/rfd_first_task.md). An inter_weight of 0 there (config.distill.
  dist_inter_min_old = 3) removes only that spike.
  """
  keep = jnp.arange(student.shape[-1]) < num_classes
  probs = lambda z: jax.nn.softmax(jnp.where(keep, _at_least_f32(z) / temperature, -1e9),
                                   axis=-1)
  p, q = probs(student), probs(teacher)
  mask = jnp.broadcast_to(keep, p.shape).astype(jnp.float32)
  inter = 1.0 - jnp.mean(_masked_pearson(p, q, mask, axis=1))
  per_class = _masked_pearson(p, q, mask, axis=0)
  intra = 1.0 - jnp.sum(per_class * keep) / jnp.maximum(num_classes, 1)
  return inter_weight * inter + intra_weight * intra


def feature_mse(*, student: jax.Array, hybrid: jax.Array) -> jax.Array:
  """RFD's low-level feature distillation: mean over B × F of (h_S(x) − h_hyb(x))².

  Gradients flow into both sides. student, hybrid (B, F) → scalar.
  """
  return jnp.mean((_at_least_f32(student) - _at_least_f32(hybrid)) ** 2)
