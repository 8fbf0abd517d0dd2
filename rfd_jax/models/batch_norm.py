"""BatchNorm statistics and training-mode normalisation in one pass over the data, with their
gradients written out (`jax.custom_vjp`).

What autodiff of flax's `nn.BatchNorm` does in training mode: two reductions forward (E[x] and
E[x²]) and three to four backward (the gradients of both means, of the scale and of the bias),
each its own pass over the activation. Here the forward is one pass (the sums of x and x² together)
and the backward one pass (the sums of g and g·(x − μ) together), followed by one elementwise pass
for the input gradient. Same formulas as flax (its default "fast variance", var = E[x²] − E[x]²
clipped at 0); only the order of the float sums differs.

The input statistics that model inversion matches (`resnet.BatchNorm`'s "bn_stats") get the same
treatment: `moments` is the mean and biased variance in one pass, and its gradient needs no
reduction at all (d mean/dx = 1/M, d var/dx = 2(x − μ)/M).

Shapes: x (..., C), statistics over every axis but the last; M = x.size / C.

`BatchNorm(one_pass=False)` is flax's own BatchNorm (and `resnet.BatchNorm`'s input statistics
two-pass): the reference the float64 tests compare against (tests/batch_norm_test.py).
"""

from __future__ import annotations

import functools

import flax.linen as nn
from flax.linen import dtypes
import jax
import jax.numpy as jnp
from jax import lax


def _stat_dtype(x: jax.Array):
  # float32 at least (bf16 activations), float64 kept (the gradient tests run in float64)
  return jnp.promote_types(x.dtype, jnp.float32)


def _channel_sum(a: jax.Array) -> jax.Array:
  """Σ a over all but the last axis, (C,), in two stages: first over the leading axes with the last
  two kept together (rows of W·C contiguous values), then over W. XLA:CPU runs this about twice as
  fast as one reduction over (N, H, W), which it splits into slow reduce-windows (bench/RESULTS.md)."""
  if a.ndim < 3:
    return jnp.sum(a, axis=tuple(range(a.ndim - 1)))
  width, channels = a.shape[-2], a.shape[-1]
  rows = jnp.sum(a.reshape(-1, width * channels), axis=0)
  return jnp.sum(rows.reshape(width, channels), axis=0)


def _two_sums(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(Σ a, Σ b) over all but the last axis. Two reductions that XLA may fuse into one pass; a
  variadic `lax.reduce` of both was measured 3× slower on XLA:CPU."""
  return _channel_sum(a), _channel_sum(b)


def _count(x: jax.Array) -> int:
  return x.size // x.shape[-1]


def _moments(x32: jax.Array) -> tuple[jax.Array, jax.Array]:
  m = _count(x32)
  total, total_sq = _two_sums(x32, x32 * x32)
  mean = total / m
  return mean, jnp.maximum(0.0, total_sq / m - mean * mean)


@jax.custom_vjp
def moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mean, biased variance) of x over all but the last axis, each (C,), in float32 at least:
  var = max(0, E[x²] − E[x]²), flax's BatchNorm formula."""
  return _moments(x.astype(_stat_dtype(x)))


def _moments_fwd(x):
  x32 = x.astype(_stat_dtype(x))
  mean, var = _moments(x32)
  return (mean, var), (x, mean)


def _moments_bwd(res, cotangents):
  x, mean = res
  g_mean, g_var = cotangents
  m = _count(x)
  x32 = x.astype(mean.dtype)
  return ((g_mean / m + (2.0 / m) * g_var * (x32 - mean)).astype(x.dtype),)


moments.defvjp(_moments_fwd, _moments_bwd)


def _normalize(x32, mean, var, scale, bias, epsilon):
  # flax's order of operations: (x − μ) · (rsqrt(σ² + ε) · γ) + β
  return (x32 - mean) * (lax.rsqrt(var + epsilon) * scale) + bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Training-mode BatchNorm: (y, batch mean, batch variance).

  x (..., C); scale, bias (C,). y = (x − μ) · rsqrt(σ² + ε) · γ + β in x's statistics dtype
  (float32 at least), μ and σ² = `moments(x)`. Gradients flow into x, scale and bias through y
  and through μ and σ² (whose cotangents are zero when they only feed running averages).
  """
  return _batch_norm_fwd(x, scale, bias, epsilon)[0]


def _batch_norm_fwd(x, scale, bias, epsilon):
  x32 = x.astype(_stat_dtype(x))
  mean, var = _moments(x32)
  y = _normalize(x32, mean, var, scale, bias, epsilon)
  return (y, mean, var), (x, mean, var, scale)


def _batch_norm_bwd(epsilon, res, cotangents):
  x, mean, var, scale = res
  g, g_mean, g_var = cotangents
  m = _count(x)
  x32 = x.astype(mean.dtype)
  g = g.astype(mean.dtype)
  rstd = lax.rsqrt(var + epsilon)
  centered = x32 - mean
  sum_g, sum_g_centered = _two_sums(g, g * centered)
  sum_g_xhat = sum_g_centered * rstd  # Σ g·x̂: the scale's gradient
  # dx = γr·g − γr·Σg/M − γr²·x̂-weighted term + the cotangents of μ and σ², per channel:
  # dx = a·g + b·(x − μ) + c
  a = scale * rstd
  b = (2.0 / m) * g_var - a * rstd * sum_g_xhat / m
  c = (g_mean - a * sum_g) / m
  dx = a * g + b * centered + c
  return dx.astype(x.dtype), sum_g_xhat.astype(scale.dtype), sum_g.astype(scale.dtype)


batch_norm_train.defvjp(_batch_norm_fwd, _batch_norm_bwd)


class BatchNorm(nn.BatchNorm):
  """nn.BatchNorm whose training mode is `batch_norm_train` (one pass each way); same variables
  ("params": scale, bias; "batch_stats": mean, var), running averages and outputs up to the order
  of float sums. Evaluation mode (running statistics) is nn.BatchNorm's own. Supports what the
  models use: feature axis -1, no axis_name, no mask, fast variance.

  one_pass: False gives nn.BatchNorm's training mode as it is (the tests' reference)."""
  one_pass: bool = True

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
    running = nn.merge_param("use_running_average", self.use_running_average,
                             use_running_average)
    if (not self.one_pass or running or self.axis not in (-1, x.ndim - 1)
        or self.axis_name is not None or mask is not None or not self.use_fast_variance
        or not self.force_float32_reductions):
      return super().__call__(x, use_running_average, mask=mask)
    features = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32),
                            (features,))
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (features,))
    stat_dtype = _stat_dtype(x)
    scale = (self.param("scale", self.scale_init, (features,), self.param_dtype)
             if self.use_scale else jnp.ones((features,), stat_dtype))
    bias = (self.param("bias", self.bias_init, (features,), self.param_dtype)
            if self.use_bias else jnp.zeros((features,), stat_dtype))
    y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    args = [x] + ([scale] if self.use_scale else []) + ([bias] if self.use_bias else [])
    return jnp.asarray(y, dtypes.canonicalize_dtype(*args, dtype=self.dtype))
