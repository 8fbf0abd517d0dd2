"""The dfkd synthesis round on two simulated CPU devices: latents split on "data", all-reduces in
the compiled step and scanned chunk; the scan and the host loop agree. One subprocess
(tests/dfkd_sharding_checks.py), since the device count is fixed when jax is first imported."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKS = os.path.join(REPO, "tests", "dfkd_sharding_checks.py")


@pytest.fixture(scope="module", name="two_devices")
def _two_devices():
  env = {k: v for k, v in os.environ.items()
         if k != "XLA_FLAGS" and not k.startswith("RFD_JAX_")}
  env.update(PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  proc = subprocess.run([sys.executable, CHECKS], cwd=REPO, capture_output=True, text=True,
                        timeout=300, env=env, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULTS ")]
  assert len(lines) == 1, proc.stdout[-3000:]
  return json.loads(lines[0][len("RESULTS "):])


def test_synthesis_is_data_parallel(two_devices):
  result = two_devices
  assert result["num_devices"] == 2
  # The replicated step had none: the BN statistics of the generator (3 BN layers) and of the
  # teacher over the global batch and the generator's gradient are all-reduces, in the host loop's
  # step and inside the scan.
  for counts in (result["step_all_reduces"], result["scan_all_reduces"]):
    assert counts["generator_bn"] >= 3 and counts["generator_grad"] >= 1, counts
    assert counts["total"] > counts["generator_bn"] + counts["generator_grad"], counts  # teacher
  assert result["scan_has_loop"]  # the chunk is one lax.scan, not an unrolled copy
  for specs in result["specs"].values():
    assert specs == {"z": "P('data',)", "best_images": "P('data',)",
                     "adam_z": ["P('data',)", "P('data',)"], "generator_replicated": True}
  assert result["z_shard_shapes"] == [[4, 8], [4, 8]]  # each device holds half of the latents


def test_scan_and_host_loops_agree(two_devices):
  """Same keys, same steps; the parameters differ by float reassociation only (XLA fuses the step
  differently inside the while loop: ~1e-7–1e-6 measured, the metrics bit-identical)."""
  result = two_devices
  assert result["moved"]["params"] > 0.05 and result["moved"]["z"] > 0.05  # Adam, lr 0.05, 2 steps
  for name, diff in result["scan_vs_host"].items():
    assert diff < 1e-5, (name, diff)
  assert result["best_loss"]["scan"] == pytest.approx(result["best_loss"]["host"], rel=1e-6)
