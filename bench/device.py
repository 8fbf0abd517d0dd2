r"""The one-call device benchmark that bench/device.sh runs (see bench/RESULTS.md, "GPU").

  python -m bench.device [--cpu-tiny] [--out DIR] [--budget_s 440] [--stages versions,bench,e2e]
                         [--e2e_dtype float32]

Stages, each a subprocess with a time limit, all inside --budget_s (a stage that would overrun the
budget is cut or skipped, and says so; the end-to-end run keeps its share until it starts):
  versions  python, jax, jaxlib, flax, optax, orbax, chex, numpy, torch, the carried packages, the
            devices jax and torch see, nvidia-smi.
  bench     bench.step (the RFD main-phase train step) and bench.inversion (one inversion
            iteration) against bench/torch_reference.py, in float32 and bfloat16 (JAX: config.dtype
            = bfloat16: every convolution, the generator's too, in bf16; torch: autocast
            bfloat16), one line each: `<workload> jax=<img/s> torch=<img/s> ratio=<jax/torch>`,
            and a `peak_device_memory <workload> jax=... torch=...` line.
  group     bench/group_scaling.py: the RFD step of a group of 1 and of 5 runs (vmapped over runs)
            on the e2e stage's fake data: images/s and "5 runs = x times one run's time".
  e2e       a 2-task CIFAR-100-shaped RFD run of `python -m rfd_jax.main` (through bench.run_main,
            which adds the peak device memory) on a fake CIFAR-100 written by bench.fake_cifar100,
            with few epochs and inversion iterations: wall time, steps/s of each kind of step.
Then the projection of configs/cifar100.py's 10-task paper schedule (its steps counted from the
config with the training code's own rules) from the measured rates, in minutes.

--cpu-tiny: the same stages on CPU with tiny shapes and step counts (float32 only; torch skipped
if it is not installed), so that a test keeps the script working. Its numbers mean nothing.
Everything printed goes to stdout; with --out DIR also DIR/device_summary.txt (the same lines),
DIR/device_stages.txt (every stage's full output) and DIR/device_results.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR100_TRAIN_PER_CLASS = 500  # the real dataset's, for the paper schedule
GOAL_MINUTES = 15.0
GOAL_RATIO = 2.0
GROUP_SIZE = 5  # issue "vmap over runs": 5 runs for less than twice the time of one
WORKLOADS = {"rfd_step": "bench.step", "inversion_iter": "bench.inversion"}
JAX_DTYPE_FLAGS = {"f32": [], "bf16": ["--dtype", "bfloat16"]}  # config.dtype: every conv in bf16
TORCH_DTYPE_FLAGS = {"f32": [], "bf16": ["--amp", "bf16"]}


@dataclasses.dataclass(frozen=True)
class Mode:
  """Shapes, step counts and time caps (seconds) of one mode."""
  name: str
  image_size: int
  batch_size: int
  bench_steps: int
  dtypes: tuple[str, ...]
  torch_device: str
  torch_args: tuple[str, ...]
  e2e_train_per_class: int
  e2e_test_per_class: int
  e2e_overrides: dict[str, Any]
  caps: dict[str, float]
  child_env: dict[str, str]
  group_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
  group_loop: str = "scan"
  group_steps: int = 39


def gpu_mode(env: dict[str, str]) -> Mode:
  return Mode(
      name="gpu", image_size=32, batch_size=128, bench_steps=50, dtypes=("f32", "bf16"),
      torch_device="cuda", torch_args=(), e2e_train_per_class=100, e2e_test_per_class=20,
      # 2 tasks of 50 classes × 100 images: 5,000 training images per task, as in CIFAR-100 10×10.
      # Each phase gets >= 2 epochs and the inversion 3 chunks: the first (compiling) one is not in
      # the rates.
      # No image grids and plots (a compile and matplotlib: seconds, once per task).
      e2e_overrides={"data.num_tasks": 2, "optim.epochs": 6, "optim.ft_epochs": 3,
                     "optim.milestones": (),
                     "inversion.iterations": 300, "inversion.chunk_steps": 100,
                     "log.images": False},
      caps={"versions": 60, "jax": 100, "torch": 60, "fake_data": 40, "e2e": 180, "group": 90},
      child_env=dict(env), group_overrides={"data.num_tasks": 2}, group_loop="scan",
      group_steps=39)


def cpu_tiny_mode(env: dict[str, str]) -> Mode:
  env = dict(env, JAX_PLATFORMS="cpu")
  from rfd_jax.cli import xla_env  # pylint: disable=g-import-not-at-top
  xla_env.set_fast_cpu_flags(env)  # what rfd_jax.main does on CPU, for the benches too
  return Mode(
      name="cpu-tiny", image_size=16, batch_size=8, bench_steps=2, dtypes=("f32",),
      torch_device="cpu", torch_args=("--threads", "1", "--no_flops"), e2e_train_per_class=4,
      e2e_test_per_class=2,
      # resnet_tiny: one block per stage, so that CI compiles less (these numbers mean nothing)
      e2e_overrides={"data.num_tasks": 2, "data.batch_size": 32, "inversion.batch_size": 32,
                     "model.name": "resnet_tiny",
                     "optim.epochs": 2, "optim.ft_epochs": 1, "optim.milestones": (),
                     "inversion.iterations": 4,
                     "inversion.chunk_steps": 2, "log.images": False},
      caps={"versions": 120, "jax": 180, "torch": 120, "fake_data": 120, "e2e": 400,
            "group": 200},
      child_env=env, group_overrides={"data.num_tasks": 2, "data.batch_size": 32,
                                      "inversion.batch_size": 32, "model.name": "resnet_tiny"},
      group_loop="host", group_steps=2)


# ---- Step counts from the config, with the training code's own rules. ----------------------------


def cifar100_config(overrides: dict[str, Any] | None = None):
  """configs/cifar100.py's config with `{"field" or "group.field": value}` overrides applied."""
  from configs import cifar100  # pylint: disable=g-import-not-at-top
  config = cifar100.get_config()
  for key, value in (overrides or {}).items():
    *groups, field = key.split(".")
    node = config
    for group in groups:
      node = node[group]
    node[field] = value
  return config


def schedule(config, train_per_class: int) -> dict[str, int]:
  """Steps of each kind in a whole run of `config` with `train_per_class` training images per
  class: ce (task 0 of the distilling methods), distill_main and finetune (tasks >= 1) train steps,
  and inversion iterations, read off the run's plan (dfcil_run.make_plan) with steps per epoch from
  datasets.epoch_batches (the last partial batch is dropped), as the trainer runs them."""
  # pylint: disable-next=g-import-not-at-top
  from rfd_jax.cli import config_validation
  from rfd_jax.jobs import dfcil_run
  from rfd_jax.methods import learners
  from rfd_jax.data import datasets
  spec = config_validation.validate(config)
  learner = learners.get_learner(config)
  epoch_steps = [len(datasets.epoch_batches(spec.sizes[t] * train_per_class,
                                                  config.data.batch_size, seed=0, task=t, epoch=0))
                 for t in range(spec.num_tasks)]
  counts = {"ce": 0, "distill_main": 0, "finetune": 0, "inversion": 0}
  for segment in dfcil_run.make_plan(config, learner, epoch_steps).segments:
    distilling = learner.uses_inversion and segment.task > 0
    if segment.name == "inversion":
      counts["inversion"] += segment.num_steps
    elif segment.name in ("main", "finetune"):
      kind = "ce" if not distilling else ("distill_main" if segment.name == "main" else "finetune")
      counts[kind] += segment.num_steps
  return counts


def projected_seconds(counts: dict[str, int], rates: dict[str, float | None]) -> float | None:
  """Σ steps of each kind / its rate (steps or iterations per second); a train-step kind without
  a rate takes distill_main's. None if a needed rate is missing."""
  total = 0.0
  for kind, steps in counts.items():
    rate = rates.get(kind) or (rates.get("distill_main") if kind != "inversion" else None)
    if steps and not rate:
      return None
    total += steps / rate if steps else 0.0
  return total


# ---- Parsing the children's output. -------------------------------------------------------------


def _last_float(pattern: str, text: str) -> float | None:
  found = re.findall(pattern, text)
  return float(found[-1]) if found else None


def images_per_s(text: str) -> float | None:
  return _last_float(r"([0-9.]+) images/s", text)


def peak_device_mib(text: str) -> float | None:
  return _last_float(r"peak device memory ([0-9.]+) MiB", text)


EPOCH_LINE = re.compile(r"task (\d+)/\d+ (main|finetune)\s+epoch\s+(\d+)/(\d+) .*?([0-9.]+) img/s")
INVERSION_LINE = re.compile(r"inversion\s+(\d+)/(\d+) .*?([0-9.]+) it/s")


def e2e_rates(log: str, batch_size: int) -> dict[str, float | None]:
  """Steady rates from rfd_jax.main's progress lines: the last epoch of each kind of train phase
  (img/s / batch; the first epoch of a phase includes compiling) and the last inversion chunk's
  it/s (measured from the end of the first chunk)."""
  rates: dict[str, float | None] = {"ce": None, "distill_main": None, "finetune": None,
                                    "inversion": None}
  for task, phase, _, _, img_s in EPOCH_LINE.findall(log):
    kind = "finetune" if phase == "finetune" else ("ce" if task == "1" else "distill_main")
    rates[kind] = float(img_s) / batch_size
  inversion = INVERSION_LINE.findall(log)
  if inversion:
    rates["inversion"] = float(inversion[-1][2])
  return rates


# ---- Running the stages. ------------------------------------------------------------------------


class Runner:
  """Runs stages as subprocesses inside one time budget; collects output, lines and results."""

  def __init__(self, mode: Mode, budget_s: float, out_dir: str | None):
    self.mode, self.budget_s, self.out_dir = mode, budget_s, out_dir
    self.start = time.monotonic()
    self.reserved = 0.0  # seconds kept for later stages (the end-to-end run)
    self.lines: list[str] = []
    self.results: dict[str, Any] = {"mode": mode.name}
    self.stage_log = []

  def say(self, line: str) -> None:
    print(line, flush=True)
    self.lines.append(line)

  def left(self) -> float:
    return self.budget_s - (time.monotonic() - self.start)

  def run(self, name: str, cmd: list[str], cap: float, *,
          minimum: float = 10.0) -> tuple[str, bool]:
    """(output, ok): runs `cmd` for at most min(cap, budget left - reserved) seconds."""
    limit = min(cap, self.left() - self.reserved)
    if limit < minimum:
      self.say(f"# {name}: skipped, {max(self.left(), 0):.0f} s of the budget left")
      return "", False
    start = time.monotonic()
    try:
      proc = subprocess.run(cmd, cwd=REPO, env=self.mode.child_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=limit, check=False)
      output, status = proc.stdout, f"rc={proc.returncode}"
      ok = proc.returncode == 0
    except subprocess.TimeoutExpired as e:
      output = e.stdout if isinstance(e.stdout, str) else (e.stdout or b"").decode(errors="replace")
      status, ok = f"killed after its {limit:.0f} s limit", False
    seconds = time.monotonic() - start
    self.stage_log.append(f"===== {name} ({status}, {seconds:.1f} s): {' '.join(cmd)}\n{output}")
    self.say(f"# {name}: {status}, {seconds:.1f} s")
    if not ok:
      tail = "\n".join(output.strip().splitlines()[-5:])
      self.say("#   " + tail.replace("\n", "\n#   "))
    return output, ok

  def write_files(self) -> None:
    if not self.out_dir:
      return
    os.makedirs(self.out_dir, exist_ok=True)
    with open(os.path.join(self.out_dir, "device_summary.txt"), "w") as f:
      f.write("\n".join(self.lines) + "\n")
    with open(os.path.join(self.out_dir, "device_stages.txt"), "w") as f:
      f.write("\n".join(self.stage_log))
    with open(os.path.join(self.out_dir, "device_results.json"), "w") as f:
      json.dump(self.results, f, indent=1, default=str)


VERSIONS_SCRIPT = r"""
import importlib.metadata as md, platform, sys
def v(name):
  try:
    return md.version(name)
  except md.PackageNotFoundError:
    return "-"
print("python", platform.python_version(), sys.executable)
print("packages", " ".join(f"{n}={v(n)}" for n in (
    "jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax", "orbax-checkpoint",
    "chex", "numpy", "etils", "protobuf", "ml-collections", "tensorflow-datasets", "array-record",
    "tensorboardX", "torch")))
import jax
print("jax devices", jax.default_backend(), jax.devices(), jax.devices()[0].device_kind)
import rfd_jax.jobs.dfcil, rfd_jax.main, tensorboardX  # everything the runs import
print("imports ok")
try:
  import torch
except ImportError:
  print("torch not installed")
else:
  cuda = torch.cuda.is_available()
  print("torch", torch.__version__, "cuda", torch.version.cuda, "available", cuda,
        torch.cuda.get_device_name(0) if cuda else "")
"""


def stage_versions(runner: Runner) -> bool:
  output, ok = runner.run("versions", [sys.executable, "-c", VERSIONS_SCRIPT],
                          runner.mode.caps["versions"])
  for line in output.splitlines():
    if line.startswith(("python ", "packages ", "jax devices", "torch", "imports ok")):
      runner.say("# " + line)
  if shutil.which("nvidia-smi"):
    smi, _ = runner.run("nvidia-smi", ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,"
                                       "clocks.sm,clocks.max.sm,temperature.gpu,power.draw",
                                       "--format=csv"], 30, minimum=1)
    for line in smi.strip().splitlines():
      runner.say("# nvidia-smi: " + line)
  else:
    runner.say("# nvidia-smi: not found")
  runner.results["versions"] = output
  return ok


def torch_available(runner: Runner) -> bool:
  """Whether torch imports under the children's python (decided without importing it here)."""
  proc = subprocess.run([sys.executable, "-c", "import torch"], cwd=REPO, env=runner.mode.child_env,
                        capture_output=True, check=False)
  return proc.returncode == 0


def stage_bench(runner: Runner) -> None:
  mode = runner.mode
  have_torch = torch_available(runner)
  if not have_torch:
    runner.say("# torch not installed: the torch side is skipped (torch=n/a)")
  common = ["--image_size", str(mode.image_size), "--batch_size", str(mode.batch_size),
            "--steps", str(mode.bench_steps)]
  bench: dict[str, Any] = {}
  runner.say(f"# bench: {mode.image_size} px, batch {mode.batch_size}, median of "
             f"{mode.bench_steps} steps; images/s")
  for workload, module in WORKLOADS.items():
    for dtype in mode.dtypes:
      key = f"{workload}_{dtype}"
      jax_out, _ = runner.run(f"{key} jax", [sys.executable, "-m", module, *common,
                                             *JAX_DTYPE_FLAGS[dtype]], mode.caps["jax"])
      torch_out = ""
      if have_torch:
        torch_out, _ = runner.run(
            f"{key} torch",
            [sys.executable, "bench/torch_reference.py", "--workload", workload, *common,
             "--device", mode.torch_device, *mode.torch_args, *TORCH_DTYPE_FLAGS[dtype]],
            mode.caps["torch"])
      jax_rate, torch_rate = images_per_s(jax_out), images_per_s(torch_out)
      r = bench[key] = {"jax_images_per_s": jax_rate, "torch_images_per_s": torch_rate,
                        "jax_peak_device_mib": peak_device_mib(jax_out),
                        "torch_peak_device_mib": peak_device_mib(torch_out)}
      runner.results["bench"] = bench
      ratio = f"{jax_rate / torch_rate:.2f}" if jax_rate and torch_rate else "n/a"
      runner.say(f"{key} jax={_fmt(jax_rate)} torch={_fmt(torch_rate)} ratio={ratio}")
      runner.say(f"peak_device_memory {key} jax={_fmt(r['jax_peak_device_mib'], ' MiB')} "
                 f"torch={_fmt(r['torch_peak_device_mib'], ' MiB')}")


def _fmt(value: float | None, unit: str = "") -> str:
  return "n/a" if value is None else f"{value:.1f}{unit}"


def stage_e2e(runner: Runner, workdir: str) -> None:
  mode = runner.mode
  data_dir, run_dir = os.path.join(workdir, "data"), os.path.join(workdir, "run")
  runner.reserved = 0.0
  _, ok = runner.run("fake_data", [sys.executable, "-m", "bench.fake_cifar100", "--data_dir",
                                   data_dir, "--train_per_class", str(mode.e2e_train_per_class),
                                   "--test_per_class", str(mode.e2e_test_per_class)],
                     mode.caps["fake_data"])
  if not ok:
    runner.say("e2e_2task failed: no data")
    return
  overrides = dict(mode.e2e_overrides, **{"data.data_dir": data_dir})
  flags = [f"--config.{key}={value}" for key, value in overrides.items()]
  start = time.monotonic()
  log, ok = runner.run("e2e", [sys.executable, "-m", "bench.run_main", "--config",
                               "configs/cifar100.py", "--workdir", run_dir, *flags],
                       mode.caps["e2e"], minimum=30)
  process_s = time.monotonic() - start
  config = cifar100_config(overrides)
  counts = schedule(config, mode.e2e_train_per_class)
  rates = e2e_rates(log, config.data.batch_size)
  results_path = os.path.join(run_dir, "results.json")
  wall = None
  if ok and os.path.exists(results_path):
    with open(results_path) as f:
      wall = json.load(f).get("wall_seconds")
  steady = projected_seconds(counts, rates)
  e2e = {"ok": ok, "wall_seconds": wall, "process_seconds": process_s, "counts": counts,
         "rates": rates, "steady_seconds": steady, "peak_device_mib": peak_device_mib(log),
         "overrides": overrides}
  runner.results["e2e"] = e2e
  train_steps = counts["ce"] + counts["distill_main"] + counts["finetune"]
  runner.say(
      f"e2e_2task {'ok' if ok else 'FAILED'} wall={_fmt(wall, 's')} process={process_s:.1f}s "
      f"train_steps={train_steps} inversion_its={counts['inversion']} "
      f"steps/s={_fmt(train_steps / wall if wall else None)} (all steps over the whole wall time, "
      f"compiles included)")
  runner.say("e2e_rates " + " ".join(f"{k}={_fmt(v)}" for k, v in rates.items())
             + " (steps/s; inversion it/s; steady: last epoch / chunk)")
  if wall and steady is not None:
    runner.say(f"e2e_overhead {wall - steady:.1f}s (wall minus the steps at their steady rates: "
               f"compiles, data loading, evaluation, checkpoints, plots)")
  runner.say(f"peak_device_memory e2e_2task jax={_fmt(peak_device_mib(log), ' MiB')}")


def stage_group(runner: Runner, workdir: str) -> None:
  """bench/group_scaling.py on the e2e stage's fake CIFAR-100: the RFD distillation step of a
  group of 1 and of GROUP_SIZE runs (vmapped), scanned over an epoch; goal: GROUP_SIZE runs in
  less than twice the time of one."""
  mode = runner.mode
  data_dir = os.path.join(workdir, "data")
  if not os.path.isdir(data_dir):
    runner.say("group skipped: no fake data (the e2e stage did not run)")
    return
  sets = {**mode.group_overrides, "data.data_dir": data_dir}
  log, ok = runner.run("group", [sys.executable, "bench/group_scaling.py", "--config",
                                 "configs/cifar100.py", "--sizes", f"1,{GROUP_SIZE}", "--kinds",
                                 "distill", "--loop", mode.group_loop, "--steps",
                                 str(mode.group_steps),
                                 *[f"--set={k}={v}" for k, v in sets.items()]],
                       mode.caps["group"], minimum=30)
  lines = [line for line in log.splitlines() if line.startswith("group N=")]
  for line in lines:
    runner.say(line)
  speedups = [float(m.group(1)) for m in re.finditer(rf"group N={GROUP_SIZE} .*speedup=([\d.]+)",
                                                     log)]
  if speedups:
    # N runs at speedup s cost N/s times one run
    runner.say(f"group_cost {GROUP_SIZE} runs = {GROUP_SIZE / speedups[-1]:.2f} x one run's "
               f"time; goal < 2: {'yes' if GROUP_SIZE / speedups[-1] < 2 else 'no'}")
  runner.results["group"] = {"ok": ok, "lines": lines}


def stage_projection(runner: Runner) -> None:
  config = cifar100_config()
  counts = schedule(config, CIFAR100_TRAIN_PER_CLASS)
  runner.results["paper_schedule"] = counts
  train_steps = counts["ce"] + counts["distill_main"] + counts["finetune"]
  runner.say(f"paper_schedule cifar100 {config.data.num_tasks} tasks: train_steps={train_steps} "
             f"(ce {counts['ce']}, distill_main {counts['distill_main']}, finetune "
             f"{counts['finetune']}) inversion_its={counts['inversion']} "
             f"(configs/cifar100.py, batch {config.data.batch_size})")
  projections = {}
  e2e = runner.results.get("e2e")
  if e2e and e2e.get("steady_seconds") is not None:
    steady = projected_seconds(counts, e2e["rates"])
    overhead = max((e2e["wall_seconds"] or 0.0) - e2e["steady_seconds"], 0.0)
    projections["e2e"] = (steady + overhead) / 60
  bench = runner.results.get("bench", {})
  batch = runner.mode.batch_size
  for dtype in runner.mode.dtypes:
    step, inv = (bench.get(f"{w}_{dtype}", {}).get("jax_images_per_s") for w in WORKLOADS)
    if step and inv:  # every train step at the RFD step's rate (an upper bound), no overhead
      seconds = projected_seconds(counts, {"distill_main": step / batch, "inversion": inv / batch})
      projections[f"bench_{dtype}"] = seconds / 60
  runner.results["projection_minutes"] = projections
  if not projections:
    runner.say("projection n/a (no rates measured)")
  for source, minutes in projections.items():
    how = ("e2e steady rates per kind of step + the 2-task run's overhead"
           if source == "e2e" else "every train step at the bench RFD step's rate")
    runner.say(f"projection {source} {minutes:.1f} min ({how}); goal < {GOAL_MINUTES:.0f} min: "
               f"{'yes' if minutes < GOAL_MINUTES else 'no'}")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cpu-tiny", action="store_true", help="tiny shapes on CPU (for tests)")
  parser.add_argument("--out", default=os.environ.get("OUT") or None,
                      help="also write the summary, every stage's output and a JSON here "
                           "(default: $OUT if set)")
  parser.add_argument("--budget_s", type=float, default=None,
                      help="time for all stages (default: 440 on GPU, 900 in --cpu-tiny)")
  parser.add_argument("--stages", default="versions,bench,e2e,group")
  parser.add_argument("--e2e_dtype", default="float32", choices=("float32", "bfloat16"),
                      help="config.dtype of the 2-task run (default: the config's float32)")
  args = parser.parse_args(argv)
  # The children get the caller's environment. This process only counts steps and must never take
  # the accelerator: JAX would preallocate most of its memory while the benchmarks run.
  child_env = dict(os.environ)
  os.environ["JAX_PLATFORMS"] = "cpu"
  mode = cpu_tiny_mode(child_env) if args.cpu_tiny else gpu_mode(child_env)
  if args.e2e_dtype != "float32":
    mode = dataclasses.replace(mode, e2e_overrides={**mode.e2e_overrides, "dtype": args.e2e_dtype})
  budget = args.budget_s or (900.0 if args.cpu_tiny else 440.0)
  stages = set(args.stages.split(","))
  runner = Runner(mode, budget, args.out)
  runner.say(f"# bench.device mode {mode.name}, budget {budget:.0f} s, stages {args.stages}, "
             f"e2e dtype {args.e2e_dtype}, "
             f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
  if "e2e" in stages:  # kept for the end-to-end run until it starts
    runner.reserved = mode.caps["fake_data"] / 2 + mode.caps["e2e"]
  with tempfile.TemporaryDirectory(prefix="rfd_jax_device_") as workdir:
    try:
      if "versions" in stages:
        stage_versions(runner)
      if "bench" in stages:
        stage_bench(runner)
      if "e2e" in stages:
        stage_e2e(runner, workdir)
      if "group" in stages:
        stage_group(runner, workdir)
      stage_projection(runner)
      results = [line for line in runner.lines if not line.startswith("#")]
      runner.say("# ---- summary (the lines above again) ----")
      for line in results:
        runner.say(line)
      runner.say(f"# done in {time.monotonic() - runner.start:.0f} s (goal: ratio >= "
                 f"{GOAL_RATIO:.0f} on the bench lines, projection < {GOAL_MINUTES:.0f} min)")
    finally:
      runner.write_files()
  return 0


if __name__ == "__main__":
  sys.exit(main())
