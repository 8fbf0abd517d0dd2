r"""The generators' nearest ×2 upsample → conv3×3, timed in its two forms (issue #29).

  python -m bench.upsample_conv [--batch_size 128] [--repeats 10]

For the two upsampling blocks of the CIFAR generator (8 → 16 px, 128 → 128 channels; 16 → 32 px,
128 → 64), jitted: "upsampled" = `jnp.repeat` ×2 then a 3×3 convolution (what the generators did
before), "phases" = `rfd_jax.models.layers.upsample2x_conv3x3` (four 2×2 convolutions at the low
resolution). Prints the median ms of the forward pass and of forward + both gradients (input and
kernel, as in the inversion's generator step), and the largest float64 difference of the outputs
relative to their scale. Not run by the test suite.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from rfd_jax.models.layers import upsample2x_conv3x3

BLOCKS = ((8, 128, 128), (16, 128, 64))  # (low-resolution side, Ci, Co) of generator_for(32)


def upsampled(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """The plain form: the ×4 upsampled input, then the 3×3 convolution with padding 1."""
  up = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  return jax.lax.conv_general_dilated(up, kernel, (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def median_ms(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times)) * 1e3


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.default_backend()}, batch {args.batch_size}")
  for side, cin, cout in BLOCKS:
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (args.batch_size, side, side, cin))
    kernel = 0.05 * jax.random.normal(keys[1], (3, 3, cin, cout))
    cotangent = jax.random.normal(keys[2], (args.batch_size, 2 * side, 2 * side, cout))
    row = []
    for name, fn in (("upsampled", upsampled), ("phases", upsample2x_conv3x3)):
      forward = jax.jit(fn)
      backward = jax.jit(lambda x, k, g, fn=fn: jax.vjp(fn, x, k)[1](g))
      fwd_ms = median_ms(forward, x, kernel, repeats=args.repeats)
      bwd_ms = median_ms(backward, x, kernel, cotangent, repeats=args.repeats)
      row.append(f"{name}: forward {fwd_ms:6.1f} ms, + gradients {bwd_ms:6.1f} ms")
    with jax.enable_x64(True):
      x64, k64 = jnp.asarray(np.asarray(x, np.float64)), jnp.asarray(np.asarray(kernel, np.float64))
      want = np.asarray(jax.jit(upsampled)(x64, k64))
      got = np.asarray(jax.jit(upsample2x_conv3x3)(x64, k64))
    error = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
    print(f"{side}->{2 * side} px, {cin}->{cout} ch | " + " | ".join(row)
          + f" | float64 difference {error:.1e}")


if __name__ == "__main__":
  main()
