"""Multi-device checks run in subprocesses by parallel_test.py (not collected by pytest itself).

XLA_FLAGS=--xla_force_host_platform_device_count=8 only works if set before jax is imported, and
pytest imports jax early, so parallel_test.py runs this file as a script with that flag set; or as
several processes of one jax.distributed cluster (RFD_JAX_* variables, see rfd_jax/engine/parallel.py).
Each process prints one line "RESULTS <json>" that the tests assert on.

To add a check: write `check_<name>() -> dict` below and list it in CHECKS (run by the 8-device
fixture) or in NAMED_CHECKS (run only when named, on the device count its test sets).
"""

import functools
import json
import os
import re
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from configs import digits
import optax

from rfd_jax.methods import inversion
from rfd_jax.engine import errors, optim, parallel
from rfd_jax.jobs import steps, dfcil
from rfd_jax.models import resnet
from rfd_jax.models.generator import generator_for
from rfd_jax.engine.state import trainable_mask

import distill_reference
import random_states

BATCH = 16
IMAGE_SIZE = 8
MEAN, STD = np.full(3, 0.3, np.float32), np.full(3, 0.25, np.float32)


def _max_abs_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def run_step_on_mesh(step_fn, mesh, replicated_args, batch, num_steps=2):
  """Runs `step_fn(state, batch, *rest)` `num_steps` times on `mesh`, the way dfcil.py does.

  replicated_args: (state, *rest), on the host; the state is placed replicated, donated and carried.
  batch: host numpy arrays of the global batch; every process keeps only its rows.
  Returns (final state, list of per-step metrics).
  """
  replicated, batch_sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  n_rest = len(replicated_args) - 1
  fn = jax.jit(step_fn, donate_argnums=(0,), out_shardings=replicated,
               in_shardings=(replicated, batch_sharded) + (replicated,) * n_rest)
  rows = parallel.process_batch_indices(np.arange(len(jax.tree.leaves(batch)[0])), mesh)
  global_batch = parallel.global_batch(jax.tree.map(lambda x: x[rows], batch), mesh)
  state, *rest = replicated_args
  state = parallel.replicate(state, mesh)
  history = []
  for _ in range(num_steps):
    state, metrics = fn(state, global_batch, *rest)
    history.append(jax.device_get(metrics))
  return state, history


def random_train_state(model, tx, seed=0):
  return random_states.random_train_state(model, tx, image_size=IMAGE_SIZE, num_classes=10,
                                          seed=seed)


def check_train_step() -> dict:
  """rfd_jax.jobs.steps.train_step: one local device vs every device of every process, same global
  batch of 16, two steps."""
  # one block per stage: every layer kind of ResNet-32, a fraction of its compile time
  model = resnet.CifarResNet(task_sizes=(2,) * 5, stage_blocks=(1, 1, 1, 1))
  tx = optim.momentum_transform(0.9)
  state = random_train_state(model, tx)
  rng = np.random.default_rng(0)
  batch = {"images": rng.integers(0, 256, (BATCH, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8),
           "labels": rng.integers(0, 4, (BATCH,)).astype(np.int32)}
  hparams = {"lr": np.float32(0.1), "num_seen": np.int32(4),
             "trainable": trainable_mask(state, tasks_seen=2, backbone=True)}
  # with augmentation: the random crops and flips must not depend on the sharding
  step = functools.partial(steps.train_step, model=model, tx=tx, weight_decay=5e-4, mean=MEAN,
                           std=STD)
  results = {}
  for name, devices in (("one", jax.local_devices()[:1]), ("all", jax.devices())):
    mesh = parallel.make_mesh(devices)
    results[name] = run_step_on_mesh(step, mesh, (state, jax.random.key(1), hparams), batch)
  (state_1, hist_1), (state_8, hist_8) = results["one"], results["all"]
  return {
      "num_devices": jax.device_count(),
      "process": [jax.process_index(), jax.process_count()],
      "local_rows": parallel.process_batch_indices(np.arange(BATCH), parallel.make_mesh()).tolist(),
      "losses_one": [float(m["train/loss"]) for m in hist_1],
      "losses_all": [float(m["train/loss"]) for m in hist_8],
      "params_max_diff": _max_abs_diff(state_1.params, state_8.params),
      "batch_stats_max_diff": _max_abs_diff(state_1.batch_stats, state_8.batch_stats),
      "params_moved": _max_abs_diff(state.params, state_8.params),
      "state_replicated": all(x.sharding.is_fully_replicated for x in jax.tree.leaves(state_8)),
      "state_devices": len(jax.tree.leaves(state_8)[0].sharding.device_set),
  }


def check_inversion_step() -> dict:
  """rfd_jax.methods.inversion.generator_step with the latent batch split over every device vs one device:
  two steps, same loss and generator parameters. SGD instead of Adam: gradients of float-noise size
  (biases feeding a BN) would be normalised by Adam into ±lr steps and hide the comparison."""
  teacher = resnet.CifarResNet(task_sizes=(2,) * 5, stage_blocks=(1, 1, 1, 1))
  teacher_state = random_train_state(teacher, optim.momentum_transform(0.9))
  teacher_vars = {"params": teacher_state.params, "batch_stats": teacher_state.batch_stats}
  generator = generator_for(IMAGE_SIZE)
  tx = optax.sgd(0.1)
  gen_state = inversion.create_generator_state(generator=generator, rng=jax.random.key(2), tx=tx)
  # The random teacher's unit BN statistics make the BN-KL term ~1e4; weighted 1e-3 (instead of 50)
  # it stays in the check (its batch statistics span all devices) and the loss stays O(1).
  weights = {"ce": 1.0, "balance": 1.0, "smoothness": 1e-3, "bn": 1e-3, "ce_temperature": 1e3}
  results = {}
  for name, devices in (("one", jax.local_devices()[:1]), ("all", jax.devices())):
    mesh = parallel.make_mesh(devices)
    rep = parallel.replicated(mesh)
    step = jax.jit(functools.partial(
        inversion.generator_step, generator=generator, teacher=teacher, tx=tx, batch_size=BATCH,
        weights=weights, batch_sharding=parallel.batch_sharded(mesh)),
        in_shardings=(rep, rep, rep, rep), out_shardings=rep)
    state, history = parallel.replicate(gen_state, mesh), []
    replicated_teacher = parallel.replicate(teacher_vars, mesh)
    for _ in range(2):
      state, metrics = step(state, replicated_teacher, jax.random.key(3), jnp.int32(4))
      history.append(jax.device_get(metrics))
    results[name] = (state, history)
  (state_1, hist_1), (state_8, hist_8) = results["one"], results["all"]
  return {
      "losses_one": [float(m["inversion/loss"]) for m in hist_1],
      "losses_all": [float(m["inversion/loss"]) for m in hist_8],
      "params_max_diff": _max_abs_diff(state_1.params, state_8.params),
      "batch_stats_max_diff": _max_abs_diff(state_1.batch_stats, state_8.batch_stats),
      "params_moved": _max_abs_diff(gen_state.params, state_8.params),
  }


def check_global_batch() -> dict:
  """Shard layout of a global batch: device i holds rows [2i, 2i + 2)."""
  mesh = parallel.make_mesh()
  indices = np.arange(BATCH) * 10
  local = parallel.process_batch_indices(indices, mesh)
  array = parallel.global_batch(local, mesh)
  shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start)
  return {"shape": list(array.shape), "local_rows": local.tolist(),
          "shards": [np.asarray(s.data).tolist() for s in shards],
          "spec": str(array.sharding.spec)}


def check_rejects_indivisible_batches() -> dict:
  """Global batches the device count does not divide: the helper and train_and_evaluate."""
  messages = {}
  try:
    parallel.check_batch_size(12, parallel.make_mesh())
  except ValueError as e:
    messages["check_batch_size"] = str(e)
  for field, value in (("batch_size", 60), ("eval_batch_size", 100)):
    config = digits.get_config()
    config.data[field] = value
    try:
      dfcil.train_and_evaluate(config, os.path.join(tempfile.mkdtemp(), "never_created"))
    except errors.ConfigError as e:
      messages[field] = str(e)
  return messages


def _collectives(hlo_text: str) -> dict:
  """How many instructions of each cross-device kind a compiled HLO module has."""
  return {op: len(re.findall(rf"\b{op}(-start)?\(", hlo_text))
          for op in ("all-to-all", "all-reduce", "all-gather", "collective-permute")}


def check_distill_collectives() -> dict:
  """steps.distill_inputs and the pre-#16 concatenation (tests/distill_reference.py) under jit
  with the real batch sharded on every device: the collectives of each compiled program, and the
  sharded result against one device's."""
  static, args = distill_reference.tiny_rfd_setup()
  mesh = parallel.make_mesh()
  rep, batch = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  in_shardings = (batch, rep, rep, rep, rep)
  counts, compiled = {}, {}
  for name, fn in (("interleaved", steps.distill_inputs),
                   ("concatenated", distill_reference.concatenated_distill_inputs)):
    jitted = distill_reference.jitted(fn, {**static, "batch_sharding": batch},
                                      in_shardings=in_shardings)
    compiled[name] = jitted.lower(*args).compile()
    counts[name] = _collectives(compiled[name].as_text())
  sharded = compiled["interleaved"](*args)
  one = distill_reference.jitted(steps.distill_inputs, static)(*args)
  arrays = lambda inputs: [getattr(inputs, n) for n in inputs._fields if n != "rng"]
  return {"num_devices": jax.device_count(), "collectives": counts,
          "max_diff_to_one_device": _max_abs_diff(arrays(sharded), arrays(one)),
          "t_real_stage1_spec": str(sharded.t_real_stage1.sharding.spec)}


CHECKS = {
    "train_step": check_train_step,
    "inversion_step": check_inversion_step,
    "global_batch": check_global_batch,
    "rejects_indivisible_batches": check_rejects_indivisible_batches,
}
NAMED_CHECKS = {
    "distill_collectives": check_distill_collectives,
}


if __name__ == "__main__":
  parallel.maybe_initialize_distributed()  # before any other JAX call; a no-op without RFD_JAX_*
  names = sys.argv[1:] or list(CHECKS)
  print("RESULTS " + json.dumps({name: {**CHECKS, **NAMED_CHECKS}[name]() for name in names}))
