r"""Host overhead of the real training loop: host time per train step around a network so small
that the device work is negligible.

  python bench/overhead.py [--method finetune|rfd] [--loop host|scan] [--host_fed] [--repo PATH]

Runs the class-incremental job in this process (`dfcil.train_and_evaluate`) on digits at 8 px,
batch 8, with a 1-block-per-stage, 4-channel ResNet in place of ResNet-32, and records every call
of the jitted train function from the loop (a step, or with `--loop scan` an epoch of steps):
  loop_us   wall time per step: the median interval between consecutive calls (after each
            function's first 40 steps: compilation, first epoch) divided by the steps per call;
  host_us   CPU time of the loop's thread per step over the same intervals: Python, batch
            gathering, transfers and dispatch (JAX dispatches asynchronously, so the device work,
            done by XLA's own threads, is not in it);
  bare_us   the same jitted call back to back (200 dispatches, one wait), per step.
`--host_fed` feeds batches gathered on the host every step (config.data.device_resident=False,
the only way before the device-resident data). `--repo PATH` measures another checkout (e.g. a
`git worktree` of an older commit), so one machine, one load and one command give the before/after
of a loop change. Output: one line, `overhead method=M loop_us=… host_us=… bare_us=… steps=…`.
"""

from __future__ import annotations

import argparse
import dataclasses
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
  parser.add_argument("--loop", default="host", choices=("host", "scan"),
                      help="config.optim.loop (scan: an epoch per call)")
  parser.add_argument("--host_fed", action="store_true",
                      help="batches gathered on the host every step (device_resident=False)")
  args = parser.parse_args()
  sys.path.insert(0, args.repo)
  os.chdir(args.repo)  # configs/ of that checkout
  # pylint: disable=g-import-not-at-top
  from rfd_jax.cli import xla_env
  xla_env.set_fast_cpu_flags()  # as rfd_jax.main does, before JAX starts
  import jax
  import jax.numpy as jnp
  from configs import digits
  from rfd_jax.jobs import dfcil
  from rfd_jax.models import resnet

  def tiny_model(model_config, task_sizes, **kw):
    del model_config
    return resnet.CifarResNet(task_sizes=tuple(task_sizes), stage_blocks=(1, 1, 1, 1),
                              widths=(4, 4, 4, 4), conv_dtype=kw.get("conv_dtype"))

  # where the run builds its model and its jitted steps: dfcil_run/steps now, train before
  import importlib
  owners = [importlib.import_module(m) for m in ("rfd_jax.jobs.dfcil_run", "rfd_jax.jobs.steps")
            if importlib.util.find_spec(m) is not None] + [dfcil]
  for module in owners:
    if hasattr(module, "build_model"):
      module.build_model = lambda cfg, sizes, dtype="float32": tiny_model(cfg, sizes)
  calls: list[tuple[float, float, str, int]] = []  # (wall, thread CPU time, fn, steps) per call
  captured = {}
  train_fns = ("ce_step", "distill_main_step", "distill_finetune_step", "ce_block",
               "distill_main_block", "distill_finetune_block")
  for module in owners:
    if hasattr(module, "build_step_fns"):
      original = module.build_step_fns

      def timed_fn(fn, name):
        def timed(*call_args):
          steps = call_args[0] if name.endswith("_block") else 1
          calls.append((time.perf_counter(), time.thread_time(), name, steps))
          out = fn(*call_args)
          if name not in captured:  # one copy (later outputs get donated to the next call)
            captured[name] = (fn, call_args, jax.tree.map(jnp.copy, out))
          return out
        return timed

      def build(*a, _original=original, **kw):
        fns = _original(*a, **kw)
        if isinstance(getattr(fns, "train", None), dict):  # StepFns.train_fn(kind, resident)
          train = {key: None if fn is None else timed_fn(fn, fns.train_name(*key))
                   for key, fn in fns.train.items()}
          return dataclasses.replace(fns, train=train)
        wrapped = {name: timed_fn(getattr(fns, name), name) for name in train_fns
                   if getattr(fns, name, None) is not None}  # before: one field per function
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
  config.optim.loop = args.loop  # (fields an older checkout does not have are ignored there)
  config.data.device_resident = not args.host_fed
  with tempfile.TemporaryDirectory() as workdir:
    dfcil.train_and_evaluate(config, workdir)

  # Steady intervals: consecutive calls of the same fn, skipping each fn's first 40 steps
  # (compilation, first epoch) and the gaps at epoch / phase ends (> 20x the median).
  wall, host, seen = [], [], {}
  for (t0, c0, n0, k0), (t1, c1, n1, _) in zip(calls, calls[1:]):
    seen[n0] = seen.get(n0, 0) + k0
    if n0 == n1 and seen[n0] > 40:
      wall.append((t1 - t0) / k0)
      host.append((c1 - c0) / k0)
  steady = [i for i, w in enumerate(wall) if w < 20 * statistics.median(wall)]
  loop_s = statistics.median(wall[i] for i in steady)
  host_s = statistics.median(host[i] for i in steady)

  # The same call back to back: dispatch of N calls, then one wait.
  name = max(captured, key=lambda n: ("distill_main" in n, n))
  fn, call_args, out = captured[name]
  steps_per_call = call_args[0] if name.endswith("_block") else 1
  at = 1 if name.endswith("_block") else 0  # where the state is in the arguments
  state = out[0]
  jax.block_until_ready(state)  # the fn's first output (a copy): the bare calls start there
  def call(state):
    return fn(*call_args[:at], state, *call_args[at + 1:])[0]
  for _ in range(20):  # warm
    state = call(state)
  jax.block_until_ready(state)
  reps = max(200 // steps_per_call, 10)
  start = time.perf_counter()
  for _ in range(reps):
    state = call(state)
  jax.block_until_ready(state)
  bare_s = (time.perf_counter() - start) / reps / steps_per_call
  print(f"overhead method={args.method} loop={args.loop}{' host_fed' if args.host_fed else ''} "
        f"loop_us={loop_s * 1e6:.0f} host_us={host_s * 1e6:.0f} bare_us={bare_s * 1e6:.0f} "
        f"steps={sum(calls[i][3] for i in steady)} fn={name} jax={jax.__version__} "
        f"repo={args.repo}")


if __name__ == "__main__":
  main()
