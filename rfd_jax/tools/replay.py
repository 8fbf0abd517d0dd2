"""A class-incremental run's checkpoints re-read and its steps re-run, for `rfd_jax.tools.diagnose`:
RunReader (config, data, plan, checkpoints), the accuracy report of a checkpoint, per-term gradient
norms, and a task replayed step by step with the run's own batches, keys and learning rates.

The replay mirrors the class-incremental job (rfd_jax.jobs.dfcil): when that job changes,
`replay_task` must follow it; its check against metrics.jsonl says whether it did.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rfd_jax.engine import checkpointing, evaluation, parallel
from rfd_jax.cli import config_validation
from rfd_jax.jobs import dfcil_run, steps
from rfd_jax.methods import tasks
from rfd_jax.data import augment, datasets, sources
from rfd_jax.engine.state import trainable_mask

NOT_TERMS = ("dist_inter", "dist_intra")  # weights inside DIST, not loss terms of their own


# ---- The run: config, data, model, checkpoints. ----------------------------------------------


class RunReader:
  """A run's config, data, model, plan and checkpoints, read only."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    with open(os.path.join(workdir, "config.json")) as f:
      self.config = ml_collections.ConfigDict(json.load(f))
    config = self.config
    self.spec: tasks.TaskSpec = config_validation.validate(config)
    mesh = parallel.make_mesh()
    parts = dfcil_run.parts_of(config, mesh)
    self.run = dfcil_run.build_run(parts, workdir, sources.load_dataset(config.data))
    self.learner, self.model, self.data = self.run.learner, self.run.model, self.run.data
    self.plan = self.run.plan
    self.test_labels = self.run.test_labels[0]
    self.checkpoints = checkpointing.Checkpoints(os.path.join(workdir, "checkpoints"), keep=10**6,
                                                 read_only=True)
    self._abstract = dfcil_run.abstract_arrays(parts)

  def close(self) -> None:
    self.checkpoints.close()

  def metas(self) -> list[tuple[int, dict]]:
    return [(i, self.checkpoints.read_meta(i)) for i in self.checkpoints.all_ids()]

  def arrays(self, step: int, meta: dict) -> dict[str, Any]:
    """The arrays of checkpoint `step` (the run's own, without the run axis). ConfigError for a
    checkpoint of an earlier layout."""
    dfcil_run.check_layout(meta, os.path.join(self.checkpoints.directory, str(step)))
    return self.run.step_form(self.checkpoints.read_arrays(
        step, {k: self._abstract[k] for k in meta["arrays"]}))

  def where(self, step: int) -> tuple[int, str, int]:
    """(the last task the student of step `step` has trained on (-1: none), a label of the
    point, the task's epoch): "end of task", "end of inversion", "end of main" (the fine-tuning
    is next), or the segment the step is in."""
    if step >= self.plan.total_steps:
      return self.spec.num_tasks - 1, "end of task", 0
    pos = self.plan.locate(step)
    seg, task = pos.segment, pos.segment.task
    if step in self.plan.task_end_steps():
      return task - 1, "end of task", 0
    if seg.name == "main" and pos.offset == 0:
      return task - 1, "end of inversion" if task else "start", 0
    if seg.name == "finetune" and pos.offset == 0:
      return task, "end of main", pos.epoch
    if seg.name == "inversion":
      return task - 1, "inversion", 0
    return task, seg.name, pos.epoch

  def predictions(self, variables, num_seen: int) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, labels) on the test images of the first num_seen classes."""
    seen = self.test_labels < num_seen
    images, labels = self.data.test_images[seen], self.test_labels[seen]
    preds = evaluation.predict(self.run.fns.eval_step, variables, images, num_seen,
                               self.config.data.eval_batch_size, self.run.mesh)
    return preds, labels


def accuracy_report(predictions: np.ndarray, labels: np.ndarray, spec: tasks.TaskSpec,
                    task: int) -> dict[str, Any]:
  """Old/new accuracy, prediction bias and confusion after training task `task` (0-based).

  new_share: share of the test images predicted as a class of task `task`;
  new_share_expected: share of the test images that are of those classes.
  confusion[i][j]: test images of class i predicted as j (model labels, seen classes only).
  """
  num_seen, num_old = spec.num_seen(task), int(spec.offsets[task])
  new_pred, new_true = predictions >= num_old, labels >= num_old
  correct = predictions == labels
  confusion = np.zeros((num_seen, num_seen), np.int64)
  np.add.at(confusion, (labels, predictions), 1)
  pct = lambda x: float(100.0 * np.mean(x)) if np.size(x) else float("nan")
  return {"task": task + 1, "acc_seen": pct(correct),
          "old_acc": pct(correct[~new_true]) if num_old else None,
          "new_acc": pct(correct[new_true]),
          "new_share": pct(new_pred), "new_share_expected": pct(new_true),
          "old_predicted_as_new": pct(new_pred[~new_true]) if num_old else None,
          "old_wrong_but_old": pct((~correct & ~new_pred)[~new_true]) if num_old else None,
          "confusion": confusion.tolist()}


# ---- gradients ---------------------------------------------------------------------------------


def _term_weights(weights: dict[str, Any], phase: str, split_dist: bool
                  ) -> dict[str, dict[str, Any]]:
  """name → the weights dict with only that loss term on (DIST's inner weights kept, or, for
  "dist_*/inter" and "dist_*/intra", only one of DIST's two parts on)."""
  unused = ("ft_ce",) if phase == "main" else ("ce", "lfd", "rkd")
  terms = [k for k in weights if k not in NOT_TERMS + unused]
  out = {}
  for name in terms:
    only = {k: (v if k == name or k in NOT_TERMS else jnp.zeros_like(v))
            for k, v in weights.items()}
    if split_dist and name.startswith("dist_") and "dist_inter" in weights:
      out[f"{name}/inter"] = {**only, "dist_intra": jnp.zeros_like(weights["dist_intra"])}
      out[f"{name}/intra"] = {**only, "dist_inter": jnp.zeros_like(weights["dist_inter"])}
    else:
      out[name] = only
  return out


def _norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def top2_gap(logits: jax.Array, num_old) -> jax.Array:
  """(B,) gap between the two largest of the first num_old logits (the 2-class DIST tie)."""
  old = jnp.where(jnp.arange(logits.shape[-1]) < num_old, logits, -jnp.inf)
  top = jax.lax.top_k(old, 2)[0]
  return top[:, 0] - top[:, 1]


@functools.lru_cache(maxsize=None)
def make_probe(reader: RunReader, phase: str, names: tuple[str, ...]):
  """A jitted fn (state, batch, rng, hparams, teacher, gen, term_weights) → per-term gradient
  norms (all trainable params, heads only), the loss terms, and the old-logit gaps."""
  config, model = reader.config, reader.model
  loss_fn = reader.learner.main_loss if phase == "main" else reader.learner.finetune_loss
  augmentation = augment.Augmentation.from_config(config.data)

  def probe(state, batch, rng, hparams, teacher_vars, gen_vars, term_weights):
    inputs = steps.distill_inputs(batch, rng, hparams, teacher_vars, gen_vars, model=model,
                                  generator=reader.run.generator, mean=reader.data.mean,
                                  std=reader.data.std, augmentation=augmentation)
    def objective(trainable, weights):
      loss, (_, metrics) = loss_fn(trainable["model"], trainable["aux"], state.batch_stats,
                                   inputs, {**hparams, "weights": weights}, model=model,
                                   teacher_vars=jax.lax.stop_gradient(teacher_vars))
      return loss, metrics
    # One vmapped backward pass for all terms: stacked weight dicts, one row per term.
    stacked = jax.tree.map(lambda *w: jnp.stack(w), *[term_weights[n] for n in names])
    grads, metrics = jax.vmap(
        lambda w: jax.grad(objective, has_aux=True)(state.trainable, w))(stacked)
    metrics = jax.tree.map(lambda m: m[0], metrics)
    out = {}
    for i, name in enumerate(names):
      g = jax.tree.map(lambda x, m: x[i] * m, grads, hparams["trainable"])
      out[f"grad/{name}"] = _norm(g)
      out[f"grad_head/{name}"] = _norm(g["model"]["head"])
    out.update(metrics)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    train = phase == "main"
    for kind, x in (("real", inputs.real), ("syn", inputs.syn)):
      if train:
        (z, _), _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
      else:
        z, _ = model.apply(variables, x, train=False)
      gap = top2_gap(z, hparams["num_old"])
      out[f"gap_min/{kind}"] = jnp.min(gap)
      out[f"gap_below_1e-3/{kind}"] = jnp.sum(gap < 1e-3)
    return out
  return jax.jit(probe)


def task_hparams(reader: RunReader, state, task: int, phase: str, lr: float,
                 class_weights) -> dict[str, Any]:
  """The hparams jobs.dfcil.DfcilJob passes the distillation step of `task` in `phase`."""
  spec, config = reader.spec, reader.config
  num_seen, num_old = spec.num_seen(task), int(spec.offsets[task])
  heads = spec.num_tasks if reader.learner.ce_over_all_outputs else task + 1
  weights = {k: jnp.float32(v) for k, v in reader.learner.loss_weights(
      config.distill, num_old=num_old, num_new=num_seen - num_old).items()}
  return {"lr": jnp.float32(lr), "num_seen": jnp.int32(num_seen),
          "trainable": trainable_mask(state, tasks_seen=heads, backbone=phase == "main"),
          "num_old": jnp.int32(num_old), "weights": weights, "class_weights": class_weights}


def _epoch_rows(reader: RunReader, task: int, epoch: int) -> np.ndarray:
  """The run's batches of (task, epoch) as train-set rows: int (steps, B)."""
  config, idx = reader.config, reader.run.task_indices[0][task]
  return idx[datasets.epoch_batches(len(idx), config.data.batch_size, seed=config.seed,
                                    task=task, epoch=epoch)]


def _task_batches(reader: RunReader, task: int, epoch: int) -> list[dict[str, np.ndarray]]:
  return [{"images": reader.data.train_images[rows], "labels": reader.run.train_labels[0][rows]}
          for rows in _epoch_rows(reader, task, epoch)]


def gradient_report(reader: RunReader, step: int, meta: dict, *, num_batches: int
                    ) -> dict[str, Any] | None:
  """Per-term gradient norms of the checkpoint's student in the phase it is in (a checkpoint at
  the end of the inversion is probed as the main phase's start), averaged over `num_batches`
  batches of its task (epoch 0's first batches, step keys 0..)."""
  if step >= reader.plan.total_steps or not reader.learner.uses_inversion:
    return None
  pos = reader.plan.locate(step)
  task, phase = pos.segment.task, pos.segment.name
  if task == 0 or phase not in ("main", "finetune"):
    return None
  arrays = reader.arrays(step, meta)
  state = arrays["state"]
  hp = task_hparams(reader, state, task, phase, 0.0, arrays["class_weights"])
  term_weights = _term_weights(hp["weights"], phase, split_dist=True)
  probe = make_probe(reader, phase, tuple(sorted(term_weights)))
  task_key = jax.random.fold_in(reader.run.root_key, task + 1)
  rows = []
  for i, batch in enumerate(_task_batches(reader, task, 0)[:num_batches]):
    rows.append(jax.device_get(probe(state, batch, jax.random.fold_in(task_key, i), hp,
                                     arrays["teacher"], arrays["generator"].variables,
                                     term_weights)))
  mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
  mean.update({k: float(np.min([r[k] for r in rows])) for k in rows[0] if k.startswith("gap_min")})
  return {"checkpoint": step, "task": task + 1, "phase": phase, "epoch": pos.epoch,
          "batches": len(rows), **mean}


# ---- replay ------------------------------------------------------------------------------------


def replay_task(reader: RunReader, task: int, *, every: int = 1) -> dict[str, Any]:
  """Re-runs task `task` (0-based) from its end-of-inversion checkpoint with the run's own data
  stream and jitted steps, probing every `every`-th step before its update (see the module
  docstring).

  Returns {"steps": [per-step records], "evaluations": [after main, after fine-tuning],
  "logged_loss_max_rel_diff": max relative difference of the replay's interval means of
  train/loss against metrics.jsonl (0: the replay reproduced the run)}.
  """
  run = reader.run
  segments = [s for s in reader.plan.segments if s.task == task and s.name in ("main", "finetune")]
  metas = dict(reader.metas())
  if task == 0 or not segments or segments[0].start not in metas:
    raise ValueError(f"no end-of-inversion checkpoint of task {task + 1} in {reader.workdir} "
                     f"(step {segments[0].start if segments else '?'}; run with "
                     "--config.ckpt.keep=1000 to keep them)")
  start = segments[0].start
  arrays = reader.arrays(start, metas[start])
  teacher, gen_vars = arrays["teacher"], arrays["generator"].variables
  state = arrays["state"]
  state = state.replace(aux_params=run.aux(task))
  state = state.replace(opt_state=run.tx.init(state.trainable),
                        class_counts=jnp.zeros_like(state.class_counts))
  class_weights = jnp.ones((reader.spec.num_classes,), jnp.float32)
  task_key = jax.random.fold_in(run.root_key, task + 1)
  records, evaluations = [], []
  for segment in segments:
    phase = segment.name
    # the run's own step: on its device-resident data when it had them (the same executable)
    resident = run.train_data is not None
    step_fn = run.fns.train_fn(f"distill_{phase}", resident)
    probe, term_weights = None, None
    for e in range(segment.num_epochs):
      epoch, lr = segment.first_epoch + e, segment.lrs[e]
      hp = task_hparams(reader, state, task, phase, lr, class_weights)
      if probe is None:
        term_weights = _term_weights(hp["weights"], phase, split_dist=True)
        probe = make_probe(reader, phase, tuple(sorted(term_weights)))
      if resident:
        rows = parallel.replicate(_epoch_rows(reader, task, epoch).astype(np.int32), run.mesh)
      for i, batch in enumerate(_task_batches(reader, task, epoch)):
        step_in_task = epoch * segment.epoch_steps + i
        record = {"step": segment.start + e * segment.epoch_steps + i + 1, "phase": phase,
                  "epoch": epoch, "lr": lr}
        if step_in_task % every == 0:
          record.update(jax.device_get(probe(state, batch, jax.random.fold_in(task_key,
                                                                              step_in_task),
                                             hp, teacher, gen_vars, term_weights)))
        if resident:
          state, metrics = step_fn(1, state, run.train_data, rows, np.int32(i), task_key,
                                   np.int32(epoch * segment.epoch_steps), hp, teacher, gen_vars)
        else:
          state, metrics = step_fn(state, batch, task_key, np.int32(step_in_task), hp, teacher,
                                   gen_vars)
        record.update({f"step/{k}": v for k, v in jax.device_get(metrics).items()})
        records.append({k: (v.item() if hasattr(v, "item") else v) for k, v in record.items()})
      logging.info("replay: task %d %s epoch %d done", task + 1, phase, epoch + 1)
      class_weights = run.fns.class_weights(state.class_counts,
                                            jnp.int32(reader.spec.num_seen(task)))
    preds, labels = reader.predictions(state.variables, reader.spec.num_seen(task))
    evaluations.append({"after": phase, **accuracy_report(preds, labels, reader.spec, task)})
  return {"start_checkpoint": start, "steps": records, "evaluations": evaluations,
          "logged_loss_max_rel_diff": compare_with_log(reader, records)}


def compare_with_log(reader: RunReader, records: list[dict]) -> float | None:
  """Max relative difference between metrics.jsonl's train/loss (means over the steps since the
  previous record of the same segment, as rfd_jax.engine.loop writes them) and the replay's means over
  the same steps; None when the log has no overlapping record."""
  path = os.path.join(reader.workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    return None
  by_step = {r["step"]: r for r in records}
  diffs, previous = [], None  # previous: the last train record's step
  with open(path) as f:
    for line in f:
      logged = json.loads(line)
      if "train/loss" not in logged:
        continue
      step = logged["step"]
      segment = reader.plan.locate(step - 1).segment
      first = max(previous if previous is not None else 0, segment.start)
      previous = step
      window = [by_step.get(s) for s in range(first + 1, step + 1)]
      if window and all(r is not None for r in window):
        replayed = np.mean([r["step/train/loss"] for r in window])
        diffs.append(abs(replayed - logged["train/loss"]) / max(abs(logged["train/loss"]), 1e-12))
  return float(max(diffs)) if diffs else None


# ---- the report --------------------------------------------------------------------------------
