"""rfd_jax.tools.aot compiling a tiny run for a TPU slice (libtpu, deviceless) and an H100 (the CUDA
plugin): every function of the plan compiles, the report's fields, the projection's arithmetic, and
a config that does not fit. Needs the compilers (requirements-tpu-compile.txt,
requirements-gpu-compile.txt), installed in CI's second virtualenv: next to the CPU jax they change
plain runs (README "Tests"). The full-size configs are `slow` tests."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("libtpu",
                    reason="the TPU compiler: pip install -r requirements-tpu-compile.txt")
pytest.importorskip("jax_plugins.xla_cuda12",
                    reason="the CUDA plugin: pip install -r requirements-gpu-compile.txt")

from rfd_jax.tools.aot import targets  # pylint: disable=g-import-not-at-top,wrong-import-position

TINY = ("--config=configs/digits.py", "--config.model.name=resnet_tiny",
        "--config.data.image_size=8", "--config.data.num_tasks=2", "--config.optim.epochs=2",
        "--config.optim.ft_epochs=1", "--config.optim.milestones=()",
        "--config.inversion.iterations=20",
        "--config.inversion.chunk_steps=10", "--config.inversion.batch_size=16",
        "--config.data.batch_size=16", "--config.data.eval_batch_size=64")
FUNCTIONS = {"ce_block", "distill_main_block", "distill_finetune_block", "inversion_chunk",
             "eval_step", "class_weights"}
# inversion batch of 2M 8-px images: ~25 GiB per v5e chip of 4, ~100 GiB on one H100
OVERSIZED = ("--config.inversion.batch_size=2097152",)


def _tool(out, cache, target, *flags, config=TINY):
  return subprocess.run([sys.executable, "-m", "rfd_jax.tools.aot", *config, *flags,
                         f"--target={target}", f"--out={out}", f"--cache_dir={cache}"],
                        capture_output=True, text=True, check=False)


@pytest.fixture(scope="module", name="cache")
def _cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("aot_cache"))


@pytest.fixture(scope="module", name="tiny", params=["v5e:2x2", "h100"])
def _tiny(request, tmp_path_factory, cache):
  out = tmp_path_factory.mktemp("aot")
  proc = _tool(out, cache, request.param)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(out, "aot.json")) as f:
    return request.param, json.load(f), proc.stdout


def test_every_function_of_the_plan_compiles_and_fits(tiny):
  target, result, stdout = tiny
  assert {r["function"].split(":")[0] for r in result["functions"]} == FUNCTIONS
  assert result["fits"] and result["plan"]["train_loop"] == "scan"
  assert result["target"]["devices"] == (4 if target == "v5e:2x2" else 1)
  for r in result["functions"]:
    assert r["fits"] and r["compile_seconds"] >= 0
    m = r["memory"]
    assert set(m) == {"arguments", "outputs", "aliased", "temporaries", "code", "total"}
    assert m["total"] == m["arguments"] + m["outputs"] - m["aliased"] + m["temporaries"] + m["code"]
    assert 0 < m["total"] < result["target"]["memory_per_device"]
    assert r["cost"]["flops"] > 0 and r["cost"]["bytes"] > 0
    assert r["units"] > 0
    assert r["function"].split(":")[0] in stdout
  blocks = [r for r in result["functions"] if "_block" in r["function"]]
  assert all(r["steps_per_call"] == int(r["function"].split(":")[1]) > 1 for r in blocks)
  if target == "v5e:2x2":  # data parallel over 4 chips: gradients and BN statistics all-reduced
    assert all(r["collectives"]["all-reduce"]["count"] > 0 for r in blocks)
    assert all(r["cost_source"] == "target compiler" for r in result["functions"])
  else:  # one GPU: no collectives; kernels counted; figures from XLA:CPU (no GPU cost analysis)
    assert all(not r["collectives"] for r in result["functions"])
    assert all(r["kernels_per_step"] > 0 for r in result["functions"])
    assert all(r["cost_source"] == "XLA:CPU, one device" for r in result["functions"])


def test_projection_matches_a_hand_computation(tiny):
  _, result, _ = tiny
  peak, bandwidth = result["target"]["peak_flops"], result["target"]["bandwidth"]
  seconds = 0.0
  for r in result["functions"]:
    flops, nbytes = r["cost"]["flops"], r["cost"]["bytes"]
    seconds += r["units"] * max(flops / peak, nbytes / bandwidth)
  assert result["projection"]["minutes"] == pytest.approx(seconds / 60, rel=1e-9)
  chip = targets.CHIPS["v5e" if result["target"]["name"].startswith("v5e") else "h100"]
  assert (peak, bandwidth) == (chip.peak_flops_f32, chip.bandwidth)


@pytest.mark.parametrize("target", ["v5e:2x2", "h100"])
def test_a_function_that_does_not_fit_is_named_with_an_override(tmp_path, cache, target):
  proc = _tool(tmp_path, cache, target, *OVERSIZED)
  assert proc.returncode == 1, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("does not fit:")]
  assert len(lines) == 1
  assert lines[0].startswith("does not fit: inversion_chunk needs ")
  assert "--config.inversion.batch_size=" in lines[0]
  with open(tmp_path / "aot.json") as f:
    result = json.load(f)
  misfit = [r for r in result["functions"] if not r["fits"]]
  assert [r["function"] for r in misfit] == ["inversion_chunk"]
  assert misfit[0]["memory"]["total"] > result["target"]["memory_per_device"]


@pytest.mark.slow
@pytest.mark.parametrize("target", ["v5e:2x4", "h100"])
def test_the_cifar100_paper_config_fits(tmp_path, target):
  """The Done-when of issue 26 (~10-20 minutes each on 2 cores)."""
  proc = _tool(tmp_path, str(tmp_path / "cache"), target, config=("--config=configs/cifar100.py",))
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "aot.json") as f:
    result = json.load(f)
  assert result["fits"] and result["projection"]["minutes"] > 0
