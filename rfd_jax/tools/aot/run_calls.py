"""The jitted calls of a class-incremental run (single or group), as shapes, for compiling without
data or devices (rfd_jax.tools.aot).

The run is built by the code `rfd_jax.main` runs (dfcil_run.build_run, with `abstract=True`) on an abstract dataset: the dataset's known split sizes and image shape, no pixels.
Each `Call` is one jitted function of the run with the arguments the run passes it (shapes, dtypes,
shardings) and how many units of work of it the whole plan runs (train steps, inversion iterations,
evaluation batches): the projection multiplies the compiled per-unit cost by them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rfd_jax.cli import config_validation
from rfd_jax.jobs import dfcil_run, group, dfcil
from rfd_jax.engine import errors, parallel
from rfd_jax.data import datasets

# Standard split sizes per class (train, test) of the datasets that need a download. ImageNet-100:
# PODNet's lists hold up to ImageNet's 1,300 training images per class (a few classes fewer; the
# figure rounds the epoch up by < 2%); ImageNet-R: 30,000 images over 200 classes, 80% for training.
SPLIT_PER_CLASS = {"cifar10": (5000, 1000), "cifar100": (500, 100), "fashion_mnist": (6000, 1000),
                   "tiny_imagenet": (500, 50), "imagenet100": (1300, 50), "imagenet_r": (120, 30)}
LAZY_DATASETS = ("imagenet100", "imagenet_r")  # decoded from files per batch: host-fed steps


@dataclasses.dataclass(frozen=True)
class LazyImageShape:
  """The shape of lazily decoded images (image_decode.LazyImages), without files: host-fed."""
  shape: tuple[int, ...]
  dtype: Any = np.dtype(np.uint8)

  def __len__(self) -> int:
    return self.shape[0]


def abstract_dataset(data_config) -> datasets.Dataset:
  """The dataset of `data_config` with its split sizes and image shape, and zero-size images
  (np.broadcast_to views; shape (N, S, S, 3) uint8) or, for the ImageNet folders, `LazyImageShape`.
  digits ships with scikit-learn and is loaded for real (its split is uneven)."""
  name = data_config.dataset
  if name == "digits":
    from rfd_jax.data import sklearn_digits  # pylint: disable=g-import-not-at-top
    return sklearn_digits.load_digits(data_config.image_size)
  info = datasets.dataset_info(name)
  per_train, per_test = SPLIT_PER_CLASS[name]
  if data_config.get("train_per_class", 0):
    per_train = min(per_train, data_config.train_per_class)
  size = data_config.image_size
  def images(n):
    shape = (n, size, size, 3)
    if name in LAZY_DATASETS:
      return LazyImageShape(shape)
    return np.broadcast_to(np.zeros((), np.uint8), shape)
  classes = np.arange(info.num_classes)
  train_labels, test_labels = np.repeat(classes, per_train), np.repeat(classes, per_test)
  return datasets.Dataset(name, images(len(train_labels)), train_labels,
                          images(len(test_labels)), test_labels,
                          np.asarray(info.mean, np.float32), np.asarray(info.std, np.float32))


@dataclasses.dataclass
class Call:
  """One jitted function of the run and what the plan does with it.

  name: its field in run.fns (plus ":K" for a block of K steps). fn: the jitted function.
  args: static arguments first, then ShapeDtypeStructs. units: steps of work over the whole run
  (train steps, inversion iterations, eval batches, calls). unit: what one unit is. per_call: units
  per call (a scanned block's steps; XLA's cost analysis counts a scan body once, so a block's
  figures are per step).
  """
  name: str
  fn: Any
  args: tuple
  units: int = 0
  unit: str = "call"
  per_call: int = 1

  def lower(self):
    return self.fn.lower(*self.args)


def _spec(x: Any, sharding) -> jax.ShapeDtypeStruct:
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)


def specs(tree: Any, sharding) -> Any:
  """Concrete or abstract leaves → ShapeDtypeStructs (abstract ones kept, with their sharding;
  the others get `sharding`)."""
  return jax.tree.map(lambda x: _spec(x, sharding), tree)


def build(config, mesh) -> tuple[dfcil_run.Run, dict[str, Any]]:
  """The job of `config` over `mesh` (abstract), and the abstract arrays its state is made of
  (state, class_weights, teacher, generator) in the step form (a leading run axis for a group of
  several runs). Raises ConfigError as the job would."""
  config_validation.validate(config)
  data = abstract_dataset(config.data)
  members = group.members(config)
  if group.is_group(config):
    if len({d.process_index for d in mesh.devices.flat}) > 1:
      raise errors.ConfigError(
          "config.runs: a group of runs runs in one process; this target has several hosts.")
    group.check(config, members, mesh.devices.size)  # one process: its hosts are checked above
  parts = dfcil_run.parts_of(config, mesh, members)
  return (dfcil_run.build_run(parts, "", data, abstract=True),
          dfcil_run.abstract_arrays(parts, step_form=True))


def calls(run: dfcil_run.Run, arrays: dict[str, Any]) -> list[Call]:
  """Every distinct jitted call of the run's plan with its arguments, and its units of work."""
  config, mesh, spec = run.config, run.mesh, run.spec
  rep, batch_sharding = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  lead = (run.num_runs,) if run.num_runs > 1 else ()  # the step form's run axis
  scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype, sharding=rep)
  key = jax.ShapeDtypeStruct(lead, jax.eval_shape(lambda: jax.random.key(0)).dtype, sharding=rep)
  state = arrays["state"]
  teacher, gen = arrays["teacher"], arrays["generator"]
  gen_vars = {"params": gen.params, "batch_stats": gen.batch_stats}
  size = config.data.image_size
  resident = run.train_data is not None
  found: dict[str, Call] = {}

  def add(name, fn, args, units, unit, per_call=1):
    if name not in found:
      found[name] = Call(name, fn, args, 0, unit, per_call)
    found[name].units += units

  for segment in run.plan.segments:
    task = segment.task
    if segment.name == "inversion":
      add("inversion_chunk", run.fns.inversion_chunk,
          (gen, teacher, key, scalar(jnp.int32), scalar(jnp.int32)), segment.num_steps,
          "inversion iteration", segment.block_steps)
    elif segment.name == "eval":  # the test images any run has seen (dfcil.DfcilJob._evaluate)
      num_test = int(np.sum(np.any(run.test_labels < spec.num_seen(task), axis=0)))
      eval_bs = config.data.eval_batch_size
      images = jax.ShapeDtypeStruct((eval_bs, size, size, 3), jnp.uint8, sharding=batch_sharding)
      add("eval_step", run.fns.eval_step, (teacher, images, scalar(jnp.int32)),
          math.ceil(num_test / eval_bs), "eval batch")
    else:
      kind, hparams, distilling = dfcil.segment_hparams(run, state, segment.name, task)
      hparams = specs({**hparams, "lr": jnp.float32(0)}, rep)
      extra = ()
      if distilling:
        hparams["class_weights"] = arrays["class_weights"]
        extra = (teacher, gen_vars)
      fn, fn_name = run.fns.train_fn(kind, resident), run.fns.train_name(kind, resident)
      if resident:
        k = segment.block_steps
        rows = jax.ShapeDtypeStruct(lead + (segment.epoch_steps, config.data.batch_size),
                                    jnp.int32, sharding=run.run_sharding)
        args = (k, state, run.train_data, rows, scalar(jnp.int32), key, scalar(jnp.int32),
                hparams) + extra
        name = f"{fn_name}:{k}" + ("" if k == segment.epoch_steps else f"/{segment.epoch_steps}")
        add(name, fn, args, segment.num_steps, "train step", k)
      else:
        b = config.data.batch_size
        host_batch = {"images": jax.ShapeDtypeStruct((b, size, size, 3), jnp.uint8,
                                                     sharding=batch_sharding),
                      "labels": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=batch_sharding)}
        add(fn_name, fn, (state, host_batch, key, scalar(jnp.int32), hparams) + extra,
            segment.num_steps, "train step")
      add("class_weights", run.fns.class_weights,
          (jax.ShapeDtypeStruct(lead + (spec.num_classes,), jnp.float32,
                                sharding=run.run_sharding), scalar(jnp.int32)),
          segment.num_epochs, "epoch end")
  return list(found.values())


def cpu_twin(config):
  """The config with the loops and generator upsampling a GPU resolves ("auto" → scan with
  device-resident data; dfkd's synthesis scanned; upsample "repeat"), so that XLA:CPU compiles the
  same functions (its "auto" picks host loops and phase convolutions)."""
  twin = config.copy_and_resolve_references()
  job = config_validation.job_of(twin)
  with twin.unlocked():
    for section in ("inversion", "synthesis"):
      if section in twin and twin[section].get("upsample", "auto") == "auto":
        twin[section].upsample = "repeat"
    if job == "dfkd" and twin.synthesis.get("loop", "auto") == "auto":
      twin.synthesis.loop = "scan"
    if job != "dfcil":
      return twin
    if twin.optim.get("loop", "auto") == "auto" and twin.data.get("device_resident", True):
      lazy = twin.data.dataset in LAZY_DATASETS
      twin.optim.loop = "host" if lazy else "scan"
    if twin.inversion.get("loop", "auto") == "auto":
      twin.inversion.loop = "scan"
  return twin
