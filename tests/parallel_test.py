"""Tests for rfd_jax.engine.parallel: sharded steps on 8 simulated CPU devices, 2-process runs through
jax.distributed (gloo on localhost), batch slicing per process, and the distributed-init switch.

Multi-device and multi-process checks run in subprocesses (tests/parallel_checks.py, the CLI), since
the device count is fixed when jax is first imported.
"""

import json
import os
import socket
import subprocess
import sys
import types

import numpy as np
import pytest

from rfd_jax.engine import parallel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKS = os.path.join(REPO, "tests", "parallel_checks.py")
TOLERANCE = 1e-5


def _env(**extra) -> dict:
  """This environment minus anything that changes devices or distribution, plus `extra`."""
  env = {k: v for k, v in os.environ.items()
         if k != "XLA_FLAGS" and not k.startswith("RFD_JAX_")}
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env["JAX_PLATFORMS"] = "cpu"
  env.update(extra)
  return env


def _results(stdout: str) -> dict:
  lines = [l for l in stdout.splitlines() if l.startswith("RESULTS ")]
  assert len(lines) == 1, stdout[-3000:]
  return json.loads(lines[0][len("RESULTS "):])


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# ---- 8 simulated devices in one process.

@pytest.fixture(scope="module", name="eight_devices")
def _eight_devices():
  proc = subprocess.run(
      [sys.executable, CHECKS], cwd=REPO, capture_output=True, text=True, timeout=300,
      env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"), check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return _results(proc.stdout)


def _assert_same_step(result):
  np.testing.assert_allclose(result["losses_all"], result["losses_one"], rtol=0, atol=TOLERANCE)
  assert result["params_max_diff"] < TOLERANCE
  assert result["batch_stats_max_diff"] < TOLERANCE
  assert result["params_moved"] > 1e-3  # the comparison is not vacuous: two steps moved the params


def test_sharded_train_step_matches_one_device(eight_devices):
  result = eight_devices["train_step"]
  assert result["num_devices"] == 8
  _assert_same_step(result)
  assert result["state_replicated"] and result["state_devices"] == 8


def test_sharded_inversion_step_matches_one_device(eight_devices):
  _assert_same_step(eight_devices["inversion_step"])


def test_global_batch_is_split_in_contiguous_rows(eight_devices):
  result = eight_devices["global_batch"]
  assert result["shape"] == [16] and result["spec"] == "P('data',)"
  assert result["local_rows"] == list(range(0, 160, 10))  # one process holds the whole batch
  assert result["shards"] == [[20 * i, 20 * i + 10] for i in range(8)]


def test_indivisible_global_batch_is_rejected(eight_devices):
  messages = eight_devices["rejects_indivisible_batches"]
  assert set(messages) == {"check_batch_size", "batch_size", "eval_batch_size"}
  for key, field in (("check_batch_size", "config.data.batch_size=12"),
                     ("batch_size", "config.data.batch_size=60"),
                     ("eval_batch_size", "config.data.eval_batch_size=100")):
    assert field in messages[key] and "8 devices" in messages[key], messages[key]


# ---- 2 simulated devices in one process.

def test_distill_teacher_pass_keeps_each_devices_rows_local():
  """Issue #16: the teacher's pass over real ∪ synthetic rows used to concatenate two batch-sharded
  arrays, which XLA resharded with all-to-alls; the interleaved batch needs no collective at all
  and gives one device's values."""
  proc = subprocess.run(
      [sys.executable, CHECKS, "distill_collectives"], cwd=REPO, capture_output=True, text=True,
      timeout=300, env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"), check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = _results(proc.stdout)["distill_collectives"]
  assert result["num_devices"] == 2
  before, after = result["collectives"]["concatenated"], result["collectives"]["interleaved"]
  assert before["all-to-all"] > 0  # the count sees the resharding it is meant to catch
  assert after == {"all-to-all": 0, "all-reduce": 0, "all-gather": 0, "collective-permute": 0}
  assert result["max_diff_to_one_device"] == 0.0
  assert result["t_real_stage1_spec"] == "P('data',)"


# ---- Pure pieces, in this process.

def _fake_mesh(device_processes):
  """Duck-typed mesh: only the process index of each device along the data axis matters."""
  devices = np.array([types.SimpleNamespace(process_index=p) for p in device_processes])
  return types.SimpleNamespace(devices=devices)


@pytest.mark.parametrize("device_processes", [[0] * 4 + [1] * 4, [0, 0, 1, 1, 2, 2, 3, 3]])
def test_process_batch_indices_gives_each_process_its_contiguous_slice(device_processes):
  mesh = _fake_mesh(device_processes)
  global_indices = np.random.default_rng(0).permutation(100)[:16]
  num_processes = max(device_processes) + 1
  parts = [parallel.process_batch_indices(global_indices, mesh, process_index=p)
           for p in range(num_processes)]
  per_process = 16 // num_processes
  for p, part in enumerate(parts):
    np.testing.assert_array_equal(part, global_indices[p * per_process:(p + 1) * per_process])
  np.testing.assert_array_equal(np.concatenate(parts), global_indices)
  # 2-D indices (batch, ...) are sliced on the batch axis only
  np.testing.assert_array_equal(
      parallel.process_batch_indices(global_indices.reshape(16, 1), mesh, process_index=1)[:, 0],
      parts[1])


def test_process_batch_indices_rejects_bad_layouts():
  with pytest.raises(ValueError, match=r"config\.data\.batch_size=12 .* 8 devices"):
    parallel.process_batch_indices(np.arange(12), _fake_mesh([0] * 4 + [1] * 4), process_index=0)
  with pytest.raises(ValueError, match="not contiguous"):
    parallel.process_batch_indices(np.arange(8), _fake_mesh([0, 1, 0, 1]), process_index=0)


@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({"RFD_JAX_DISTRIBUTED": "0", "SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, None),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, None),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, {}),  # jax's SLURM detection fills in the rest
    ({"TPU_WORKER_HOSTNAMES": "w0,w1"}, {}),
    ({"RFD_JAX_DISTRIBUTED": "1"}, {}),
    ({"RFD_JAX_DISTRIBUTED": "1", "RFD_JAX_COORDINATOR": "127.0.0.1:1234",
      "RFD_JAX_NUM_PROCESSES": "2", "RFD_JAX_PROCESS_ID": "1"},
     {"coordinator_address": "127.0.0.1:1234", "num_processes": 2, "process_id": 1}),
])
def test_distributed_init_kwargs(environ, expected):
  assert parallel.distributed_init_kwargs(environ) == expected


def test_distributed_init_kwargs_rejects_unknown_switch():
  with pytest.raises(ValueError, match="RFD_JAX_DISTRIBUTED"):
    parallel.distributed_init_kwargs({"RFD_JAX_DISTRIBUTED": "yes"})


# ---- 2 processes on localhost, one jax.distributed cluster over gloo.

def _run_processes(commands_and_envs, timeout):
  procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for cmd, env in commands_and_envs]
  try:
    outputs = [p.communicate(timeout=timeout) for p in procs]
  finally:
    for p in procs:  # one failed process leaves the other waiting for it: end both
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  return [out for out, _ in outputs]


def test_two_processes_train_step_matches_one_device():
  port = _free_port()
  outputs = _run_processes(
      [([sys.executable, CHECKS, "train_step"],
        _env(RFD_JAX_DISTRIBUTED="1", RFD_JAX_COORDINATOR=f"127.0.0.1:{port}",
             RFD_JAX_NUM_PROCESSES="2", RFD_JAX_PROCESS_ID=str(i))) for i in range(2)],
      timeout=300)
  results = [_results(out)["train_step"] for out in outputs]
  for i, result in enumerate(results):
    assert result["process"] == [i, 2] and result["num_devices"] == 2
    assert result["local_rows"] == list(range(8 * i, 8 * i + 8))  # each loads only its half
    _assert_same_step(result)
    assert result["state_replicated"] and result["state_devices"] == 2
  assert results[0]["losses_all"] == results[1]["losses_all"]


@pytest.mark.slow  # ~90 s on a busy 2-core CPU: two full training runs plus a reference run
def test_two_process_cli_run_matches_one_process(tmp_path):
  """launch/local_multiprocess.sh 2 -- <tiny digits config>: same results.json as one process."""
  from train_test import TINY_OVERRIDES, tiny_config  # pylint: disable=g-import-not-at-top
  from rfd_jax.jobs import dfcil  # pylint: disable=g-import-not-at-top
  reference = dfcil.train_and_evaluate(tiny_config(), str(tmp_path / "one"))
  proc = subprocess.run(
      ["bash", os.path.join(REPO, "launch", "local_multiprocess.sh"), "2", "--",
       "--config", "configs/digits.py", "--workdir", str(tmp_path / "two"), *TINY_OVERRIDES],
      cwd=REPO, env=_env(PYTHON=sys.executable), capture_output=True, text=True, timeout=600,
      check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "[1] " in proc.stderr and "2 global devices" in proc.stderr  # really two processes

  with open(tmp_path / "two" / "results.json") as f:
    two = json.load(f)
  without_timing = lambda r: {k: v for k, v in r.items() if "seconds" not in k}
  assert without_timing(two) == without_timing(reference)
  # only process 0 wrote: one line per log step, as in the 1-process run
  with open(tmp_path / "one" / "metrics.jsonl") as f:
    one_lines = [json.loads(l) for l in f]
  with open(tmp_path / "two" / "metrics.jsonl") as f:
    two_lines = [json.loads(l) for l in f]
  assert [l["step"] for l in two_lines] == [l["step"] for l in one_lines]
