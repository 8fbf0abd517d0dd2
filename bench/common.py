"""Timing and reporting shared by the JAX benchmarks (bench/step.py, bench/inversion.py)."""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from rfd_jax.models import layers


def add_common_args(parser: argparse.ArgumentParser) -> None:
  """--image_size, --batch_size, --steps, --dtype (alias --conv_dtype), --gen_conv_dtype,
  --upsample, --peak_gflops."""
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--steps", type=int, default=10, help="timed steps after one warm-up step")
  parser.add_argument("--dtype", "--conv_dtype", dest="dtype", default="float32",
                      choices=("float32", "bfloat16"),
                      help="config.dtype: what the backbone's and the generator's convolutions run "
                      "in (--conv_dtype: its name before config.model.conv_dtype was removed)")
  parser.add_argument("--gen_conv_dtype", default=None, choices=("float32", "bfloat16"),
                      help="the generator's convolutions alone (default: --dtype, as in training)")
  parser.add_argument("--upsample", default="auto", choices=layers.UPSAMPLE_CHOICES,
                      help="config.inversion.upsample: how the generator computes its upsample → "
                      "conv3×3 blocks (auto: phases on CPU, repeat on GPU/TPU)")
  parser.add_argument("--peak_gflops", type=float, default=0.0,
                      help="the device's peak GFLOP/s, to print the achieved fraction")


def compile_with_cost(jitted: Callable, *args) -> tuple[Any, float, float]:
  """Lowers and compiles `jitted` for `args`: (compiled, compile seconds, XLA cost-analysis FLOPs
  of one call; 0 if XLA reports none)."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0)) if cost else 0.0
  return compiled, compile_s, flops


def time_steps(step: Callable[[int], Any], steps: int) -> tuple[float, float]:
  """Runs `step(i)` for i = 1..steps after one warm-up call step(0), waiting for each (jax.
  block_until_ready on what it returns). Returns (median wall seconds per step, mean process CPU
  seconds per step): on a loaded machine the CPU time is the steadier measure of the work done."""
  jax.block_until_ready(step(0))
  times = []
  cpu_start = time.process_time()
  for i in range(1, steps + 1):
    start = time.perf_counter()
    jax.block_until_ready(step(i))
    times.append(time.perf_counter() - start)
  return float(np.median(times)), (time.process_time() - cpu_start) / steps


def peak_device_memory_mb() -> float | None:
  """Peak bytes in use on the first device so far (jax's `Device.memory_stats()`), MiB; None where
  the backend keeps no such statistics (XLA:CPU returns None)."""
  try:
    stats = jax.devices()[0].memory_stats()
  except (AttributeError, NotImplementedError, RuntimeError):
    return None
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return stats["peak_bytes_in_use"] / 2**20


def peak_rss_mb() -> float:
  """The process's peak resident set size so far, MiB (Linux ru_maxrss is in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report(title: str, *, per_step: float, cpu_per_step: float, images: int, steps: int,
           compile_s: float, flops: float, peak_gflops: float = 0.0) -> None:
  """Prints the header line (jax version, device, `title`) and the result line: ms/step, images/s
  (`images` per step), compile time, GFLOP/step, GFLOP/s, fraction of peak, CPU seconds per step,
  peak RSS, and the peak device memory where the backend reports it (GPU, TPU)."""
  device = jax.devices()[0]
  print(f"jax {jax.__version__} on {device.platform} ({device.device_kind}), {title}")
  gflops = flops / per_step / 1e9
  fraction = f"  ({100 * gflops / peak_gflops:.1f}% of peak)" if peak_gflops else ""
  device_mb = peak_device_memory_mb()
  device_text = "" if device_mb is None else f"  peak device memory {device_mb:.0f} MiB"
  print(f"{1000 * per_step:9.1f} ms/step (median of {steps})  {images / per_step:8.1f} images/s  "
        f"compile {compile_s:.1f} s  {flops / 1e9:.2f} GFLOP/step  {gflops:.1f} GFLOP/s{fraction}  "
        f"cpu {cpu_per_step:.2f} s/step  peak RSS {peak_rss_mb():.0f} MiB{device_text}")


_OUR_BATCH_NORMS: dict = {}


def use_flax_batch_norm(enabled: bool) -> None:
  """Models built after this call get flax's own BatchNorm (enabled: the BatchNorm classes the
  models construct, `batch_norm.BatchNorm` and `resnet.BatchNorm`, replaced by subclasses with
  `one_pass=False`: issue #29's "before") or ours (not enabled). For bench drivers comparing the
  two in one process; it patches those two module attributes."""
  from rfd_jax.models import batch_norm, resnet  # pylint: disable=g-import-not-at-top
  if not _OUR_BATCH_NORMS:
    _OUR_BATCH_NORMS.update(batch_norm=batch_norm.BatchNorm, resnet=resnet.BatchNorm)
  ours = _OUR_BATCH_NORMS
  if not enabled:
    batch_norm.BatchNorm, resnet.BatchNorm = ours["batch_norm"], ours["resnet"]
    return

  class FlaxBatchNorm(ours["batch_norm"]):
    one_pass: bool = False

  class FlaxResnetBatchNorm(ours["resnet"]):
    one_pass: bool = False

  batch_norm.BatchNorm, resnet.BatchNorm = FlaxBatchNorm, FlaxResnetBatchNorm
