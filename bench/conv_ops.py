r"""ResNet-32's convolutions one by one, JAX or PyTorch: forward, input gradient, weight gradient.

  python -m bench.conv_ops [--batch_size 128] [--repeats 20]                 # JAX (XLA:CPU)
  /path/to/torch/venv/bin/python bench/conv_ops.py --framework torch [--nchw]

The five distinct 3×3 convolutions of a CIFAR ResNet-32 at 32 px (stage 1: 32×32, 16 → 16;
stage 2 entry: stride 2, 16 → 32; stage 2: 16×16, 32 → 32; stage 3 entry: stride 2, 32 → 64;
stage 3: 8×8, 64 → 64), NHWC / channels_last, float32. For each: the median ms of the forward
pass, of the input gradient and of the weight gradient alone (JAX: a jitted vjp of one argument;
PyTorch: autograd.grad of one tensor, less the forward), with GFLOP/s (2 · output size · 9 · Ci
per pass). The totals weight each shape by how often it occurs in one full ResNet-32 pass (9 or
10 times per stage, 1 per stride-2 entry; the stem is left out). Pin threads with `taskset -c 0`
for one core. Issue #29: where XLA:CPU's convolutions lose to PyTorch's (oneDNN).
Not run by the test suite.
"""

import argparse
import time

import numpy as np

# (N, H, W, Ci, Co, stride, occurrences in one ResNet-32 pass)
SHAPES = ((32, 32, 16, 16, 1, 10), (32, 32, 16, 32, 2, 1), (16, 16, 32, 32, 1, 9),
          (16, 16, 32, 64, 2, 1), (8, 8, 64, 64, 1, 9))


def median_ms(fn, repeats: int) -> float:
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times)) * 1e3


def jax_timings(batch: int, height: int, width: int, cin: int, cout: int, stride: int,
                repeats: int) -> tuple[float, float, float]:
  """(forward, input gradient, weight gradient) ms of one convolution under jax.jit."""
  import jax  # pylint: disable=g-import-not-at-top

  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  keys = jax.random.split(jax.random.key(0), 2)
  x = jax.random.normal(keys[0], (batch, height, width, cin))
  w = 0.1 * jax.random.normal(keys[1], (3, 3, cin, cout))
  g = jax.numpy.ones_like(conv(x, w))
  forward = jax.jit(conv)
  dx = jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0])
  dw = jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])
  run = lambda fn, *args: (lambda: jax.block_until_ready(fn(*args)))
  return (median_ms(run(forward, x, w), repeats), median_ms(run(dx, x, w, g), repeats),
          median_ms(run(dw, x, w, g), repeats))


def torch_timings(batch: int, height: int, width: int, cin: int, cout: int, stride: int,
                  repeats: int, channels_last: bool) -> tuple[float, float, float]:
  """The same with torch.nn.Conv2d (no bias); gradients timed as forward + grad, less forward."""
  import torch  # pylint: disable=g-import-not-at-top
  x = torch.randn(batch, cin, height, width)
  conv = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
  if channels_last:
    x = x.contiguous(memory_format=torch.channels_last)
    conv = conv.to(memory_format=torch.channels_last)
  x_grad = x.clone().requires_grad_(True)
  with torch.no_grad():
    g = torch.ones_like(conv(x))

  def forward():
    with torch.no_grad():
      conv(x)

  forward_ms = median_ms(forward, repeats)
  dx_ms = median_ms(lambda: torch.autograd.grad(conv(x_grad), x_grad, g), repeats) - forward_ms
  dw_ms = median_ms(lambda: torch.autograd.grad(conv(x), conv.weight, g), repeats) - forward_ms
  return forward_ms, dx_ms, dw_ms


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--framework", default="jax", choices=("jax", "torch"))
  parser.add_argument("--nchw", action="store_true", help="torch: NCHW instead of channels_last")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=20)
  args = parser.parse_args()
  if args.framework == "jax":
    import jax  # pylint: disable=g-import-not-at-top
    print(f"jax {jax.__version__} on {jax.default_backend()}, batch {args.batch_size}")
  else:
    import torch  # pylint: disable=g-import-not-at-top
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{'NCHW' if args.nchw else 'channels_last'}")
  totals = np.zeros(3)
  for height, width, cin, cout, stride, count in SHAPES:
    shape = (args.batch_size, height, width, cin, cout, stride)
    if args.framework == "jax":
      ms = jax_timings(*shape, repeats=args.repeats)
    else:
      ms = torch_timings(*shape, repeats=args.repeats, channels_last=not args.nchw)
    gflop = 2 * args.batch_size * (height // stride) * (width // stride) * cout * 9 * cin / 1e9
    cells = " | ".join(f"{name} {t:6.2f} ms ({gflop / t * 1e3:4.0f} GF/s)"
                       for name, t in zip(("forward", "input grad", "weight grad"), ms))
    print(f"{height}x{width} {cin}->{cout} stride {stride} (x{count}) | {cells}")
    totals += count * np.asarray(ms)
  print(f"one ResNet-32 pass (stem left out): forward {totals[0]:.0f} ms, input gradients "
        f"{totals[1]:.0f} ms, weight gradients {totals[2]:.0f} ms")


if __name__ == "__main__":
  main()
