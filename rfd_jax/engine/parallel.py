"""Data parallelism over all devices of all processes: mesh, shardings, global batches, multi-host.

One 1-D `Mesh` over all devices with axis "data". The train state is replicated; each batch is a
global `jax.Array` sharded on its leading axis. Steps are plain `jax.jit` functions with these
shardings (no pmap): XLA partitions the computation and inserts the collectives itself.

BatchNorm statistics are global. Under `jax.jit`, a batch sharded on "data" is still one logical
array of the global batch size, so the `jnp.mean` / `jnp.var` over the batch axis inside
`flax.linen.BatchNorm` become cross-device all-reduces: every device normalises with, and the
running statistics accumulate, the mean and variance of the whole global batch. This is
SyncBatchNorm semantics, and it makes a run on N devices compute the same function as a run on one
device with the same global batch (up to float reduction order). Gradients are likewise the mean
over the global batch.

Multi-host: every process runs the same program on the same data in host memory, builds the same
global batch indices, and loads only the rows its own devices hold (`process_batch_indices`);
`global_batch` assembles those rows into the global array. Only process 0 writes files.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from absl import logging
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from rfd_jax.engine import errors

DATA_AXIS = "data"

# Environment variables of `maybe_initialize_distributed` (documented in launch/README.md).
ENV_DISTRIBUTED = "RFD_JAX_DISTRIBUTED"  # "1": initialise; "0": never; unset: auto-detect
ENV_COORDINATOR = "RFD_JAX_COORDINATOR"  # host:port of process 0's coordinator
ENV_NUM_PROCESSES = "RFD_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "RFD_JAX_PROCESS_ID"

def _tpu_vm_present(environ) -> bool:
  """True on a Cloud TPU VM, decided without initialising a JAX backend.

  GKE sets the TPU worker list; on a GCE TPU VM, jax[tpu] (libtpu) is installed and PCI lists TPU
  chips (jax's own check, which reads /sys and never touches the backend).
  """
  if environ.get("TPU_WORKER_HOSTNAMES") or environ.get("TPU_PROCESS_ADDRESSES"):
    return True
  if importlib.util.find_spec("libtpu") is None:
    return False
  try:
    from jax._src import hardware_utils  # pylint: disable=g-import-not-at-top
    return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
  except (ImportError, AttributeError, OSError):
    return True  # libtpu is installed for TPU VMs only


def _slurm_multi_task(environ) -> bool:
  return "SLURM_JOB_ID" in environ and int(environ.get("SLURM_NTASKS", "1")) > 1


def distributed_init_kwargs(environ=None) -> dict[str, Any] | None:
  """Arguments for `jax.distributed.initialize`, or None for a single-process run.

  Decided by RFD_JAX_DISTRIBUTED:
    "1": initialise. RFD_JAX_COORDINATOR (host:port of process 0), RFD_JAX_NUM_PROCESSES and
         RFD_JAX_PROCESS_ID give the cluster (launch/local_multiprocess.sh sets all three); unset
         ones are left to jax's own cluster detection (Cloud TPU, SLURM, Open MPI).
    "0": never.
    unset or empty: auto-detect. On a Cloud TPU VM, and in a SLURM job with SLURM_NTASKS > 1,
         initialise with no arguments: jax detects the coordinator, process count and index.
  """
  environ = os.environ if environ is None else environ
  mode = environ.get(ENV_DISTRIBUTED, "").strip()
  if mode not in ("", "0", "1"):
    raise ValueError(f"{ENV_DISTRIBUTED}={mode!r}: expected 1 (on), 0 (off) or unset (auto).")
  if mode == "0" or (mode == "" and not (_tpu_vm_present(environ) or _slurm_multi_task(environ))):
    return None
  kwargs = {}
  if environ.get(ENV_COORDINATOR):
    kwargs["coordinator_address"] = environ[ENV_COORDINATOR]
  if environ.get(ENV_NUM_PROCESSES):
    kwargs["num_processes"] = int(environ[ENV_NUM_PROCESSES])
  if environ.get(ENV_PROCESS_ID):
    kwargs["process_id"] = int(environ[ENV_PROCESS_ID])
  return kwargs


def maybe_initialize_distributed() -> bool:
  """Joins the multi-process cluster when `distributed_init_kwargs` says this run is part of one.

  Must run before any other JAX call (main.py calls it first). Cross-process collectives between
  CPU devices go over gloo (the setting only concerns JAX's CPU backend; GPUs use NCCL, TPUs ICI).
  Returns whether it initialised.
  """
  kwargs = distributed_init_kwargs()
  if kwargs is None:
    return False
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed initialised: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True


def is_main_process() -> bool:
  """Process 0 writes logs, metrics and results; the others only compute."""
  return jax.process_index() == 0


def make_mesh(devices: Any = None) -> Mesh:
  """A 1-D mesh over `devices` (default: all devices of all processes) with axis "data".

  Devices are ordered by (process, id) so that each process owns one contiguous block of the data
  axis, i.e. one contiguous slice of every global batch.
  """
  devices = jax.devices() if devices is None else list(devices)
  devices = sorted(devices, key=lambda d: (d.process_index, d.id))
  return Mesh(np.array(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array (the train state, scalars, step outputs)."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """The leading (batch) axis is split over "data"; other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, *, field: str = "config.data.batch_size") -> None:
  """Raises a ConfigError (a ValueError) naming `field` unless the device count divides it."""
  num_devices = mesh.devices.size
  if batch_size % num_devices:
    raise errors.ConfigError(
        f"{field}={batch_size} is not divisible by the {num_devices} devices of the mesh: each "
        f"device takes an equal share of every global batch; use a multiple of {num_devices}.")


def job_mesh(*, batch_size: int, eval_batch_size: int, devices: Any = None) -> Mesh:
  """The mesh of a job (every device, or `devices`; batches split on "data") after checking that
  the device count divides its batch size and eval batch size (config.data's)."""
  mesh = make_mesh(devices)
  check_batch_size(batch_size, mesh)
  check_batch_size(eval_batch_size, mesh, field="config.data.eval_batch_size")
  return mesh


def _process_rows(batch_size: int, device_processes: list[int], process_index: int) -> slice:
  """Rows of a global batch held by `process_index`, given each mesh position's process."""
  positions = [i for i, p in enumerate(device_processes) if p == process_index]
  if not positions:
    raise ValueError(f"process {process_index} owns no device of the mesh")
  if positions != list(range(positions[0], positions[-1] + 1)):
    raise ValueError(f"process {process_index}'s devices are not contiguous on the data axis: "
                     f"{device_processes}")
  per_device = batch_size // len(device_processes)
  return slice(positions[0] * per_device, (positions[-1] + 1) * per_device)


def process_batch_indices(global_indices: np.ndarray, mesh: Mesh,
                          process_index: int | None = None, *,
                          field: str = "config.data.batch_size") -> np.ndarray:
  """This process's contiguous slice of one global batch's example indices.

  Every process draws the same global batch (a pure function of seed, task, epoch) and keeps the
  rows its devices hold: process p of P with equal device counts gets rows [p·B/P, (p+1)·B/P).
  global_indices: (B, ...) with B divisible by the device count → (B_local, ...).
  field: the config field that set B, named in the error when the device count does not divide B.
  """
  check_batch_size(len(global_indices), mesh, field=field)
  process_index = jax.process_index() if process_index is None else process_index
  device_processes = [d.process_index for d in mesh.devices.flat]
  return global_indices[_process_rows(len(global_indices), device_processes, process_index)]


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
  """Assembles each process's rows into global arrays sharded on "data" along axis 0.

  local_batch: a pytree (e.g. {"images", "labels"}) of numpy arrays (B_local, ...), this process's
  rows from `process_batch_indices`. Returns the same pytree of global jax.Arrays
  (B_local · process_count, ...) (for equal local device counts).
  """
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree of arrays, identical on every process, replicated on all devices of the mesh.

  A host copy, not a computation: the values are unchanged bit for bit. (Unlike `jax.device_put`
  to a multi-process sharding, it does not all-gather the tree to check that processes agree.)
  """
  sharding = replicated(mesh)
  def place(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, x, x.shape)
  return jax.tree.map(place, tree)
