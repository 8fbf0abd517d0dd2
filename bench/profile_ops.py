r"""Where a JAX benchmark's step spends its time on XLA:CPU, by op category, from a profiler trace.

  python -m bench.profile_ops --workload rfd_step|inversion_iter [bench flags] [--top 15]

Runs the workload's jitted step (as bench/step.py / bench/inversion.py build it) for `--steps`
steps under jax.profiler.trace, then sums the durations of the XLA ops (thunks) over the steps and
prints, per step: the total per category (convolution, transpose/copy/reverse, dot,
reduce-window, reduce, XNNPACK "ynn" fusions, other fusions, single wrapped elementwise ops, other),
the `--top` op kinds (name without its numeric suffix) and the `--top` single ops with their share,
and the process CPU time per step under the profiler. Not run by the test suite.

Caveat (measured 2026-12-07, jax 0.10.2, 32 px, batch 128): XLA:CPU's convolution thunks run asynchronously on
Eigen's thread pool, so their events last only as long as the launch (≈0.2 ms each) and the
convolutions' arithmetic is NOT in the op time; compare the op time with the CPU time per step:
the difference is (mostly) the convolutions. The shares printed are shares of the op time only.
"""

import argparse
import collections
import glob
import re
import sys
import tempfile
import time

import jax

from bench import common

CATEGORIES = (("convolution", r"^conv"), ("transpose/copy/reverse", r"transpose|copy|reverse"),
              ("dot", r"^dot"), ("reduce-window", r"reduce-window"), ("reduce", r"reduce"),
              ("ynn fusion", r"^ynn_fusion"), ("other fusion", r"fusion"),
              ("elementwise (wrapped_*)", r"^wrapped_"))


def category(name: str) -> str:
  for label, pattern in CATEGORIES:
    if re.search(pattern, name):
      return label
  return "other"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workload", choices=("rfd_step", "inversion_iter"), required=True)
  parser.add_argument("--top", type=int, default=15)
  args, rest = parser.parse_known_args()
  captured = {}

  def fake_time_steps(step, steps):  # run the bench's own step under the profiler
    jax.block_until_ready(step(0))
    with jax.profiler.trace(log_dir):
      cpu_start, wall_start = time.process_time(), time.perf_counter()
      for i in range(1, steps + 1):
        jax.block_until_ready(step(i))
      captured["cpu"] = time.process_time() - cpu_start
      captured["wall"] = time.perf_counter() - wall_start
    captured["steps"] = steps
    return 1.0, 1.0

  log_dir = tempfile.mkdtemp()
  print(f"trace: {log_dir}")
  common.time_steps = fake_time_steps
  common.report = lambda *a, **k: None
  if args.workload == "rfd_step":
    from bench import step as bench_module
  else:
    from bench import inversion as bench_module
  sys.argv = [sys.argv[0], *rest]
  bench_module.main()

  path = glob.glob(f"{log_dir}/**/*.xplane.pb", recursive=True)[0]
  data = jax.profiler.ProfileData.from_file(path)
  totals = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      if "python" in line.name.lower():
        continue
      for event in line.events:
        name = event.name
        if re.match(r"^[a-z_\-]+(\.\d+)*$", name) and not name.startswith(("thunk", "jit_")):
          totals[name] += event.duration_ns
  steps = captured["steps"]
  by_cat = collections.Counter()
  for name, ns in totals.items():
    by_cat[category(name)] += ns
  total = sum(by_cat.values())
  cpu_ms, wall_ms = 1e3 * captured["cpu"] / steps, 1e3 * captured["wall"] / steps
  print(f"{args.workload}: XLA op time per step {total / steps / 1e6:.1f} ms "
        f"(sum over ops, {steps} steps); process CPU {cpu_ms:.0f} ms and wall {wall_ms:.0f} ms "
        f"per step under the profiler: ops {100 * total / steps / 1e6 / cpu_ms:.0f}% of the CPU "
        f"time, the rest mostly the convolutions (asynchronous, not in the op events)")
  for label, ns in by_cat.most_common():
    print(f"  {label:15s} {ns / steps / 1e6:9.1f} ms  {100 * ns / total:5.1f}%")
  kinds = collections.Counter()
  for name, ns in totals.items():
    kinds[re.sub(r"(\.\d+)+$", "", name)] += ns
  print(f"top {args.top} op kinds (numeric suffix dropped):")
  for name, ns in kinds.most_common(args.top):
    print(f"  {name:40s} {ns / steps / 1e6:9.1f} ms  {100 * ns / total:5.1f}%")
  print(f"top {args.top} ops:")
  for name, ns in totals.most_common(args.top):
    print(f"  {name:40s} {ns / steps / 1e6:9.1f} ms  {100 * ns / total:5.1f}%")


if __name__ == "__main__":
  main()
