r"""`python -m rfd_jax.main`, then one line with the process's peak device memory.

  python -m bench.run_main --config configs/cifar100.py --workdir DIR [--config.<field>=...]

The same program with the same flags (run through runpy as __main__); at exit it prints
`peak device memory <MiB> MiB` (jax's `Device.memory_stats()["peak_bytes_in_use"]` of the first
device), or `peak device memory n/a` where the backend keeps no statistics (CPU).
"""

import atexit
import runpy
import sys

import jax  # noqa: F401  # imported before registering: this handler then runs before jax's own

from bench import common


def _print_peak_device_memory() -> None:
  peak = common.peak_device_memory_mb()
  print("peak device memory " + ("n/a" if peak is None else f"{peak:.0f} MiB"), flush=True)


if __name__ == "__main__":
  atexit.register(_print_peak_device_memory)
  sys.argv[0] = "rfd_jax.main"
  runpy.run_module("rfd_jax.main", run_name="__main__", alter_sys=True)
