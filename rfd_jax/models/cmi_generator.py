"""The CMI / RGAL model-inversion generator (NHWC).

z (B, nz) → Linear(nz → 2·ngf·s²) → reshape (B, s, s, 2·ngf) → BN → nearest ×2 → conv3×3(2ngf→2ngf)
→ BN → LeakyReLU(0.2) → nearest ×2 → conv3×3(2ngf→ngf) → BN → LeakyReLU(0.2) → conv3×3(ngf→nc,
bias) → sigmoid, with s = img_size / 4. Images come out in [0, 1]; the caller normalises them.

Differences from the PyTorch original worth knowing:
  * the Linear output is reshaped channels-last, (s, s, C), where PyTorch's `view` is
    channels-first; the two are the same model up to a permutation of the Linear's outputs;
  * BN always normalises with the batch statistics (the original is never put in eval mode).
    The running statistics exist and are updated when "batch_stats" is mutable, but never used.
Init is CMI's `reset_model`: Conv / Linear weights N(0, 0.02), biases 0, BN γ ~ N(1, 0.02), β = 0.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rfd_jax.models.layers import Conv, UpsampleConv

_weight_init = nn.initializers.normal(0.02)


def _bn_scale_init(key, shape, dtype=jnp.float32):
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


class BatchStatsNorm(nn.BatchNorm):
  """nn.BatchNorm(use_running_average=False) that also runs when "batch_stats" is immutable.

  Flax's BatchNorm writes its running statistics on every train-mode call, which fails on an
  immutable collection; here that case normalises with the batch statistics the same way and
  skips the write, so a plain `apply(variables, z)` samples images. Assumes the default affine
  (use_scale, use_bias), feature axis -1, no axis_name.
  """

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.is_initializing() or self.is_mutable_collection("batch_stats"):
      return super().__call__(x, use_running_average=False)
    axes = tuple(range(x.ndim - 1))
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axes)
    var = jnp.maximum(jnp.mean(jnp.square(x32), axes) - jnp.square(mean), 0.0)  # flax's formula
    params = self.variables["params"]
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon) * params["scale"] + params["bias"]
    return y.astype(self.dtype or x.dtype)


class CmiGenerator(nn.Module):
  """z (B, nz) → images (B, img_size, img_size, nc) in [0, 1].

  Attributes:
    nz: latent size.
    ngf: base width; the first blocks have 2·ngf channels, the last ngf.
    img_size: output side, a multiple of 4 and >= 8.
    nc: output channels.
    conv_dtype: what the convolutions run in (config.dtype; None: float32; bfloat16: inputs and
      kernels cast to bf16, results cast back to float32; BN, params and optimizer stay float32).
    upsample_phases: each upsample → conv3×3 computed at the low resolution (`UpsampleConv`).
  """
  nz: int = 256
  ngf: int = 64
  img_size: int = 32
  nc: int = 3
  conv_dtype: Any = None
  upsample_phases: bool = True

  def __post_init__(self):
    if self.img_size % 4 != 0 or self.img_size < 8:
      raise ValueError(f"CmiGenerator img_size={self.img_size}: expected a multiple of 4, >= 8")
    super().__post_init__()

  @property
  def z_dim(self) -> int:
    return self.nz

  @property
  def init_size(self) -> int:
    return self.img_size // 4

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    s, c = self.init_size, 2 * self.ngf
    bn = lambda name: BatchStatsNorm(momentum=0.9, epsilon=1e-5, scale_init=_bn_scale_init,
                                     name=name)
    conv = lambda features, name, use_bias=False: Conv(
        features, (3, 3), padding=((1, 1), (1, 1)), use_bias=use_bias, kernel_init=_weight_init,
        dtype=self.conv_dtype, out_dtype=None if self.conv_dtype is None else jnp.float32,
        name=name)
    x = nn.Dense(c * s * s, kernel_init=_weight_init, name="linear")(z.reshape(z.shape[0], -1))
    up_conv = lambda features, name: UpsampleConv(  # nearest ×2 → conv3×3
        features, phases=self.upsample_phases, use_bias=False, kernel_init=_weight_init,
        dtype=self.conv_dtype,
        out_dtype=None if self.conv_dtype is None else jnp.float32, name=name)
    x = bn("bn0")(x.reshape(z.shape[0], s, s, c))
    x = up_conv(c, "conv1")(x)
    x = nn.leaky_relu(bn("bn1")(x), negative_slope=0.2)
    x = up_conv(self.ngf, "conv2")(x)
    x = nn.leaky_relu(bn("bn2")(x), negative_slope=0.2)
    return nn.sigmoid(conv(self.nc, "conv_out", use_bias=True)(x))
