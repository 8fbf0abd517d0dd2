r"""The compiler's own counts of the two bench workloads, with flax's BatchNorm and with the one-pass
BatchNorm (rfd_jax.models.batch_norm), in one process.

  JAX_PLATFORMS=cpu python -m bench.accel_counts [--workloads rfd_step,inversion_iter]
      [--targets cpu,h100] [--image_size 32] [--batch_size 128]

For each workload (bench/step.py's RFD main step, bench/inversion.py's iteration; same shapes) and
BatchNorm (flax's own, `common.use_flax_batch_norm`, then ours) it lowers the jitted step and
compiles it for:
  cpu   XLA:CPU on one device: GFLOP and GB accessed per step (cost_analysis). These are the
        figures `rfd_jax.tools.aot` uses for GPU targets (XLA's GPU compiler reports no costs).
  h100  the CUDA plugin's compiler for one H100 (rfd_jax.tools.aot.targets, deviceless): kernels
        per step, counted as the tool counts them (fusions + custom calls outside fusions).
Needs the compile venv (requirements-gpu-compile.txt) for h100. Not run by the test suite.
"""

import argparse
import os
import sys
import time

import jax

from bench import common


class _Captured(Exception):
  pass


def capture(workload: str, image_size: int, batch_size: int):
  """(jitted step, its arguments) as the bench module builds them (stops before compiling)."""
  captured = {}

  def fake_compile(jitted, *args):
    captured["fn"], captured["args"] = jitted, args
    raise _Captured()

  original = common.compile_with_cost
  common.compile_with_cost = fake_compile
  argv = sys.argv
  sys.argv = ["bench", "--image_size", str(image_size), "--batch_size", str(batch_size)]
  try:
    if workload == "rfd_step":
      from bench import step as module  # pylint: disable=g-import-not-at-top
    else:
      from bench import inversion as module  # pylint: disable=g-import-not-at-top
    try:
      module.main()
    except _Captured:
      pass
  finally:
    common.compile_with_cost = original
    sys.argv = argv
  return captured["fn"], captured["args"]


def on_device(args, device):
  sharding = jax.sharding.SingleDeviceSharding(device)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), args)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workloads", default="rfd_step,inversion_iter")
  parser.add_argument("--targets", default="cpu")
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--batch_size", type=int, default=128)
  args = parser.parse_args()
  targets = args.targets.split(",")
  gpu = None
  if "h100" in targets:
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    from rfd_jax.tools.aot import compiler as aot_compile, targets as aot_targets  # pylint: disable=g-import-not-at-top
    gpu = aot_targets.load("h100")
  for workload in args.workloads.split(","):
    for one_pass in (False, True):
      common.use_flax_batch_norm(not one_pass)
      fn, fn_args = capture(workload, args.image_size, args.batch_size)
      label = f"{workload} {'one-pass BN' if one_pass else 'flax BN    '}"
      if "cpu" in targets:
        start = time.perf_counter()
        cost = fn.lower(*fn_args).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        print(f"{label} cpu  {cost['flops'] / 1e9:8.2f} GFLOP  "
              f"{cost['bytes accessed'] / 1e9:7.3f} GB accessed per step  "
              f"(compile {time.perf_counter() - start:.0f} s)", flush=True)
      if gpu is not None:
        start = time.perf_counter()
        hlo = fn.lower(*on_device(fn_args, gpu.devices[0])).compile().as_text()
        print(f"{label} h100 {aot_compile.gpu_kernels(hlo):5d} kernels per step  "
              f"(compile {time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
  main()
