"""Layers shared by the models: the mixed-precision convolution, the generators' nearest ×2
upsample-then-convolve block computed at the low resolution, and the mapping from
`config.dtype` to a convolution compute dtype."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def conv_compute_dtype(dtype: str) -> Any:
  """config.dtype ("float32" or "bfloat16") → a model's `conv_dtype`: None for float32 (the
  convolutions run in float32, as plain float32 modules), else the jnp dtype the convolutions'
  inputs and kernels are cast to."""
  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"config.dtype={dtype!r}: expected 'float32' or 'bfloat16'")
  return None if dtype == "float32" else jnp.dtype(dtype)


class Conv(nn.Conv):
  """nn.Conv computing in `dtype` (the convolution's inputs and kernel are cast to it) whose result
  is cast to `out_dtype` (None: left in `dtype`). Same parameters as nn.Conv (float32)."""
  out_dtype: Any = None

  def __call__(self, inputs: jax.Array) -> jax.Array:
    y = super().__call__(inputs)
    return y if self.out_dtype is None else y.astype(self.out_dtype)


# Nearest ×2 upsampling then a 3-tap "SAME" filter, per output phase: output row 2i + a reads the
# upsampled rows 2i + a − 1, 2i + a, 2i + a + 1, i.e. the low-resolution rows i − 1, i, i (a = 0) or
# i, i, i + 1 (a = 1). _PHASE_TAPS[a] maps the 3 taps to the 2 low-resolution taps;
# _PHASE_PADDING[a] places those 2 taps at rows (i − 1, i) or (i, i + 1).
_PHASE_TAPS = np.array([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], np.float32)
_PHASE_PADDING = ((1, 0), (0, 1))


def upsample2x_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A 3×3 convolution (zero padding 1) of x upsampled ×2 by nearest neighbour (every pixel
  repeated in a 2×2 block), computed without the upsampled input.

  x: (B, H, W, Ci); kernel: (3, 3, Ci, Co) HWIO. The convolutions compute in x's dtype (the
  phase kernels are summed in the kernel's, then cast); returns (B, 2H, 2W, Co). Each of the
  four output phases (a, b) (rows 2i + a, columns 2j + b) is a 2×2
  convolution of x with taps summed from the 3×3 kernel, so the layer does 4/9 of the multiply-adds
  of the upsampled convolution and never stores the ×4 upsampled input (nor, in the backward
  pass, its transposed copy). Same function; float sums are only regrouped (kernel taps added
  before the products).
  """
  taps = jnp.asarray(_PHASE_TAPS, kernel.dtype)
  rows = []
  for a in range(2):
    cols = []
    for b in range(2):
      phase_kernel = jnp.einsum("pu,qv,uvio->pqio", taps[a], taps[b], kernel)
      cols.append(jax.lax.conv_general_dilated(
          x, phase_kernel.astype(x.dtype), window_strides=(1, 1),
          padding=(_PHASE_PADDING[a], _PHASE_PADDING[b]),
          dimension_numbers=("NHWC", "HWIO", "NHWC")))
    rows.append(jnp.stack(cols, axis=3))  # (B, H, W, 2, Co): columns 2j, 2j + 1
  y = jnp.stack(rows, axis=2)  # (B, H, 2, W, 2, Co): rows 2i, 2i + 1
  batch, height, _, width, _, features = y.shape
  return y.reshape(batch, 2 * height, 2 * width, features)


UPSAMPLE_CHOICES = ("auto", "phases", "repeat")


def resolve_upsample(choice: str, platform: str) -> bool:
  """config.inversion.upsample / config.synthesis.upsample → `UpsampleConv.phases`: "phases",
  "repeat" (the ×4 upsampled input), or "auto": phases on CPU only ("cpu", "gpu", "tpu": the
  devices' platform).

  XLA:CPU runs the four phase convolutions about twice as fast as the upsampled one (the
  inversion iteration 0.89× → 1.37× PyTorch back to back, bench/RESULTS.md). For one H100 and a
  v5e-8 the compilers count more kernels and bytes with phases (H100 inversion 371 → 422 kernels
  per iteration), so "auto" keeps the upsampled convolution on accelerators."""
  if choice not in UPSAMPLE_CHOICES:
    raise ValueError(f"upsample={choice!r}: expected one of {UPSAMPLE_CHOICES}")
  return choice == "phases" or (choice == "auto" and platform == "cpu")


class UpsampleConv(nn.Module):
  """Nearest ×2 upsampling followed by a 3×3 convolution with zero padding 1 (the generators'
  `interpolate(scale_factor=2)` → `Conv2d(k=3, p=1)`).

  `phases`: computed by `upsample2x_conv3x3` (True) or as written, on the ×4 upsampled input
  (False); the same function either way (`resolve_upsample` picks). Parameters
  are those of the `Conv` it replaces, created in the same order with the same names ("kernel"
  (3, 3, Ci, Co), "bias" (Co,)), so initialisation and checkpoints do not depend on `phases`.
  `dtype`: what the convolution computes in (None: the input's); `out_dtype` as in `Conv`.
  """
  features: int
  phases: bool = True
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros_init()
  use_bias: bool = True
  dtype: Any = None
  out_dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (B, H, W, Ci) → (B, 2H, 2W, features)."""
    kernel = self.param("kernel", self.kernel_init, (3, 3, x.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    dtype = self.dtype or x.dtype
    x = x.astype(dtype)
    if self.phases:  # taps summed in the parameters' dtype, then cast
      y = upsample2x_conv3x3(x, kernel)
    else:
      y = jax.lax.conv_general_dilated(
          jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2), kernel.astype(dtype),
          window_strides=(1, 1), padding=((1, 1), (1, 1)),
          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if bias is not None:
      y = y + bias.astype(dtype)
    return y if self.out_dtype is None else y.astype(self.out_dtype)
