"""The jitted calls of the teacher and dfkd jobs, as shapes (rfd_jax.tools.aot; those of the
class-incremental run are in aot_calls). Built with the jobs' own functions (teacher.build_fns, dfkd.build_nets /
build_fns / fresh_student / plan_of) over the target's mesh; the teacher of a dfkd config is its
config.teacher_model (float32, as the teacher configs train it), abstract: no checkpoint is read."""

from __future__ import annotations

import functools
import math
import jax
import jax.numpy as jnp

from rfd_jax.engine import checkpointing, optim, parallel, plan as plan_lib
from rfd_jax.models import dfkd_nets
from rfd_jax.tools.aot import run_calls


def _batch(mesh, *shape, dtype=jnp.uint8):
  return jax.ShapeDtypeStruct(shape, dtype, sharding=parallel.batch_sharded(mesh))


def _scalar(mesh, dtype):
  return jax.ShapeDtypeStruct((), dtype, sharding=parallel.replicated(mesh))


def _key(mesh):
  return jax.ShapeDtypeStruct((), jax.eval_shape(lambda: jax.random.key(0)).dtype,
                              sharding=parallel.replicated(mesh))


def _classifier_state(model, image_size: int, momentum: float, mesh):
  from rfd_jax.jobs import teacher  # pylint: disable=g-import-not-at-top
  tx = optim.momentum_transform(momentum)
  return checkpointing.abstract_like(jax.eval_shape(lambda: teacher.create_classifier_state(
      model, jax.random.key(0), image_size, tx)), parallel.replicated(mesh))


def teacher_calls(config, mesh) -> tuple[plan_lib.Plan, list[run_calls.Call]]:
  """The teacher job's plan and calls: the train step per batch, the evaluation per test batch."""
  from rfd_jax.jobs import teacher  # pylint: disable=g-import-not-at-top
  info = teacher.validate(config)
  data = run_calls.abstract_dataset(config.data)
  model = dfkd_nets.build_classifier(config.model.name, info.num_classes, dtype=config.dtype)
  train_step, eval_fn = teacher.build_fns(config, model, mean=data.mean, std=data.std, mesh=mesh)
  state = _classifier_state(model, config.data.image_size, config.optim.momentum, mesh)
  b, e, s = config.data.batch_size, config.data.eval_batch_size, config.data.image_size
  epoch_steps = len(data.train_labels) // b
  plan = plan_lib.teacher_plan(epochs=config.optim.epochs, epoch_steps=epoch_steps,
                               lr=config.optim.lr)
  epochs = config.optim.epochs
  return plan, [
      run_calls.Call("train_step", train_step,
                     (state, {"images": _batch(mesh, b, s, s, 3),
                              "labels": _batch(mesh, b, dtype=jnp.int32)},
                      _key(mesh), _scalar(mesh, jnp.float32)), epochs * epoch_steps, "train step"),
      run_calls.Call("eval_step", eval_fn,
                     (state.variables, _batch(mesh, e, s, s, 3), _scalar(mesh, jnp.int32)),
                     epochs * math.ceil(len(data.test_labels) / e), "eval batch")]


def dfkd_calls(config, mesh) -> tuple[plan_lib.Plan, list[run_calls.Call]]:
  """The dfkd job's plan and calls: per epoch a synthesis round (its init, targets, chunks and the
  pool's quantization), the student's steps, the evaluation."""
  from rfd_jax.jobs import dfkd  # pylint: disable=g-import-not-at-top
  from rfd_jax.data import datasets  # pylint: disable=g-import-not-at-top
  dfkd.validate(config)
  parallel.check_batch_size(config.synthesis.batch_size, mesh, field="config.synthesis.batch_size")
  num_classes = datasets.dataset_info(config.data.dataset).num_classes
  data = run_calls.abstract_dataset(config.data)
  s, syn, epochs = config.data.image_size, config.synthesis, config.optim.epochs
  teacher_model = dfkd_nets.build_classifier(config.teacher_model, num_classes, dtype="float32")
  teacher_vars = _classifier_state(teacher_model, s, config.optim.momentum, mesh).variables
  nets = dfkd.build_nets(config, teacher_model, teacher_vars, mesh)
  fns = dfkd.build_fns(config, nets, mean=data.mean, std=data.std, mesh=mesh)
  student = checkpointing.abstract_like(
      jax.eval_shape(functools.partial(dfkd.fresh_student, config, nets)),
      parallel.replicated(mesh))
  synthesis = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                           nets["synthesis_shape"], nets["synthesis_sharding"])
  chunk = fns["synth_chunk"]
  chunk_args = (synthesis, teacher_vars, student.variables,
                _batch(mesh, syn.batch_size, dtype=jnp.int32), _key(mesh),
                _scalar(mesh, jnp.int32))
  if not hasattr(chunk, "lower"):  # synthesis.loop=host: its jitted step, once per iteration
    chunk, per_call = chunk.step, 1
  else:
    per_call = syn.chunk_steps
  e = config.data.eval_batch_size
  calls = [
      run_calls.Call("synth_init", fns["synth_init"], (_key(mesh),), epochs, "round"),
      run_calls.Call("draw_targets", fns["draw_targets"], (_key(mesh),), epochs, "round"),
      run_calls.Call("synthesis_chunk" if per_call > 1 else "synthesis_step", chunk, chunk_args,
                     epochs * syn.iterations, "synthesis iteration", per_call),
      run_calls.Call("quantize", fns["quantize"], (synthesis.best_images,), epochs, "round"),
      run_calls.Call("student_step", fns["train_step"],
                     (student, _batch(mesh, config.data.batch_size, s, s, 3), teacher_vars,
                      _key(mesh), _scalar(mesh, jnp.float32)),
                     epochs * config.student.kd_steps, "train step"),
      run_calls.Call("eval_step", fns["eval_fn"],
                     (student.variables, _batch(mesh, e, s, s, 3), _scalar(mesh, jnp.int32)),
                     epochs * math.ceil(len(data.test_labels) / e), "eval batch")]
  return dfkd.plan_of(config), calls


def job_calls(config, mesh) -> tuple[plan_lib.Plan, list[run_calls.Call]]:
  """The plan and calls of a teacher or dfkd config."""
  if config.get("job") == "teacher":
    return teacher_calls(config, mesh)
  return dfkd_calls(config, mesh)

