"""The ABD / R-DFCIL / RFD model-inversion generator (spec §2.3; originally DAFL / DFAD).

z ∈ R^1000 → Linear → reshape to (s0, s0, C0) → BN → [nearest ×2 upsample → conv3×3 → BN(eps 0.8)
→ LeakyReLU(0.2)] × k → conv3×3 → 3 channels → tanh → BN(affine=False).

Quirks of the original kept on purpose:
  * `BatchNorm2d(C, 0.8)` passes 0.8 as *eps*, not momentum: the conv blocks' BN use eps = 0.8.
  * the output goes through tanh and then a non-affine BN (eps 1e-5), so images come out roughly
    per-channel standardised, i.e. in the normalised space the classifier sees;
  * PyTorch default init everywhere: weights and biases U(±1/√fan_in).
PyTorch BN momentum 0.1 is Flax momentum 0.9.

Variants by image size: 32 px (CIFAR): 8×8×128, blocks 128, 64; 64 px (Tiny-ImageNet): 8×8×128,
blocks 128, 128, 64; 224 px (ImageNet): 7×7×64, five blocks of 64 (7 → 224). Other sizes divisible
by 4 (e.g. 16 px digits) use the CIFAR layout from (size/4)×(size/4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rfd_jax.models import batch_norm
from rfd_jax.models.layers import Conv, UpsampleConv, conv_compute_dtype, resolve_upsample

Z_DIM = 1000


def _torch_default(fan_in: int):
  """U(±1/√fan_in): PyTorch's default init of Linear/Conv weights (kaiming_uniform a=√5) and biases."""
  bound = 1.0 / np.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class Generator(nn.Module):
  """Maps z (B, z_dim) to images (B, S, S, 3) with S = init_size · 2^len(block_channels).

  Attributes:
    init_size: spatial side after the linear layer.
    init_channels: channels after the linear layer.
    block_channels: output channels of each upsample→conv→BN→LeakyReLU block.
    z_dim: latent size (1000 in all papers).
    conv_dtype: what the convolutions run in (config.dtype via `generator_for`; None: float32;
      bfloat16: inputs and kernels cast to bf16, results cast back to float32, so BN, params and
      the optimizer stay float32; float64 for tests).
    upsample_phases: each upsample → conv3×3 computed at the low resolution (`UpsampleConv`).
  """
  init_size: int
  init_channels: int
  block_channels: Sequence[int]
  z_dim: int = Z_DIM
  conv_dtype: Any = None
  upsample_phases: bool = True

  @nn.compact
  def __call__(self, z: jax.Array, *, train: bool) -> jax.Array:
    bn = lambda eps, name, affine=True: batch_norm.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=eps, use_scale=affine,
        use_bias=affine, name=name)
    width = self.init_size ** 2 * self.init_channels
    x = nn.Dense(width, kernel_init=_torch_default(self.z_dim), bias_init=_torch_default(self.z_dim),
                 name="linear")(z)
    x = x.reshape(z.shape[0], self.init_size, self.init_size, self.init_channels)
    x = bn(1e-5, "bn_linear")(x)
    cin = self.init_channels
    compute = self.conv_dtype or jnp.float32
    out = jnp.promote_types(compute, jnp.float32)  # bf16 convolutions hand float32 to BN
    for i, cout in enumerate(self.block_channels):
      init = _torch_default(9 * cin)
      x = UpsampleConv(cout, phases=self.upsample_phases, kernel_init=init, bias_init=init,
                       dtype=compute, out_dtype=out, name=f"conv{i}")(x)
      x = nn.leaky_relu(bn(0.8, f"bn{i}")(x), negative_slope=0.2)  # eps 0.8: the original's quirk
      cin = cout
    init = _torch_default(9 * cin)
    x = Conv(3, (3, 3), padding=((1, 1), (1, 1)), kernel_init=init, bias_init=init,
             dtype=compute, out_dtype=out, name="conv_out")(x)
    return bn(1e-5, "bn_out", affine=False)(jnp.tanh(x))


def generator_for(image_size: int, dtype: str = "float32", upsample: str = "auto",
                  platform: str | None = None) -> Generator:
  """The generator variant of spec §2.3 for square images of side `image_size`; its convolutions
  run in `dtype` (config.dtype, "float32" or "bfloat16": see `Generator.conv_dtype`), its
  upsampling blocks by `upsample` (config.inversion.upsample: "auto", "phases", "repeat") on
  `platform` (the devices' "cpu", "gpu", "tpu"; default: JAX's default backend), see
  `layers.resolve_upsample`."""
  platform = jax.default_backend() if platform is None else platform
  kw = {"conv_dtype": conv_compute_dtype(dtype),
        "upsample_phases": resolve_upsample(upsample, platform)}
  if image_size == 224:
    return Generator(init_size=7, init_channels=64, block_channels=(64,) * 5, **kw)
  if image_size == 64:
    return Generator(init_size=8, init_channels=128, block_channels=(128, 128, 64), **kw)
  if image_size % 4 == 0 and image_size >= 8:
    return Generator(init_size=image_size // 4, init_channels=128, block_channels=(128, 64), **kw)
  raise ValueError(f"config.data.image_size={image_size}: the generator needs 224, 64 or a "
                   "multiple of 4 (>= 8).")
