"""Layers shared by the models: the mixed-precision convolution, nearest ×2 upsampling, and the
mapping from `config.dtype` to a convolution compute dtype."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


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


def upsample2x(x: jax.Array) -> jax.Array:
  """Nearest-neighbour ×2 on (B, H, W, C)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
