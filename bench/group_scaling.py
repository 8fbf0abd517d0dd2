r"""Images/s of a group of N runs stepped together (rfd_jax.jobs.dfcil, vmapped) against N.

  python bench/group_scaling.py [--config configs/digits.py] [--sizes 1,2,4,8] [--steps 20]
                                [--loop host|scan] [--kinds ce,distill] [--set field=value ...]

For each N, builds the group of N seeds (config.runs.seeds = 0..N-1) of the config's method and
times its jitted train functions on the run's device-resident data: the cross-entropy step of
task 1 and, for learners that distill, the distillation step of task 2 (teacher = the fresh
model, generator = a fresh one: the same work as in a run). `--loop host` calls one step at a time
(the CPU default), `--loop scan` a block of --steps steps. After one warm-up call (compilation),
--steps steps are timed with a wait at the end. Prints one line per (N, step):
`group N=<n> step=<ce|distill> img/s=<all runs> per_run_img/s=<...> ms/step=<...> speedup=<img/s
over N=1's>`; "speedup N" means N runs cost as much as one. N=1 runs the plain run's functions
(no vmap), as the job does for one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/digits.py")
  parser.add_argument("--sizes", default="1,2,4,8")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--loop", default="host", choices=("host", "scan"))
  parser.add_argument("--kinds", default="ce,distill", help="which steps to time")
  parser.add_argument("--set", action="append", default=[], help="field=value config override")
  args = parser.parse_args()
  # pylint: disable=g-import-not-at-top
  from rfd_jax.cli import xla_env
  xla_env.set_fast_cpu_flags()
  import importlib.util
  import jax
  import jax.numpy as jnp
  import numpy as np
  from rfd_jax.cli import config_validation
  from rfd_jax.jobs import dfcil, dfcil_run
  from rfd_jax.engine import parallel

  spec_ = importlib.util.spec_from_file_location("bench_config", args.config)
  module = importlib.util.module_from_spec(spec_)
  spec_.loader.exec_module(module)
  print(f"# {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} jax {jax.__version__} "
        f"{jax.devices()[0].device_kind} x{jax.device_count()}; {args.config} {args.set} "
        f"loop={args.loop} steps={args.steps}", flush=True)
  base = None
  for n in [int(s) for s in args.sizes.split(",")]:
    config = module.get_config()
    for item in args.set:
      key, value = item.split("=", 1)
      *path, field = key.split(".")
      node = config
      for p in path:
        node = node[p]
      node[field] = type(node[field])(value) if not isinstance(node[field], bool) else (
          value == "True")
    config.runs.seeds = ",".join(str(s) for s in range(n))
    config_validation.validate(config)
    mesh = parallel.job_mesh(batch_size=config.data.batch_size,
                         eval_batch_size=config.data.eval_batch_size)
    run = dfcil_run.load_run(config, "/nonexistent", mesh)
    rs = dfcil_run.RunState.fresh(run)
    job = dfcil.DfcilJob(run, rs, writer=None)
    for name, task in (("ce", 0), ("distill", 1)):
      if name not in args.kinds.split(",") or (task and not run.learner.uses_inversion):
        continue
      step_fn, hparams, distilling = job._hparams("main", task)  # pylint: disable=protected-access
      hparams = {**hparams, "lr": jnp.float32(0.01)}
      extra = ()
      if distilling:
        rs.teacher_vars = jax.tree.map(jnp.copy, rs.state.variables)
        rs.gen_state = run.new_generator(task)
        hparams["class_weights"] = run.ones_class_weights()
        extra = (rs.teacher_vars, rs.gen_state.variables)
      rows = job._epoch_rows(task, 0)  # pylint: disable=protected-access
      key = job._task_key(task)  # pylint: disable=protected-access
      epoch_steps = rows.shape[-2]  # rows: ([N,] steps, B), the run axis for N > 1
      per_call = min(args.steps, epoch_steps) if args.loop == "scan" else 1
      state = jax.tree.map(jnp.copy, rs.state)

      def call(state, j):
        return step_fn(per_call, state, run.train_data, rows, np.int32(j % epoch_steps), key,
                       np.int32(0), hparams, *extra)[0]
      state = jax.block_until_ready(call(state, 0))  # compile
      calls = max(args.steps // per_call, 1)
      start = time.perf_counter()
      for j in range(calls):
        state = call(state, (j * per_call) % max(epoch_steps - per_call + 1, 1))
      jax.block_until_ready(state)
      seconds = (time.perf_counter() - start) / (calls * per_call)
      images = n * config.data.batch_size / seconds
      base = base or {}
      base.setdefault(name, images)
      print(f"group N={n} step={name} img/s={images:.0f} per_run_img/s={images / n:.0f} "
            f"ms/step={seconds * 1e3:.1f} speedup={images / base[name]:.2f}", flush=True)


if __name__ == "__main__":
  main()
