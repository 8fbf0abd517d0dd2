r"""Compiles a config's run for a TPU slice or a GPU without having one: memory per device and
whether it fits, flops, bytes and collectives per step, and a lower bound on the run's time.

  python -m rfd_jax.tools.aot --config configs/cifar100.py --target v5e:2x4 [--out DIR]
      [--config.<field>=<value> ...]

The run is built as `rfd_jax.main` builds it (same validation, plan, mesh over the target's devices,
shardings, optim.loop / inversion.loop resolved for the target's platform: scanned epochs and
inversion chunks on accelerators), from the dataset's known split sizes and image shape: no data,
no accelerator. Every jitted function the run calls is lowered and compiled by the target's own
compiler: the epoch blocks of each train phase (or the host-fed steps of streamed data), the
inversion chunk, the evaluation, the class weights; a group of runs (config.runs.*) compiles its
vmapped functions.

Targets: v5e:2x2, v5e:2x4 (v5e-8), v5e:4x4 (16 chips, 4 hosts), v4:2x2x1, v5p:2x2x1, v6e:2x2
(libtpu's deviceless compiler: requirements-tpu-compile.txt); h100, h100x8, h200 (the CUDA plugin with the
target descriptions in rfd_jax/tools/aot/gpu_targets/: requirements-gpu-compile.txt).

Per function: compile seconds; bytes per device (arguments, outputs, aliased, temporaries, code;
their live total) against the target's memory; flops and bytes accessed per step and per device
(XLA counts a scan body once: a block's figures are per step); collectives by kind with their bytes;
on GPU the kernels per step (fusions + custom calls). The projection: Σ units × max(flops ÷ peak
flops, bytes ÷ peak bandwidth) over the plan (targets.CHIPS gives the peaks and their sources),
a lower bound. XLA's GPU compiler reports no cost analysis: there the figures come from XLA:CPU's
compile of the same function on one device (the global batch), divided by the GPU count.

Exit status: 0 everything compiles and fits; 1 a function does not fit (one line each, with its
size, the target's memory and an override that helps); 2 a bad flag, config or target, or a missing
compiler plugin (one `error:` line naming the pip command).
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags
from ml_collections import config_flags

from rfd_jax.cli import usage, config_validation
from rfd_jax.tools.aot import targets
from rfd_jax.engine import errors

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.",
                                          lock_config=True)
_TARGET = flags.DEFINE_string(
    "target", None, "v5e:2x2 | v5e:2x4 | v5e:4x4 | v4:2x2x1 | v5p:2x2x1 | v6e:2x2 | h100 | h100x8 | "
    "h200")
_OUT = flags.DEFINE_string("out", None, "Directory for aot.json (optional).")
_CACHE = flags.DEFINE_string(
    "cache_dir", os.path.join(os.path.expanduser("~"), ".cache", "rfd_jax_aot"),
    "Where compiled functions' figures are kept between invocations, by target and program "
    "('' = nowhere).")
flags.mark_flags_as_required(["config", "target"])

EXIT_DOES_NOT_FIT = 1


def select_cpu_backend() -> None:
  """JAX's own backend is the CPU (the target's compiler is used through its topology only),
  libtpu does not ask the GCE metadata server for a TPU, and several compiling processes may load
  libtpu at once (its lockfile is for processes that own TPU chips). Before any backend starts."""
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_platforms", "cpu")


def job_calls(config, mesh):
  """(plan, calls, facts) of the config's job built over `mesh`: facts "num_tasks", "runs",
  "resident_bytes" (the device-resident train set on every device, 0 if host-fed)."""
  from rfd_jax.tools.aot import run_calls, job_calls  # pylint: disable=g-import-not-at-top
  if config_validation.job_of(config) != "dfcil":
    plan, calls = job_calls.job_calls(config, mesh)
    return plan, calls, {"num_tasks": 1, "runs": 1, "resident_bytes": 0}
  run, arrays = run_calls.build(config, mesh)
  images = run.train_data["images"] if run.train_data is not None else None
  return run.plan, run_calls.calls(run, arrays), {
      "num_tasks": run.spec.num_tasks, "runs": len(getattr(run, "members", None) or [None]),
      "resident_bytes": 0 if images is None else images.size * images.dtype.itemsize}


def fit_hint(report: dict, config, target) -> str:
  """An override that makes a function that does not fit smaller (the obvious one, if any)."""
  name, data = report["function"], config.data
  need = report["memory"]["total"] or 0
  scale = target.memory_per_device / need if need else 0.5
  def smaller(field, value):
    n = target.num_devices
    return f"--config.{field}={max(n, int(value * scale * 0.8) // n * n)}"
  if name.startswith("inversion"):
    return "try " + smaller("inversion.batch_size", config.inversion.batch_size)
  if name.startswith("eval"):
    return "try " + smaller("data.eval_batch_size", data.eval_batch_size)
  if name.startswith("class_weights"):
    return ""
  resident_bytes = report.get("resident_bytes", 0)
  if resident_bytes > target.memory_per_device / 2:
    return (f"the train set takes {resident_bytes / 2**30:.2f} GiB on every device: try "
            "--config.data.device_resident=False")
  return ("try " + smaller("data.batch_size", data.batch_size)
          + " (fewer runs per device for a group)")


def run_tool(config, target_name: str, out: str | None, cache_dir: str | None) -> int:
  """Compiles every function of the run for the target, prints the table, writes aot.json; returns
  the exit status (0 fits, 1 does not)."""
  import jax  # pylint: disable=g-import-not-at-top
  from rfd_jax.engine import parallel  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from rfd_jax.tools.aot import compiler, reporting, run_calls
  target = targets.load(target_name)
  job = config_validation.job_of(config)
  mesh = parallel.job_mesh(batch_size=config.data.batch_size,
                           eval_batch_size=config.data.eval_batch_size, devices=target.devices)
  plan, calls, facts = job_calls(config, mesh)
  twins = {}
  if target.chip.kind == "gpu":
    _, cpu_calls, _ = job_calls(run_calls.cpu_twin(config),
                                parallel.make_mesh(jax.devices("cpu")[:1]))
    twins = {c.name: c for c in cpu_calls}
  resident_bytes = facts["resident_bytes"]
  reports = []
  for call in calls:
    print(f"compiling {call.name} for {target_name} ...", file=sys.stderr, flush=True)
    report = compiler.compile_call(call, target, cache_dir)
    report["resident_bytes"] = resident_bytes if "_block" in call.name else 0
    if report.get("cost") is None and call.name in twins:
      counts, seconds = compiler.cpu_cost(twins[call.name], cache_dir)
      if counts:
        report["cost"] = {k: v / target.num_devices for k, v in counts.items()}
        report["cost_source"] = (f"XLA:CPU, one device, ÷ {target.num_devices}" if
                                 target.num_devices > 1 else "XLA:CPU, one device")
        report["cpu_compile_seconds"] = round(seconds, 1)
    reports.append(report)
  projection = compiler.projection(reports, peak_flops=target.peak_flops(config.dtype),
                                      bandwidth=target.bandwidth)
  result = reporting.result(config, target, job, plan, facts, reports, projection)
  print(reporting.table(result))
  if out:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "aot.json"), "w") as f:
      json.dump(result, f, indent=1)
  misfits = [r for r in reports if not r["fits"]]
  for r in misfits:
    hint = fit_hint(r, config, target)
    print(f"does not fit: {r['function']} needs {r['memory']['total'] / 2**30:.2f} GiB per device, "
          f"{target_name} has {target.memory_per_device / 2**30:.2f} GiB"
          + (f"; {hint}" if hint else ""), file=sys.stderr)
  return EXIT_DOES_NOT_FIT if misfits else 0


def main(argv):
  if len(argv) > 1:
    usage.fail(f"unexpected arguments {argv[1:]}; flags take the form --name=value.")
  try:
    targets.check_plugin(_TARGET.value)
  except targets.TargetError as e:
    usage.fail(str(e))
  select_cpu_backend()
  try:
    status = run_tool(_CONFIG.value, _TARGET.value, _OUT.value, _CACHE.value or None)
  except (errors.ConfigError, targets.TargetError) as e:
    usage.fail(str(e))
  sys.exit(status)

