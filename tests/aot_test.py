"""rfd_jax.tools.aot without the accelerator compilers: the calls it compiles are the ones a run
makes, XLA's scan-body-once counting it relies on, the projection's arithmetic, HLO parsing, target
errors. The compiles for TPU and GPU themselves: tests/aot_compile_test.py (needs the extras)."""

import math
import subprocess
import sys

import jax
import numpy as np
import pytest

from rfd_jax.jobs import dfcil_run, steps, dfcil
from rfd_jax.engine import parallel
from rfd_jax.tools.aot import run_calls, compiler, targets
from tests.train_test import tiny_config


def _mesh(config):
  return parallel.job_mesh(batch_size=config.data.batch_size,
                           eval_batch_size=config.data.eval_batch_size)


def _scan_config():
  """The tiny rfd run with the loops an accelerator resolves: scanned epochs and inversion
  chunks."""
  config = tiny_config("rfd")
  config.data.num_tasks = 2
  config.optim.epochs, config.optim.ft_epochs = 2, 1
  config.optim.milestones = ()  # a milestone must lie inside the 1-epoch main phase
  config.optim.loop, config.inversion.loop = "scan", "scan"
  config.ckpt.enabled = False
  return config


def _signature(args) -> tuple:
  leaves, treedef = jax.tree.flatten(args)
  return str(treedef), tuple((tuple(np.shape(x)), str(x.dtype)) for x in leaves)


class _Recorder:
  """A jitted function of StepFns that logs (name, static args, argument shapes) per call."""

  def __init__(self, name, fn, log):
    self.name, self.fn, self.log = name, fn, log

  def __call__(self, *args):
    static = args[:1] if self.name.endswith("_block") else ()
    self.log.add((self.name, static, _signature(args[len(static):])))
    return self.fn(*args)


def test_the_tool_compiles_the_calls_a_run_makes(tmp_path, monkeypatch):
  log = set()
  build = steps.build_step_fns

  def recording(*args, **kwargs):
    fns = build(*args, **kwargs)
    wrap = lambda name, fn: None if fn is None else _Recorder(name, fn, log)
    return steps.StepFns(
        train={k: wrap(steps.StepFns.train_name(*k), fn) for k, fn in fns.train.items()},
        eval_step=wrap("eval_step", fns.eval_step),
        inversion_chunk=wrap("inversion_chunk", fns.inversion_chunk),
        class_weights=wrap("class_weights", fns.class_weights))
  monkeypatch.setattr(steps, "build_step_fns", recording)
  config = _scan_config()
  dfcil.train_and_evaluate(config, str(tmp_path))
  monkeypatch.setattr(steps, "build_step_fns", build)

  run, arrays = run_calls.build(config, _mesh(config))
  calls = run_calls.calls(run, arrays)
  static = lambda c: c.args[:1] if ":" in c.name else ()
  compiled = {(c.name.split(":")[0], static(c), _signature(c.args[len(static(c)):]))
              for c in calls}
  assert {name for name, _, _ in log} == {
      "ce_block", "distill_main_block", "distill_finetune_block", "inversion_chunk", "eval_step",
      "class_weights"}
  assert compiled == log
  # units: every train step, inversion iteration and eval batch of the plan
  units = {c.name.split(":")[0]: c.units for c in calls}
  train_steps = sum(s.num_steps for s in run.plan.segments if s.name in ("main", "finetune"))
  assert units["ce_block"] + units["distill_main_block"] + units["distill_finetune_block"] == (
      train_steps)
  assert units["inversion_chunk"] == config.inversion.iterations
  seen = [int(np.sum(run.test_labels < run.spec.num_seen(t))) for t in range(2)]
  assert units["eval_step"] == sum(math.ceil(n / config.data.eval_batch_size) for n in seen)


def test_a_group_builds_its_vmapped_calls():
  config = _scan_config()
  config.runs.class_orders = "seed0,seed1"
  run, arrays = run_calls.build(config, _mesh(config))
  calls = {c.name.split(":")[0]: c for c in run_calls.calls(run, arrays)}
  block = calls["distill_main_block"]
  assert block.args[1].step.shape == (2,)  # the state's leading run axis
  assert block.args[3].shape[0] == 2  # each run's batch rows
  lowered = block.lower()  # the group's jitted function, vmapped
  assert "while" in lowered.as_text()


def test_xla_counts_a_scan_body_once():
  """The projection takes a scanned block's cost analysis as one step's: check that XLA reports
  about the same flops for a block of K steps as for one step."""
  config = _scan_config()
  run, arrays = run_calls.build(config, _mesh(config))
  block = next(c for c in run_calls.calls(run, arrays) if c.name.startswith("ce_block"))
  k = block.args[0]
  assert k > 1
  one = compiler.cost(run.fns.train_fn("ce", True).lower(1, *block.args[1:]).compile())
  many = compiler.cost(block.lower().compile())
  assert 0.9 < many["flops"] / one["flops"] < 1.5


def test_projection_is_units_times_the_roofline_time():
  reports = [{"function": "a", "units": 100, "cost": {"flops": 2e12, "bytes": 1e9}},
             {"function": "b", "units": 10, "cost": {"flops": 1e9, "bytes": 8e9}},
             {"function": "c", "units": 5, "cost": None}]
  p = compiler.projection(reports, peak_flops=1e15, bandwidth=1e12)
  # a: max(2 ms, 1 ms) × 100 = 0.2 s (compute); b: max(1 µs, 8 ms) × 10 = 0.08 s (memory)
  assert p["minutes"] == pytest.approx((0.2 + 0.08) / 60)
  assert [r["bound"] for r in p["functions"]] == ["compute", "memory"]


def test_collectives_and_kernels_from_hlo_text():
  hlo = """HloModule m
%fused_computation (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  %x = f32[4]{0} fusion(f32[4]{0} %p), kind=kLoop, calls=%inner
}
ENTRY %main (a: f32[16,8]) -> f32[16,8] {
  %a = f32[16,8]{1,0} parameter(0)
  %ar = f32[16,8]{1,0} all-reduce(f32[16,8]{1,0} %a), replica_groups={}, to_apply=%add
  %s = (f32[2]{0}, f32[8]{0}) all-gather-start(f32[2]{0} %b), dimensions={0}
  %d = f32[8]{0} all-gather-done((f32[2]{0}, f32[8]{0}) %s)
  %f = f32[16,8]{1,0} fusion(f32[16,8]{1,0} %ar), kind=kLoop, calls=%fused_computation
  %c = (f32[16,8]{1,0}, s8[0]{0}) custom-call(f32[16,8]{1,0} %f), custom_call_target="__cudnn$conv"
}"""
  assert compiler.collectives(hlo) == {"all-reduce": {"count": 1, "bytes": 16 * 8 * 4},
                                          "all-gather": {"count": 1, "bytes": 8 * 4}}
  assert compiler.gpu_kernels(hlo) == 2  # the entry's fusion and custom call, not the inner one
  oom = compiler.out_of_memory(
      "RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space hbm. "
      "Used 20.50G of 15.75G hbm. Exceeded hbm capacity by 4.75G.")
  assert oom["required_bytes"] == int(20.5 * 2**30)


def test_abstract_datasets_have_the_known_split_sizes():
  config = tiny_config()
  for name, train_n, test_n, lazy in (("cifar100", 50_000, 10_000, False),
                                      ("tiny_imagenet", 100_000, 10_000, False),
                                      ("imagenet100", 130_000, 5_000, True)):
    config.data.dataset, config.data.image_size = name, 32
    data = run_calls.abstract_dataset(config.data)
    assert (len(data.train_labels), len(data.test_labels)) == (train_n, test_n)
    assert data.train_images.shape == (train_n, 32, 32, 3)
    assert isinstance(data.train_images, np.ndarray) != lazy  # lazy: host-fed, as the real loader


def test_scan_resolves_on_accelerator_platforms_only():
  config = _scan_config()
  config.optim.loop = "auto"
  assert dfcil_run.train_loop(config, True, "tpu") == "scan"
  assert dfcil_run.train_loop(config, True, "gpu") == "scan"
  assert dfcil_run.train_loop(config, True, "cpu") == "host"
  assert dfcil_run.train_loop(config, False, "tpu") == "host"


def test_the_gpu_counts_twin_upsamples_as_the_gpu_does():
  """GPU programs get XLA:CPU's byte counts from a CPU twin of the config: its generator must be
  the GPU's ("auto" resolves to the upsampled convolution there, to phases on CPU)."""
  config = _scan_config()
  twin = run_calls.cpu_twin(config)
  assert (config.inversion.upsample, twin.inversion.upsample) == ("auto", "repeat")
  cpu = parallel.make_mesh(jax.devices("cpu")[:1])
  assert not dfcil_run.parts_of(twin, cpu).generator.upsample_phases
  assert dfcil_run.parts_of(config, cpu).generator.upsample_phases
  config.inversion.upsample = "phases"
  assert run_calls.cpu_twin(config).inversion.upsample == "phases"


def _tool(*flags):
  return subprocess.run([sys.executable, "-m", "rfd_jax.tools.aot", "--config=configs/digits.py",
                         *flags], capture_output=True, text=True, check=False)


def test_a_bad_target_is_one_error_line():
  proc = _tool("--target=v5e:3x3")
  assert proc.returncode == 2
  assert proc.stderr.startswith("error: --target='v5e:3x3' is unknown; expected one of v5e:2x2")
  assert len(proc.stderr.strip().splitlines()) == 1


def test_a_missing_compiler_names_its_pip_command(monkeypatch):
  real = targets.importlib.util.find_spec

  def find_spec(name):
    if name == "jax_plugins.xla_cuda12":  # as without any jax plugin: the parent is missing
      raise ModuleNotFoundError("No module named 'jax_plugins'")
    return None if name == "libtpu" else real(name)
  monkeypatch.setattr(targets.importlib.util, "find_spec", find_spec)
  with pytest.raises(targets.TargetError, match="pip install -r requirements-tpu-compile.txt"):
    targets.check_plugin("v5e:2x4")
  with pytest.raises(targets.TargetError, match="pip install -r requirements-gpu-compile.txt"):
    targets.check_plugin("h100x8")


def test_gpu_target_descriptions_ship_with_the_package():
  for chip in ("h100", "h200"):
    text = targets.gpu_target_config(chip)
    assert "device_memory_size: %d" % targets.CHIPS[chip].memory_bytes in text
    assert "cuda_compute_capability" in text and "dnn_version_info" in text


@pytest.mark.parametrize("name", ["teacher_digits", "dfkd_digits"])
def test_teacher_and_dfkd_jobs_lower_their_calls(name):
  """The teacher and dfkd jobs' own functions (built by the jobs' build_fns), on an abstract
  teacher: every call lowers with the shapes the plan feeds it."""
  from configs import dfkd_digits, teacher_digits  # pylint: disable=g-import-not-at-top
  from rfd_jax.tools.aot import job_calls  # pylint: disable=g-import-not-at-top
  config = {"teacher_digits": teacher_digits, "dfkd_digits": dfkd_digits}[name].get_config()
  config.model.name = "wrn16_1"
  plan, calls = job_calls.job_calls(config, _mesh(config))
  expected = ({"train_step", "eval_step"} if name == "teacher_digits" else
              {"synth_init", "draw_targets", "synthesis_step", "quantize", "student_step",
               "eval_step"})  # CPU resolves synthesis.loop=auto to the host loop
  assert {c.name for c in calls} == expected
  for call in calls:
    assert call.units > 0
    call.lower()
  train_steps = sum(s.num_steps for s in plan.segments if s.name in ("train", "student"))
  assert train_steps == sum(c.units for c in calls if c.name in ("train_step", "student_step"))
