r"""`python -m rfd_jax.diagnose --workdir RUN`: what a class-incremental run's checkpoints say.

Reads a finished (or stopped) run of `rfd_jax.main` and reports, without training anything:

* per checkpoint: the task and phase it was saved in (the phase the run was in or about to start:
  "finetune" at the fine-tuning's first epoch is the end of the main phase, "start" of task t+1
  the end of task t, "inversion" at the last iteration the start of training), and the student's
  accuracy on the test
  images of the classes seen so far, split into old and new classes, plus the *prediction bias*:
  the share of those test images predicted as one of the newest task's classes (the new classes
  hold 1/(t+1) of the test images after task t, so a share far above that is a bias toward new);
* the per-class confusion matrix at the end of one task (`--confusion_task`, 1-based, default 2);
* per-term gradient norms at the phase boundaries of `--grad_task` (default 2): the learner's loss
  called once per term with that term's weight alone, on `--grad_batches` real + synthetic
  batches, reported as the norm over all trainable parameters and over the heads alone; for rfd
  also DIST's inter- and intra-class parts, and the smallest gap between the two largest old-class
  student logits (DIST's inter term is singular at a tie when there are 2 old classes);
* with `--replay`: task `--grad_task` replayed step by step from its end-of-inversion checkpoint,
  with the run's own batches, keys, learning rates and class weights, recording every step's loss
  terms, per-term gradient norms and logit gaps, and checked against the run's metrics.jsonl.

Dependencies on the run layout, kept small on purpose (adapt here when they change):
  WORKDIR/config.json       the run's config (ConfigDict as a dict);
  WORKDIR/metrics.jsonl     one JSON object per log step: "step", "task", "phase", "train/*";
  WORKDIR/checkpoints/<id>  `checkpointing.Checkpoints`; each checkpoint's JSON meta is read for
                            the keys "task", "phase" (start | inversion | train), "phase_name"
                            (main | finetune | ...), "epoch", "step_in_epoch", "done_steps",
                            "inversion_iteration" and "arrays" (the names of the array trees);
                            the arrays "state" (state.TrainState), "class_weights" (C,),
                            "teacher" ({"params", "batch_stats"} of the model) and "generator"
                            (inversion.GeneratorState) are restored against abstract trees built
                            from the config as `train.restore_run_state` builds them.
The replay mirrors train.py's task loop (fresh optimizer and class counts per task; epochs of
`input_pipeline.epoch_batches(seed, task, epoch)`; step key fold_in(fold_in(key(seed), task + 1),
step_in_task); class weights refreshed at epoch ends; main phase then head fine-tuning); when that
loop changes, `replay_task` must follow it, and the check against metrics.jsonl says whether it did.

Writes WORKDIR/diagnosis.json (or --output) and prints the tables.
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import Any

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from rfd_jax import (checkpointing, config_validation, input_pipeline, inversion, learners,
                     losses, optim, parallel, steps, tasks, xla_env)
from rfd_jax.models.generator import generator_for
from rfd_jax.models.resnet import build_model, mask_unseen
from rfd_jax.state import create_train_state, trainable_mask

NOT_TERMS = ("dist_inter", "dist_intra")  # weights inside DIST, not loss terms of their own


# ---- The run: config, data, model, checkpoints. ----------------------------------------------


class RunReader:
  """A run's config, data, model and checkpoints, read only."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    with open(os.path.join(workdir, "config.json")) as f:
      self.config = ml_collections.ConfigDict(json.load(f))
    config = self.config
    self.spec: tasks.TaskSpec = config_validation.validate(config)
    self.learner = learners.get_learner(config)
    self.model = build_model(config.model, self.spec.sizes, dtype=config.dtype)
    self.generator = generator_for(config.data.image_size)
    self.tx = optim.momentum_transform(config.optim.momentum)
    self.root_key = jax.random.key(config.seed)
    self.data = input_pipeline.load_dataset(config.data)
    self.train_labels = self.spec.to_model_labels(self.data.train_labels).astype(np.int32)
    self.test_labels = self.spec.to_model_labels(self.data.test_labels).astype(np.int32)
    self.checkpoints = checkpointing.Checkpoints(os.path.join(workdir, "checkpoints"), keep=10**6,
                                                 read_only=True)
    self._sharding = parallel.replicated(parallel.make_mesh())
    self._eval = jax.jit(functools.partial(steps.eval_step, model=self.model,
                                           mean=self.data.mean, std=self.data.std))
    self._logits = jax.jit(lambda variables, images: self.model.apply(
        variables, input_pipeline.normalize(images, self.data.mean, self.data.std),
        train=False)[0])

  def close(self) -> None:
    self.checkpoints.close()

  def aux_init(self, task: int) -> Any:
    if self.learner.init_aux is None:
      return {}
    return self.learner.init_aux(jax.random.fold_in(self.root_key, 10_000 + task),
                                 self.model.num_features)

  def _abstract(self) -> dict[str, Any]:
    config = self.config
    state = jax.eval_shape(lambda: create_train_state(
        model=self.model, rng=jax.random.key(0), image_size=config.data.image_size,
        num_classes=self.spec.num_classes, tx=self.tx, aux_params=self.aux_init(0)))
    gen = jax.eval_shape(lambda: inversion.create_generator_state(
        generator=self.generator, rng=jax.random.key(0),
        tx=optax.adam(config.inversion.lr)))
    like = lambda tree: checkpointing.abstract_like(tree, self._sharding)
    return {"state": like(state), "teacher": like(state.variables),
            "generator": like(gen),
            "class_weights": like(jax.ShapeDtypeStruct((self.spec.num_classes,), jnp.float32))}

  def metas(self) -> list[tuple[int, dict]]:
    return [(i, self.checkpoints.read_meta(i)) for i in self.checkpoints.all_ids()]

  def arrays(self, checkpoint_id: int, meta: dict) -> dict[str, Any]:
    abstract = self._abstract()
    return self.checkpoints.read_arrays(checkpoint_id, {k: abstract[k] for k in meta["arrays"]})

  # ---- evaluation ----

  def trained_task(self, meta: dict) -> int:
    """The last task the checkpoint's student has trained on (-1: none)."""
    return meta["task"] if meta["phase"] == "train" else meta["task"] - 1

  def predictions(self, variables, num_seen: int) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, labels) on the test images of the first num_seen classes."""
    seen = self.test_labels < num_seen
    images, labels = self.data.test_images[seen], self.test_labels[seen]
    size = self.config.data.eval_batch_size
    preds = []
    for i in range(0, len(images), size):
      chunk = images[i:i + size]
      padded = np.concatenate([chunk, np.zeros((size - len(chunk),) + chunk.shape[1:],
                                                chunk.dtype)])
      preds.append(np.asarray(self._eval(variables, padded, jnp.int32(num_seen)))[:len(chunk)])
    return np.concatenate(preds), labels


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
  augmentation = input_pipeline.Augmentation.from_config(config.data)

  def probe(state, batch, rng, hparams, teacher_vars, gen_vars, term_weights):
    inputs = steps.distill_inputs(batch, rng, hparams, teacher_vars, gen_vars, model=model,
                                  generator=reader.generator, mean=reader.data.mean,
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
  """The hparams train.py passes the distillation step of `task` in `phase`."""
  spec, config = reader.spec, reader.config
  num_seen, num_old = spec.num_seen(task), int(spec.offsets[task])
  heads = spec.num_tasks if reader.learner.ce_over_all_outputs else task + 1
  weights = {k: jnp.float32(v) for k, v in learners.loss_weights(
      config.distill, config.method, num_old=num_old, num_new=num_seen - num_old).items()}
  return {"lr": jnp.float32(lr), "num_seen": jnp.int32(num_seen),
          "trainable": trainable_mask(state, tasks_seen=heads, backbone=phase == "main"),
          "num_old": jnp.int32(num_old), "weights": weights, "class_weights": class_weights}


def _task_batches(reader: RunReader, task: int, epoch: int) -> list[dict[str, np.ndarray]]:
  config, spec = reader.config, reader.spec
  labels = reader.train_labels
  if config.method == "joint":
    idx = np.flatnonzero(labels < spec.num_seen(task))
  else:
    idx = np.flatnonzero((labels >= spec.offsets[task]) & (labels < spec.offsets[task + 1]))
  batches = input_pipeline.epoch_batches(len(idx), config.data.batch_size, seed=config.seed,
                                         task=task, epoch=epoch)
  return [{"images": reader.data.train_images[idx[b]], "labels": labels[idx[b]]}
          for b in batches]


def _phases(config, learner, task: int) -> list[tuple[str, int, int]]:
  """(name, first epoch, number of epochs) of task `task`, as train.task_phases."""
  main = config.optim.epochs - (config.optim.ft_epochs if learner.has_finetune_phase else 0)
  out = [("main", 0, main)]
  if learner.has_finetune_phase and task > 0 and config.optim.ft_epochs > 0:
    out.append(("finetune", main, config.optim.ft_epochs))
  return out


def gradient_report(reader: RunReader, checkpoint_id: int, meta: dict, *, num_batches: int
                    ) -> dict[str, Any] | None:
  """Per-term gradient norms of the checkpoint's student in the phase it was saved in (a
  checkpoint at the end of the inversion is probed as the main phase's start), averaged over
  `num_batches` batches of its task (epoch 0's first batches, step keys 0..)."""
  task = meta["task"]
  if task == 0 or task >= reader.spec.num_tasks or not reader.learner.uses_inversion:
    return None
  if meta["phase"] == "inversion":
    if meta["inversion_iteration"] < reader.config.inversion.iterations:
      return None
    phase = "main"
  elif meta["phase"] == "train" and meta["phase_name"] in ("main", "finetune"):
    phase = meta["phase_name"]
  else:
    return None
  arrays = reader.arrays(checkpoint_id, meta)
  state = arrays["state"]
  hp = task_hparams(reader, state, task, phase, 0.0, arrays["class_weights"])
  term_weights = _term_weights(hp["weights"], phase, split_dist=True)
  probe = make_probe(reader, phase, tuple(sorted(term_weights)))
  task_key = jax.random.fold_in(reader.root_key, task + 1)
  rows = []
  for i, batch in enumerate(_task_batches(reader, task, 0)[:num_batches]):
    rows.append(jax.device_get(probe(state, batch, jax.random.fold_in(task_key, i), hp,
                                     arrays["teacher"], arrays["generator"].variables,
                                     term_weights)))
  mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
  mean.update({k: float(np.min([r[k] for r in rows])) for k in rows[0] if k.startswith("gap_min")})
  return {"checkpoint": checkpoint_id, "task": task + 1, "phase": phase,
          "epoch": meta["epoch"], "batches": len(rows), **mean}


# ---- replay ------------------------------------------------------------------------------------


def replay_task(reader: RunReader, task: int, *, every: int = 1) -> dict[str, Any]:
  """Re-runs task `task` (0-based) from its end-of-inversion checkpoint with the run's own data
  stream, probing every `every`-th step before its update (see the module docstring).

  Returns {"steps": [per-step records], "evaluations": [after main, after fine-tuning],
  "logged_loss_max_rel_diff": max relative difference of the replay's interval means of
  train/loss against metrics.jsonl (0: the replay reproduced the run)}.
  """
  config = reader.config
  start = [(i, m) for i, m in reader.metas() if m["task"] == task and m["phase"] == "inversion"
           and m["inversion_iteration"] == config.inversion.iterations]
  if not start:
    raise ValueError(f"no end-of-inversion checkpoint of task {task + 1} in {reader.workdir} "
                     "(run with --config.ckpt.keep=1000 to keep them)")
  checkpoint_id, meta = start[-1]
  arrays = reader.arrays(checkpoint_id, meta)
  teacher, gen_vars = arrays["teacher"], arrays["generator"].variables
  state = arrays["state"]
  state = state.replace(aux_params=reader.aux_init(task))
  state = state.replace(opt_state=reader.tx.init(state.trainable),
                        class_counts=jnp.zeros_like(state.class_counts))
  class_weights = jnp.ones((reader.spec.num_classes,), jnp.float32)
  common = dict(model=reader.model, tx=reader.tx, weight_decay=config.optim.weight_decay,
                mean=reader.data.mean, std=reader.data.std,
                augmentation=input_pipeline.Augmentation.from_config(config.data))
  task_key = jax.random.fold_in(reader.root_key, task + 1)
  records, evaluations, step_in_task = [], [], 0
  done_before = meta["done_steps"]
  for phase, first, num in _phases(config, reader.learner, task):
    loss_fn = reader.learner.main_loss if phase == "main" else reader.learner.finetune_loss
    step = jax.jit(functools.partial(steps.distill_train_step, loss_fn=loss_fn,
                                     generator=reader.generator, **common), donate_argnums=(0,))
    probe, term_weights = None, None
    for epoch in range(first, first + num):
      lr = optim.learning_rate(config.optim, epoch=epoch, finetune=phase == "finetune")
      hp = task_hparams(reader, state, task, phase, lr, class_weights)
      if probe is None:
        term_weights = _term_weights(hp["weights"], phase, split_dist=True)
        probe = make_probe(reader, phase, tuple(sorted(term_weights)))
      for batch in _task_batches(reader, task, epoch):
        rng = jax.random.fold_in(task_key, step_in_task)
        record = {"step": done_before + step_in_task + 1, "phase": phase, "epoch": epoch,
                  "lr": lr}
        if step_in_task % every == 0:
          record.update(jax.device_get(probe(state, batch, rng, hp, teacher, gen_vars,
                                             term_weights)))
        state, metrics = step(state, batch, rng, hp, teacher, gen_vars)
        record.update({f"step/{k}": v for k, v in jax.device_get(metrics).items()})
        records.append({k: (v.item() if hasattr(v, "item") else v) for k, v in record.items()})
        step_in_task += 1
      logging.info("replay: task %d %s epoch %d done (%d steps)", task + 1, phase, epoch + 1,
                   step_in_task)
      class_weights = losses.class_balance_weights(state.class_counts,
                                                   jnp.int32(reader.spec.num_seen(task)))
    preds, labels = reader.predictions(state.variables, reader.spec.num_seen(task))
    evaluations.append({"after": phase, **accuracy_report(preds, labels, reader.spec, task)})
  return {"start_checkpoint": checkpoint_id, "steps": records, "evaluations": evaluations,
          "logged_loss_max_rel_diff": _compare_with_log(reader, records)}


def _compare_with_log(reader: RunReader, records: list[dict]) -> float | None:
  """Max relative difference between metrics.jsonl's train/loss (means over log intervals) and
  the replay's means over the same intervals; None when the log has no overlapping record."""
  path = os.path.join(reader.workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    return None
  by_step = {r["step"]: r for r in records}
  every = reader.config.log.every_steps
  diffs = []
  with open(path) as f:
    for line in f:
      logged = json.loads(line)
      if "train/loss" not in logged or logged["step"] not in by_step:
        continue
      # train.py's interval means restart at every epoch: the steps since the last log step
      # that belong to the logged step's epoch.
      window = [by_step.get(s) for s in range(logged["step"] - every + 1, logged["step"] + 1)]
      window = [r for r in window if r is not None and r["epoch"] == logged["epoch"]]
      if window:
        replayed = np.mean([r["step/train/loss"] for r in window])
        diffs.append(abs(replayed - logged["train/loss"]) / max(abs(logged["train/loss"]), 1e-12))
  return float(max(diffs)) if diffs else None


# ---- the report --------------------------------------------------------------------------------


def diagnose(workdir: str, *, confusion_task: int = 2, grad_task: int = 2, grad_batches: int = 4,
             replay: bool = False, replay_every: int = 1) -> dict[str, Any]:
  """Everything in the module docstring, as a dict (tasks 1-based in the output)."""
  reader = RunReader(workdir)
  try:
    spec = reader.spec
    checkpoints, confusion, grads = [], None, []
    for checkpoint_id, meta in reader.metas():
      trained = reader.trained_task(meta)
      if trained < 0 or trained >= spec.num_tasks:
        continue
      arrays = reader.arrays(checkpoint_id, meta)
      preds, labels = reader.predictions(arrays["state"].variables, spec.num_seen(trained))
      report = accuracy_report(preds, labels, spec, trained)
      entry = {"checkpoint": checkpoint_id, "saved_in_task": meta["task"] + 1,
               "phase": meta.get("phase_name", meta["phase"]), "epoch": meta["epoch"],
               "done_steps": meta["done_steps"],
               **{k: v for k, v in report.items() if k != "confusion"}}
      checkpoints.append(entry)
      if meta["phase"] == "start" and trained == confusion_task - 1:
        confusion = {"checkpoint": checkpoint_id, "task": confusion_task,
                     "classes": [int(c) for c in spec.class_order[:spec.num_seen(trained)]],
                     "matrix": report["confusion"]}
      logging.info("checkpoint %d: %s", checkpoint_id, entry)
      if meta["task"] == grad_task - 1 and grad_batches > 0:
        g = gradient_report(reader, checkpoint_id, meta, num_batches=grad_batches)
        if g is not None:
          grads.append(g)
    out = {"workdir": os.path.abspath(workdir), "checkpoints": checkpoints,
           "confusion": confusion, "gradients": grads}
    if replay:
      out["replay"] = replay_task(reader, grad_task - 1, every=replay_every)
    return out
  finally:
    reader.close()


def format_diagnosis(result: dict[str, Any]) -> str:
  """The tables of `diagnose`'s result as text."""
  f = lambda v: "  n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:5.1f}"
  lines = [f"run {result['workdir']}", "",
           "ckpt task phase     epoch  steps | trained | acc_seen  old    new  | pred. new "
           "(expected) old→new"]
  for c in result["checkpoints"]:
    lines.append(f"{c['checkpoint']:4d} {c['saved_in_task']:4d} {c['phase']:9s} {c['epoch']:5d} "
                 f"{c['done_steps']:6d} | task {c['task']:2d} | {f(c['acc_seen'])}  "
                 f"{f(c['old_acc'])}  {f(c['new_acc'])} | {f(c['new_share'])} "
                 f"({f(c['new_share_expected'])}) {f(c['old_predicted_as_new'])}")
  if result["confusion"]:
    conf = result["confusion"]
    lines += ["", f"confusion after task {conf['task']} (rows: true class, columns: predicted; "
              f"original labels {conf['classes']})"]
    lines += ["  " + " ".join(f"{v:4d}" for v in row) for row in conf["matrix"]]
  for g in result["gradients"]:
    lines += ["", f"gradient norms, checkpoint {g['checkpoint']} (task {g['task']}, {g['phase']} "
              f"phase, epoch {g['epoch']}, {g['batches']} batches): term  all  heads"]
    for k in sorted(k for k in g if k.startswith("grad/")):
      name = k[len("grad/"):]
      lines.append(f"  {name:16s} {g[k]:12.4g} {g['grad_head/' + name]:12.4g}")
    lines.append("  " + "  ".join(f"{k}={g[k]:.4g}" for k in sorted(g)
                                  if k.startswith(("train/", "gap_"))))
  if "replay" in result:
    rep = result["replay"]
    lines += ["", f"replay from checkpoint {rep['start_checkpoint']}: max relative difference of "
              f"train/loss against metrics.jsonl {rep['logged_loss_max_rel_diff']}"]
    for e in rep["evaluations"]:
      lines.append(f"  after {e['after']}: acc_seen {f(e['acc_seen'])} old {f(e['old_acc'])} "
                   f"new {f(e['new_acc'])} pred. new {f(e['new_share'])}")
    probed = [r for r in rep["steps"] if any(k.startswith("grad/") for k in r)]
    names = sorted({k for r in probed for k in r if k.startswith("grad/")})
    if names:
      lines.append("  largest per-term gradient norms (step: value):")
    for k in names:
      rows = [r for r in probed if k in r]
      top = sorted(rows, key=lambda r: -r[k])[:3]
      lines.append(f"    {k[5:]:16s} median {np.median([r[k] for r in rows]):.3g}; "
                   + ", ".join(f"{r['step']}: {r[k]:.3g}" for r in top))
  return "\n".join(lines)


FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The run's workdir.")
flags.DEFINE_integer("confusion_task", 2, "1-based task whose end-of-task confusion is printed.")
flags.DEFINE_integer("grad_task", 2, "1-based task whose checkpoints get gradient norms.")
flags.DEFINE_integer("grad_batches", 4,
                     "Batches the gradient norms are averaged over (0: no gradient norms).")
flags.DEFINE_bool("replay", False, "Replay grad_task step by step from its inversion checkpoint.")
flags.DEFINE_integer("replay_every", 1, "Probe every N-th step of the replay.")
flags.DEFINE_string("output", "", "JSON output (default WORKDIR/diagnosis.json).")


def main(argv):
  del argv
  xla_env.set_fast_cpu_flags(log=logging.info)  # as rfd_jax.main, so a replay rounds like the run
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  result = diagnose(FLAGS.workdir, confusion_task=FLAGS.confusion_task,
                    grad_task=FLAGS.grad_task, grad_batches=FLAGS.grad_batches,
                    replay=FLAGS.replay, replay_every=FLAGS.replay_every)
  output = FLAGS.output or os.path.join(FLAGS.workdir, "diagnosis.json")
  with open(output, "w") as f:
    json.dump(result, f)
  print(f"wrote {output}\n")
  print(format_diagnosis(result))


if __name__ == "__main__":
  app.run(main)
