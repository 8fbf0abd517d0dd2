r"""Host overhead of the real training loop: microseconds per train step around a network so small
that the device work is negligible.

  python bench/overhead.py [--method finetune|rfd] [--repo PATH] [--epochs 4]

Runs the class-incremental job in this process (`train.train_and_evaluate`) on digits at 8 px,
batch 8, with a 1-block-per-stage, 4-channel ResNet in place of ResNet-32, and times every call
of the jitted train step from the loop: the median interval between consecutive calls after the
first epoch of each task is the loop's wall time per step (host work + dispatch; the device work
is negligible). Then the same jitted step is called back to back on its own: the difference is what
the loop adds per step (batch gathering, keys, metric accumulation, bookkeeping).

`--repo PATH` measures another checkout (e.g. a `git worktree` of an older commit), so one
machine, one load and one command give the before/after of a loop change. Output: one line,
`overhead method=M loop_us=… bare_us=… added_us=… steps=…`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--method", default="finetune", choices=("finetune", "rfd"))
  parser.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      help="the checkout whose rfd_jax is measured (default: this one)")
  parser.add_argument("--epochs", type=int, default=4)
  args = parser.parse_args()
  sys.path.insert(0, args.repo)
  os.chdir(args.repo)  # configs/ of that checkout
  # pylint: disable=g-import-not-at-top
  from rfd_jax import xla_env
  xla_env.set_fast_cpu_flags()  # as rfd_jax.main does, before JAX starts
  import jax
  from configs import digits
  from rfd_jax import train
  from rfd_jax.models import resnet

  def tiny_model(model_config, task_sizes, **kw):
    del model_config
    return resnet.CifarResNet(task_sizes=tuple(task_sizes), stage_blocks=(1, 1, 1, 1),
                              widths=(4, 4, 4, 4), conv_dtype=kw.get("conv_dtype"))

  # where the run builds its model and its jitted steps: dfcil_run/steps now, train before
  import importlib
  owners = [importlib.import_module(m) for m in ("rfd_jax.dfcil_run", "rfd_jax.steps")
            if importlib.util.find_spec(m) is not None] + [train]
  for module in owners:
    if hasattr(module, "build_model"):
      module.build_model = lambda cfg, sizes, dtype="float32": tiny_model(cfg, sizes)
  calls: list[tuple[float, int]] = []  # (perf_counter, id of the step fn) per train-step call
  captured = {}
  for module in owners:
    if hasattr(module, "build_step_fns"):
      original = module.build_step_fns

      def build(*a, _original=original, **kw):
        fns = _original(*a, **kw)
        wrapped = {}
        for name in ("ce_step", "distill_main_step", "distill_finetune_step"):
          fn = getattr(fns, name)
          if fn is None:
            continue
          def timed(*call_args, _fn=fn, _name=name):
            calls.append((time.perf_counter(), _name))
            out = _fn(*call_args)
            captured[_name] = (_fn, call_args, out)
            return out
          wrapped[name] = timed
        return fns.__class__(**{**{f: getattr(fns, f) for f in fns.__dataclass_fields__},
                                **wrapped})
      module.build_step_fns = build
      break

  config = digits.get_config()
  config.method = args.method
  config.data.num_tasks = 2
  config.data.image_size = 8
  config.data.batch_size = 8
  config.optim.epochs = args.epochs
  config.optim.ft_epochs = 1
  config.optim.milestones = ()
  config.inversion.iterations = 4
  config.inversion.chunk_steps = 2
  config.ckpt.enabled = False
  config.log.progress = False
  config.log.images = False
  with tempfile.TemporaryDirectory() as workdir:
    train.train_and_evaluate(config, workdir)

  # Steady intervals: consecutive calls of the same step fn, skipping each fn's first 40 calls
  # (compilation, first epoch) and the gaps at epoch / phase ends (> 20× the median).
  intervals, seen = [], {}
  for (t0, n0), (t1, n1) in zip(calls, calls[1:]):
    seen[n0] = seen.get(n0, 0) + 1
    if n0 == n1 and seen[n0] > 40:
      intervals.append(t1 - t0)
  loop_s = statistics.median(intervals)
  intervals = [i for i in intervals if i < 20 * loop_s]
  loop_s = statistics.median(intervals)

  # The same step back to back: dispatch of N calls, then one wait.
  name = "distill_main_step" if "distill_main_step" in captured else "ce_step"
  fn, call_args, out = captured[name]
  state = out[0]
  jax.block_until_ready(state)
  for _ in range(20):  # warm
    state, _ = fn(state, *call_args[1:])
  jax.block_until_ready(state)
  reps = 200
  start = time.perf_counter()
  for _ in range(reps):
    state, _ = fn(state, *call_args[1:])
  jax.block_until_ready(state)
  bare_s = (time.perf_counter() - start) / reps
  print(f"overhead method={args.method} loop_us={loop_s * 1e6:.0f} bare_us={bare_s * 1e6:.0f} "
        f"added_us={(loop_s - bare_s) * 1e6:.0f} steps={len(intervals)} jax={jax.__version__} "
        f"repo={args.repo}")


if __name__ == "__main__":
  main()
