r"""`python -m rfd_jax.tools.diagnose --workdir RUN`: what a class-incremental run's checkpoints say.

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
  WORKDIR/config.json         the run's config (ConfigDict as a dict);
  WORKDIR/metrics.jsonl       train records at log steps and segment ends: "step" (global),
                              "task", "phase" (the segment), "train/*";
  WORKDIR/checkpoints/<step>  `checkpointing.Checkpoints` keyed by the global step; each meta's
                              "step", "layout" and "arrays" are read, the arrays "state",
                              "class_weights", "teacher" and "generator" (with the run axis of
                              one run) restored against `dfcil_run.abstract_arrays`; where a step
                              falls comes from the run's plan (`dfcil_run.build_run`).
The replay mirrors jobs.dfcil.DfcilJob (fresh optimizer and class counts at the main phase; the plan's
epochs, learning rates and batches `datasets.epoch_batches(seed, task, epoch)`; the step key
fold_in(fold_in(key(seed), task + 1), step_in_task); class weights refreshed at epoch ends) and
calls the run's own jitted steps; when that job changes, `replay_task` must follow it, and the check
against metrics.jsonl says whether it did.

Writes WORKDIR/diagnosis.json (or --output) and prints the tables.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

from absl import app, flags, logging
import numpy as np

from rfd_jax.cli import xla_env
from rfd_jax.engine import errors
from rfd_jax.tools import replay as replay_lib

def diagnose(workdir: str, *, confusion_task: int = 2, grad_task: int = 2, grad_batches: int = 4,
             replay: bool = False, replay_every: int = 1) -> dict[str, Any]:
  """Everything in the module docstring, as a dict (tasks 1-based in the output)."""
  reader = replay_lib.RunReader(workdir)
  try:
    spec = reader.spec
    checkpoints, confusion, grads = [], None, []
    for step, meta in reader.metas():
      trained, where, epoch = reader.where(step)
      task = reader.plan.locate(step).segment.task if step < reader.plan.total_steps else (
          spec.num_tasks)
      if trained < 0 or trained >= spec.num_tasks:
        continue
      arrays = reader.arrays(step, meta)
      preds, labels = reader.predictions(arrays["state"].variables, spec.num_seen(trained))
      report = replay_lib.accuracy_report(preds, labels, spec, trained)
      entry = {"checkpoint": step, "saved_in_task": min(task, spec.num_tasks - 1) + 1,
               "phase": where, "epoch": epoch,
               **{k: v for k, v in report.items() if k != "confusion"}}
      checkpoints.append(entry)
      if where == "end of task" and trained == confusion_task - 1:
        confusion = {"checkpoint": step, "task": confusion_task,
                     "classes": [int(c) for c in spec.class_order[:spec.num_seen(trained)]],
                     "matrix": report["confusion"]}
      logging.info("checkpoint %d: %s", step, entry)
      if task == grad_task - 1 and grad_batches > 0:
        g = replay_lib.gradient_report(reader, step, meta, num_batches=grad_batches)
        if g is not None:
          grads.append(g)
    out = {"workdir": os.path.abspath(workdir), "checkpoints": checkpoints,
           "confusion": confusion, "gradients": grads}
    if replay:
      out["replay"] = replay_lib.replay_task(reader, grad_task - 1, every=replay_every)
    return out
  finally:
    reader.close()


def format_diagnosis(result: dict[str, Any]) -> str:
  """The tables of `diagnose`'s result as text."""
  f = lambda v: "  n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:5.1f}"
  lines = [f"run {result['workdir']}", "",
           " step task where             epoch | trained | acc_seen  old    new  | pred. new "
           "(expected) old→new"]
  for c in result["checkpoints"]:
    lines.append(f"{c['checkpoint']:5d} {c['saved_in_task']:4d} {c['phase']:17s} {c['epoch']:5d} "
                 f"| task {c['task']:2d} | {f(c['acc_seen'])}  "
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


def define_flags() -> None:
  """The command's flags, defined only when it runs as a program (a module-level definition would
  clash with rfd_jax.main's --workdir wherever both are imported, e.g. in one test process)."""
  flags.DEFINE_string("workdir", None, "The run's workdir.")
  flags.DEFINE_integer("confusion_task", 2, "1-based task whose end-of-task confusion is printed.")
  flags.DEFINE_integer("grad_task", 2, "1-based task whose checkpoints get gradient norms.")
  flags.DEFINE_integer("grad_batches", 4,
                       "Batches the gradient norms are averaged over (0: no gradient norms).")
  flags.DEFINE_bool("replay", False,
                    "Replay grad_task step by step from its inversion checkpoint.")
  flags.DEFINE_integer("replay_every", 1, "Probe every N-th step of the replay.")
  flags.DEFINE_string("output", "", "JSON output (default WORKDIR/diagnosis.json).")


def main(argv):
  del argv
  xla_env.set_fast_cpu_flags(log=logging.info)  # as rfd_jax.main, so a replay rounds like the run
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  try:
    result = diagnose(FLAGS.workdir, confusion_task=FLAGS.confusion_task,
                      grad_task=FLAGS.grad_task, grad_batches=FLAGS.grad_batches,
                      replay=FLAGS.replay, replay_every=FLAGS.replay_every)
  except errors.ConfigError as e:  # e.g. checkpoints of an earlier layout
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  output = FLAGS.output or os.path.join(FLAGS.workdir, "diagnosis.json")
  with open(output, "w") as f:
    json.dump(result, f)
  print(f"wrote {output}\n")
  print(format_diagnosis(result))


if __name__ == "__main__":
  define_flags()
  app.run(main)
