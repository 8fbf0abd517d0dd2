"""Which device a sweep's run gets: `--devices`, `--device_kind` and `--parallel` → one environment
per run that may go at a time (a "slot"), and the warnings for runs that would share every device.

GPU (`--device_kind gpu`): a slot is `CUDA_VISIBLE_DEVICES=<id>`. With more runs at a time than
GPUs, the slots go round-robin over the GPUs, and each run on a GPU that k runs share gets
`XLA_PYTHON_CLIENT_MEM_FRACTION` = 0.9 / k (rounded down to two decimals; kept if the environment
already sets it): JAX preallocates 75% of its GPU's memory by default, so a second process on the
GPU would run out of memory. A GPU with one run keeps JAX's default.

TPU (`--device_kind tpu`): a chip takes one process at a time, so there are at most as many slots as
chips. A slot is the documented set for one process per chip of a TPU VM: `TPU_VISIBLE_CHIPS=<id>`,
`TPU_CHIPS_PER_PROCESS_BOUNDS=1,1,1`, `TPU_PROCESS_BOUNDS=1,1,1`, and its own
`TPU_MESH_CONTROLLER_ADDRESS`/`TPU_MESH_CONTROLLER_PORT` and `TPU_PROCESS_PORT` (libtpu's ports
must differ between the processes), plus `RFD_JAX_DISTRIBUTED=0`: on a TPU VM rfd_jax.main would
otherwise join every process into one jax.distributed cluster (rfd_jax/engine/parallel.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import math
import shutil
import subprocess

from rfd_jax.tools import sweep_runs

KINDS = ("gpu", "tpu")
MEM_FRACTION = "XLA_PYTHON_CLIENT_MEM_FRACTION"
SHARED_MEMORY = 0.9  # of a GPU, split between the runs that share it; the rest for CUDA itself
TPU_BASE_PORT = 8476  # libtpu's default; slot i takes 8476 + 2i and 8477 + 2i


@dataclasses.dataclass(frozen=True)
class Slot:
  """Where one of the runs going at a time runs: `env` goes into its environment."""
  name: str  # e.g. "GPU 3", for the progress lines
  env: dict[str, str]


def gpu_ids(devices: str) -> list[str]:
  """--devices → GPU ids: "0,2" as given; "auto": those `nvidia-smi -L` lists; "": none."""
  if devices != "auto":
    return sweep_runs.split_list(devices) if devices else []
  try:
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=True,
                             timeout=60).stdout
  except (OSError, subprocess.SubprocessError) as e:
    raise sweep_runs.SweepError(f"--devices auto: `nvidia-smi -L` failed ({e}); list the GPU ids, "
                                "e.g. --devices 0,1.") from e
  ids = [line.split(":")[0].split()[1] for line in listing.splitlines()
         if line.startswith("GPU ")]
  if not ids:
    raise sweep_runs.SweepError("--devices auto: nvidia-smi lists no GPU; leave --devices out.")
  return ids


def _tpu_chip_count() -> int:
  """TPU chips on this machine's PCI bus (jax's own count; it reads /sys, no backend starts)."""
  try:
    from jax._src import hardware_utils  # pylint: disable=g-import-not-at-top
    return hardware_utils.num_available_tpu_chips_and_device_id()[0]
  except (ImportError, AttributeError, OSError):
    return 0


def tpu_chip_ids(devices: str) -> list[str]:
  """--devices → TPU chip ids: "0,2" as given (integers); "auto": 0 .. chips − 1; "": none."""
  if devices == "auto":
    count = _tpu_chip_count()
    if not count:
      raise sweep_runs.SweepError("--devices auto: no TPU chip found on this machine; list the "
                                  "chip ids, e.g. --devices 0,1,2,3, or use --device_kind gpu.")
    return [str(i) for i in range(count)]
  ids = sweep_runs.split_list(devices) if devices else []
  for chip in ids:
    if not chip.isdigit():
      raise sweep_runs.SweepError(f"--devices {devices}: TPU chip ids are integers, got {chip!r}.")
  return ids


def device_ids(devices: str, kind: str) -> list[str]:
  """The ids of --devices for --device_kind `kind`; SweepError if one is listed twice."""
  ids = tpu_chip_ids(devices) if kind == "tpu" else gpu_ids(devices)
  twice = sorted({i for i in ids if ids.count(i) > 1})
  if twice:
    raise sweep_runs.SweepError(f"--devices {devices}: {', '.join(twice)} listed twice; --parallel "
                                "sets how many runs go at a time.")
  return ids


def _memory_fraction(runs_on_gpu: int) -> str:
  fraction = math.floor(100 * SHARED_MEMORY / runs_on_gpu) / 100
  if fraction <= 0:
    raise sweep_runs.SweepError(f"{runs_on_gpu} runs on one GPU leave each no memory; lower "
                                "--parallel or list more --devices.")
  return f"{fraction:.2f}"


def slots(kind: str, devices: Sequence[str], parallel: int,
          environ: Mapping[str, str]) -> list[Slot]:
  """One Slot per run that may go at a time on `devices` (max(parallel, len(devices)) of them).

  kind: "gpu" or "tpu" (see the module docstring). environ: the sweep's own environment (an
  XLA_PYTHON_CLIENT_MEM_FRACTION there is kept). SweepError for more TPU runs than chips.
  """
  if not devices:
    return []
  if kind == "tpu":
    if parallel > len(devices):
      raise sweep_runs.SweepError(
          f"--parallel {parallel} with {len(devices)} TPU chip(s) (--devices): a chip takes one "
          f"process at a time; use --parallel {len(devices)} or list more chips.")
    return [Slot(f"TPU chip {chip}", _tpu_env(chip, i)) for i, chip in enumerate(devices)]
  gpus = [devices[i % len(devices)] for i in range(max(parallel, len(devices)))]
  result = []
  for gpu in gpus:
    env = {"CUDA_VISIBLE_DEVICES": gpu}
    if gpus.count(gpu) > 1 and MEM_FRACTION not in environ:
      env[MEM_FRACTION] = _memory_fraction(gpus.count(gpu))
    result.append(Slot(f"GPU {gpu}", env))
  return result


def _tpu_env(chip: str, slot: int) -> dict[str, str]:
  mesh_port, process_port = TPU_BASE_PORT + 2 * slot, TPU_BASE_PORT + 2 * slot + 1
  return {"TPU_VISIBLE_CHIPS": chip, "TPU_CHIPS_PER_PROCESS_BOUNDS": "1,1,1",
          "TPU_PROCESS_BOUNDS": "1,1,1", "TPU_MESH_CONTROLLER_ADDRESS": f"localhost:{mesh_port}",
          "TPU_MESH_CONTROLLER_PORT": str(mesh_port), "TPU_PROCESS_PORT": str(process_port),
          "RFD_JAX_DISTRIBUTED": "0"}


def sharing_warning(kind: str, devices: Sequence[str], parallel: int) -> str | None:
  """A one-line warning when runs going side by side without --devices would each take every
  device: every GPU's memory (only on a machine with nvidia-smi), or the TPU chips."""
  if devices or parallel <= 1:
    return None
  if kind == "tpu":
    return (f"warning: --parallel {parallel} without --devices: a TPU chip takes one process at a "
            "time, so the runs after the first cannot start; give each run a chip with --devices "
            "auto.")
  if shutil.which("nvidia-smi") is None:
    return None
  return (f"warning: --parallel {parallel} without --devices: each run preallocates 75% of every "
          "GPU's memory (JAX's default) and the later ones may run out; give each run a GPU with "
          "--devices auto.")
