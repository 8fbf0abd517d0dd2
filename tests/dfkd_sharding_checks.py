"""Checks of the dfkd synthesis chunk on two simulated CPU devices, run as a script by
dfkd_sharding_test.py (not collected by pytest itself): the device count is fixed when jax is
first imported, so the test sets XLA_FLAGS=--xla_force_host_platform_device_count=2 for this
process. Prints one line "RESULTS <json>".
"""

import functools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rfd_jax.jobs import dfkd_steps
from rfd_jax.engine import parallel
from rfd_jax.data import augment
from rfd_jax.models import dfkd_nets
from rfd_jax.models.cmi_generator import CmiGenerator

SIZE, BATCH, CHUNK = 8, 8, 2


def _random_variables(net, seed: int):
  """N(0, 0.1²) parameters, running mean 0 / var 1: the shapes without compiling the init."""
  shapes = jax.eval_shape(functools.partial(net.init, train=False), jax.random.key(0),
                          jnp.zeros((1, SIZE, SIZE, 3)))
  rng = np.random.default_rng(seed)
  return {"params": jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype),
                                 shapes["params"]),
          "batch_stats": jax.tree_util.tree_map_with_path(
              lambda path, s: np.full(s.shape, "var" in jax.tree_util.keystr(path), s.dtype),
              shapes["batch_stats"])}


def tiny_synthesis(mesh):
  """A tiny synthesis round on `mesh`: {"host": chunk fn, "scan": chunk fn, "init": () -> fresh
  state, "args": (teacher_vars, student_vars, targets, rng)}. WRN-10-1 teacher and student
  (different weights: the adversarial term is not 0), 8-px CMI generator, batch 8, chunks of 2."""
  generator = CmiGenerator(nz=8, ngf=4, img_size=SIZE)
  net = dfkd_nets.WideResNet(depth=10, widen_factor=1, num_classes=10)  # small: fast to compile
  tx = optax.adam(0.05, b1=0.5, b2=0.999)
  init = functools.partial(dfkd_steps.init_synthesis, generator=generator, batch_size=BATCH, tx=tx)
  sharding = dfkd_steps.synthesis_shardings(jax.eval_shape(init, jax.random.key(0)), tx, mesh)
  chunk = functools.partial(
      dfkd_steps.make_synthesis_chunk_fn, mesh=mesh, state_sharding=sharding, chunk_steps=CHUNK,
      tx=tx, generator=generator, teacher=net, student=net,
      weights={"bn": 1.0, "oh": 1.0, "adv": 1.0, "triplet": 0.1},
      mean=np.full(3, 0.5, np.float32), std=np.full(3, 0.25, np.float32),
      augmentation=augment.Augmentation(2, "black", False), triplet_layers=("stage3",), swap=True)
  targets = jax.device_put(jnp.arange(BATCH, dtype=jnp.int32) % 10, parallel.batch_sharded(mesh))
  args = tuple(parallel.replicate(_random_variables(net, seed), mesh) for seed in (0, 1)) + (
      targets, jax.random.key(3))
  return {"host": chunk(loop="host"), "scan": chunk(loop="scan"),
          "init": jax.jit(init, out_shardings=sharding), "sharding": sharding, "args": args}


def all_reduces(hlo_text: str) -> dict[str, int]:
  """The all-reduces of compiled HLO text: "instructions" (XLA combines several tensors into one)
  and the tensors they reduce, by the op they came from (their op_name): "generator_bn" (the
  generator's batch statistics), "generator_grad" (its gradient), "total"."""
  instructions = re.findall(r"^\s*(%all-reduce[\w.-]*) = (\(?)", hlo_text, re.M)
  tuples = {name for name, paren in instructions if paren}
  counts = {"instructions": len(instructions), "total": 0, "generator_bn": 0, "generator_grad": 0}
  for line in hlo_text.splitlines():
    # a one-tensor all-reduce, or one element of a combined one
    m = re.match(r"\s*(%all-reduce[\w.-]*) = [^(]", line) or re.search(
        r"get-tuple-element\((%all-reduce[\w.-]*)\)", line)
    if not m or (line.lstrip().startswith(m.group(1)) and m.group(1) in tuples):
      continue
    op_name = re.search(r'op_name="([^"]*)"', line)
    op_name = op_name.group(1) if op_name else ""
    counts["total"] += 1
    if "transpose(jvp(CmiGenerator))" in op_name:
      counts["generator_grad"] += 1
    elif "jvp(CmiGenerator)" in op_name:
      counts["generator_bn"] += 1
  return counts


def _max_abs_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def check_sharded_synthesis() -> dict:
  """One chunk (2 iterations from iteration 2) on both devices by the host loop and by the scan;
  the all-reduces of the compiled step and chunk. (Not compared with one device: shardings do not
  change what a jitted function computes, and a third compile costs CI time.)"""
  run = tiny_synthesis(parallel.make_mesh())
  fresh = jax.device_get(run["init"](jax.random.key(2)))
  start = lambda: jax.device_put(fresh, run["sharding"])  # a copy per run: the state is donated
  host, host_metrics = run["host"](start(), *run["args"], 2)
  scan, scan_metrics = run["scan"](start(), *run["args"], np.int32(2))
  # compiled again for the text: from the persistent compilation cache under pytest (conftest.py)
  step_hlo = run["host"].step.lower(start(), *run["args"], np.int32(0)).compile().as_text()
  scan_hlo = run["scan"].lower(start(), *run["args"], np.int32(0)).compile().as_text()
  return {
      "num_devices": jax.device_count(),
      "step_all_reduces": all_reduces(step_hlo),
      "scan_all_reduces": all_reduces(scan_hlo),
      "scan_has_loop": " while(" in scan_hlo,
      "specs": {name: {"z": str(s.z.sharding.spec), "best_images": str(s.best_images.sharding.spec),
                       "adam_z": [str(s.opt_state[0].mu["z"].sharding.spec),
                                  str(s.opt_state[0].nu["z"].sharding.spec)],
                       "generator_replicated": all(x.sharding.is_fully_replicated
                                                   for x in jax.tree.leaves(s.params))}
                for name, s in (("host", host), ("scan", scan))},
      "z_shard_shapes": [list(s.data.shape) for s in host.z.addressable_shards],
      "scan_vs_host": {"params": _max_abs_diff(scan.params, host.params),
                       "z": _max_abs_diff(scan.z, host.z),
                       "best_images": _max_abs_diff(scan.best_images, host.best_images),
                       "metrics": _max_abs_diff(scan_metrics, host_metrics)},
      "best_loss": {"host": float(host.best_loss), "scan": float(scan.best_loss)},
      "moved": {"params": _max_abs_diff(host.params, fresh.params),
                "z": _max_abs_diff(host.z, fresh.z)},
  }


if __name__ == "__main__":
  print("RESULTS " + json.dumps(check_sharded_synthesis()))
