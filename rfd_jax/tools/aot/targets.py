"""The accelerators rfd_jax.tools.aot compiles for: names, peak figures, and their devices without
the hardware (TPU topologies from libtpu; GPUs from the target descriptions in gpu_targets/).

Peak figures are the vendors' public numbers per device (a TPU chip, a GPU), for the roofline lower
bound of a run: steps × max(flops ÷ peak flops, bytes ÷ peak bandwidth). `peak_flops` is the dense
matrix rate the compiled program can reach for the config's dtype: on TPU the MXU's bf16 rate
(XLA's default precision runs float32 convolutions as bf16 passes), on Hopper GPUs bf16 for
bfloat16 and TF32 for float32 (XLA's default precision for f32 convolutions and dots on sm_80+).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import importlib.util

GIB = 2**30

TPU_PIP = "pip install -r requirements-tpu-compile.txt  (libtpu==0.0.42.*, the one jax 0.10.2 pins)"
GPU_PIP = ("pip install -r requirements-gpu-compile.txt  (jax-cuda12-plugin and jax-cuda12-pjrt "
           "0.10.2)")

# JAX's GPU client preallocates this fraction of the card (XLA_PYTHON_CLIENT_MEM_FRACTION's
# default) and allocates from it only: what a program may use without changing the environment.
GPU_MEMORY_FRACTION = 0.75


@dataclasses.dataclass(frozen=True)
class Chip:
  """Per-device figures of one accelerator kind, with where they come from."""
  kind: str  # "tpu" | "gpu"
  name: str
  memory_bytes: int  # HBM per device (a TPU chip; a GPU's memory as CUDA reports it, gpu_targets/)
  peak_flops_bf16: float  # dense, per device
  peak_flops_f32: float  # what float32 programs reach under XLA's default precision
  bandwidth: float  # HBM bytes/s per device
  source: str


CHIPS = {
    "v5e": Chip("tpu", "TPU v5e", 16 * GIB, 197e12, 197e12, 819e9,
                "cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16, 16 GiB HBM2 at 819 GB/s per "
                "chip"),
    "v4": Chip("tpu", "TPU v4", 32 * GIB, 275e12, 275e12, 1200e9,
               "cloud.google.com/tpu/docs/v4: 275 TFLOP/s bf16, 32 GiB HBM2 at 1,200 GB/s per "
               "chip"),
    "v5p": Chip("tpu", "TPU v5p", 95 * GIB, 459e12, 459e12, 2765e9,
                "cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16, 95 GiB HBM2e at 2,765 GB/s per "
                "chip"),
    "v6e": Chip("tpu", "TPU v6e (Trillium)", 32 * GIB, 918e12, 918e12, 1640e9,
                "cloud.google.com/tpu/docs/v6e: 918 TFLOP/s bf16, 32 GiB HBM at 1,640 GB/s per "
                "chip"),
    "h100": Chip("gpu", "NVIDIA H100 SXM 80GB", 84_929_347_584, 989e12, 494.5e12, 3.35e12,
                 "nvidia.com/en-us/data-center/h100 (datasheet, SXM): 989 TFLOP/s bf16 and 494.5 "
                 "TF32 dense, 80 GB HBM3 at 3.35 TB/s"),
    "h200": Chip("gpu", "NVIDIA H200 SXM 141GB", 150_754_820_096, 989e12, 494.5e12, 4.8e12,
                 "nvidia.com/en-us/data-center/h200 (datasheet, SXM): 989 TFLOP/s bf16 and 494.5 "
                 "TF32 dense, 141 GB HBM3e at 4.8 TB/s"),
}

# The targets by name: TPU topologies (libtpu's "<chip>:<shape>" names) and GPU machines.
TPU_TARGETS = ("v5e:2x2", "v5e:2x4", "v5e:4x4", "v4:2x2x1", "v5p:2x2x1", "v6e:2x2")
# Chips per host where libtpu's default (4) is not the slice's: a v5litepod-8 is one host of 8 chips
# (libtpu's "v5e:2x4" alone would be 2 hosts of 4). How chips group into hosts changes the processes
# of a run (a group of runs needs one), not the per-device program of the slice.
CHIPS_PER_HOST = {"v5e:2x4": [2, 4, 1]}
GPU_TARGETS = {"h100": ("h100", 1), "h100x8": ("h100", 8), "h200": ("h200", 1)}


class TargetError(ValueError):
  """A bad target name or a missing compiler plugin (the tool's exit status 2)."""


@dataclasses.dataclass(frozen=True)
class Target:
  """A named target: its chip figures and its devices (deviceless: for compiling only)."""
  name: str
  chip: Chip
  devices: tuple
  memory_per_device: int  # what a program may use on one device (the fit check's limit)
  devices_per_chip: int = 1  # v4's deviceless topology lists both TensorCores of a chip

  @property
  def bandwidth(self) -> float:
    """HBM bytes/s of one device (a chip's, shared by its devices)."""
    return self.chip.bandwidth / self.devices_per_chip

  @property
  def num_devices(self) -> int:
    return len(self.devices)

  @property
  def num_hosts(self) -> int:
    return len({d.process_index for d in self.devices})

  def peak_flops(self, dtype: str) -> float:
    peak = self.chip.peak_flops_bf16 if dtype == "bfloat16" else self.chip.peak_flops_f32
    return peak / self.devices_per_chip


def check_name(name: str) -> None:
  """Raises TargetError unless `name` is a known target."""
  if name not in TPU_TARGETS and name not in GPU_TARGETS:
    raise TargetError(f"--target={name!r} is unknown; expected one of "
                      f"{', '.join(TPU_TARGETS + tuple(GPU_TARGETS))}.")


def _installed(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:  # a missing parent package (jax_plugins without any plugin)
    return False


def check_plugin(name: str) -> None:
  """Raises TargetError naming the pip command when the compiler `name` needs is not installed."""
  check_name(name)
  if name in TPU_TARGETS:
    if not _installed("libtpu"):
      raise TargetError(
          f"--target={name} needs the TPU compiler (libtpu), not installed; {TPU_PIP}.")
  elif not _installed("jax_plugins.xla_cuda12"):
    raise TargetError(f"--target={name} needs the CUDA compiler plugin, not installed; {GPU_PIP}.")


def gpu_target_config(chip: str) -> str:
  """The GpuTargetConfig text proto shipped for `chip` (gpu_targets/<chip>.pbtxt)."""
  return (importlib.resources.files("rfd_jax.tools.aot") / "gpu_targets" / f"{chip}.pbtxt").read_text()


def load(name: str) -> Target:
  """The target's devices, without the hardware (libtpu's or the CUDA plugin's compiler).

  Raises TargetError for an unknown name or a missing plugin. The environment must select the CPU
  platform for JAX's own backend (the tool sets JAX_PLATFORMS=cpu) so that nothing probes for a
  device; TPU_SKIP_MDS_QUERY=1 keeps libtpu off the GCE metadata server.
  """
  check_plugin(name)
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  if name in TPU_TARGETS:
    chip = CHIPS[name.split(":")[0]]
    kwargs = {"chips_per_host_bounds": CHIPS_PER_HOST[name]} if name in CHIPS_PER_HOST else {}
    devices = tuple(topologies.get_topology_desc(topology_name=name, platform="tpu",
                                                 **kwargs).devices)
    # v4 topologies list each TensorCore as a device (2 per chip): half a chip's HBM each
    cores = 2 if name.startswith("v4:") and len(devices) == 2 * _chips(name) else 1
    return Target(name, chip, devices, chip.memory_bytes // cores, cores)
  chip_name, count = GPU_TARGETS[name]
  devices = tuple(topologies.get_topology_desc(
      platform="cuda", topology=f"1x1x{count}", target_config=gpu_target_config(chip_name)).devices)
  chip = CHIPS[chip_name]
  return Target(name, chip, devices, int(chip.memory_bytes * GPU_MEMORY_FRACTION))


def _chips(name: str) -> int:
  count = 1
  for n in name.split(":")[1].split("x"):
    count *= int(n)
  return count
