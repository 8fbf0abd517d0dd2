"""Tests for rfd_jax.methods.learners and the distillation step: loss weights, one step per learner, head
fine-tuning semantics, and compilations per run (independent of the number of tasks)."""

import functools
import json
import math
import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
import pytest

from configs import digits, imagenet100
from rfd_jax.cli import config_validation
from rfd_jax.jobs import dfcil_run, steps, dfcil
from rfd_jax.methods import learners, rgal_losses
from rfd_jax.engine import errors, optim
from rfd_jax.models.generator import generator_for
from rfd_jax.models.resnet import CifarResNet
from rfd_jax.engine.state import trainable_mask

from random_states import random_train_state
import train_test

SIZE, BATCH = 8, 8


def test_loss_weights_match_the_spec_example():
  cfg = ml_collections.ConfigDict({"lambda_ce": 0.5, "lambda_hkd": 0.15, "lambda_rkd": 0.5,
                                   "lambda_ft_ce": 0.5})
  alpha = math.log2(10 / 2 + 1)  # CIFAR-100 10 × 10: α = 2.585
  for num_old, w_ce in ((10, 0.693), (50, 0.310), (90, 0.231)):
    w = learners.loss_weights(cfg, "rdfcil", num_old=num_old, num_new=10)
    beta = math.sqrt(num_old / 10)
    assert w["ce"] == pytest.approx(w_ce, abs=1e-3)
    assert w["hkd"] == pytest.approx(0.15 * alpha * beta)
    assert w["rkd"] == pytest.approx(0.5 * alpha * beta)
  assert learners.loss_weights(cfg, "abd", num_old=10, num_new=10) == {}


def test_rfd_loss_weights_match_the_spec_examples():
  config = digits.get_config()  # the CIFAR / Tiny λ table
  for num_old, w_ce, w_dist, w_lfd in ((10, 0.693, 0.388, 0.129), (50, 0.310, 1.939, 0.289),
                                       (90, 0.231, 3.490, 0.388)):
    w = learners.loss_weights(config.distill, "rfd", num_old=num_old, num_new=10)
    assert w["ce"] == pytest.approx(w_ce, abs=1e-3)
    assert w["dist_old"] == pytest.approx(w_dist, abs=1e-3) and w["dist_new"] == w["dist_old"]
    assert w["lfd"] == pytest.approx(w_lfd, abs=1e-3)
    assert w["ft_ce"] == 0.5
  imagenet = imagenet100.get_config().distill
  got = [learners.loss_weights(imagenet, "rfd", num_old=n, num_new=10)["lfd"] for n in (10, 50, 90)]
  np.testing.assert_allclose(got, (0.388, 0.867, 1.163), atol=1e-3)


def test_rfd_dist_inter_min_old_drops_the_inter_term_below_it():
  config = digits.get_config()
  assert config.distill.dist_inter_min_old == 3  # digits 5×2: no inter term with 2 old classes
  config.distill.dist_inter_min_old = 2  # the authors' behaviour, the default of the other configs
  w = learners.loss_weights(config.distill, "rfd", num_old=2, num_new=2)
  assert w["dist_inter"] == 1.0 and w["dist_intra"] == 1.0  # RFD's DIST: β = γ = 1
  config.distill.dist_inter_min_old = 3
  assert learners.loss_weights(config.distill, "rfd", num_old=2, num_new=2)["dist_inter"] == 0.0
  assert learners.loss_weights(config.distill, "rfd", num_old=4, num_new=2)["dist_inter"] == 1.0
  config.distill.dist_inter_weight = 0.5
  assert learners.loss_weights(config.distill, "rfd", num_old=4, num_new=2)["dist_inter"] == 0.5
  for field, value in (("dist_inter_min_old", 0), ("dist_intra_weight", -1.0)):
    bad = digits.get_config()
    bad.distill[field] = value
    with pytest.raises(errors.ConfigError, match=f"config.distill.{field}="):
      config_validation.validate(bad)


@pytest.fixture(scope="module", name="setup")
def _setup():
  model = CifarResNet(task_sizes=(2,) * 5, stage_blocks=(1, 1, 1, 1))
  tx = optim.momentum_transform(0.9)
  teacher = random_train_state(model, tx, image_size=SIZE, num_classes=10, seed=1)
  generator = generator_for(SIZE)
  gen_vars = generator.init(jax.random.key(0), jnp.zeros((2, 1000)), train=False)
  rng = np.random.default_rng(0)
  batch = {"images": rng.integers(0, 256, (BATCH, SIZE, SIZE, 3), dtype=np.uint8),
           "labels": rng.integers(4, 6, (BATCH,)).astype(np.int32)}  # task 2: classes 4, 5
  return model, tx, teacher, generator, gen_vars, batch


def _run(setup, method, phase, inversion_kind="standard"):
  model, tx, teacher, generator, gen_vars, batch = setup
  config = digits.get_config()
  config.method = method
  config.inversion.kind = inversion_kind
  learner = learners.get_learner(config)
  loss_fn = learner.main_loss if phase == "main" else learner.finetune_loss
  state = random_train_state(model, tx, image_size=SIZE, num_classes=10, seed=2)
  if method == "rdfcil":
    state = state.replace(aux_params=learners.init_rkd_projections(jax.random.key(3), 64))
  state = state.replace(opt_state=tx.init(state.trainable))
  step = jax.jit(functools.partial(steps.distill_train_step, loss_fn=loss_fn, model=model,
                                   generator=generator, tx=tx, weight_decay=5e-4,
                                   mean=np.full(3, 0.5, np.float32),
                                   std=np.full(3, 0.25, np.float32)))
  hparams = {"lr": jnp.float32(0.05), "num_seen": jnp.int32(6), "num_old": jnp.int32(4),
             "trainable": trainable_mask(state, tasks_seen=3, backbone=phase == "main"),
             "weights": {k: jnp.float32(v) for k, v in learners.loss_weights(
                 config.distill, method, num_old=4, num_new=2).items()},
             "class_weights": jnp.ones(10)}
  teacher_vars = {"params": teacher.params, "batch_stats": teacher.batch_stats}
  new_state, metrics = step(state, batch, jax.random.key(4), hparams, teacher_vars, gen_vars)
  return state, new_state, metrics


def test_replay_triplet_mines_in_the_old_classes_only():
  """Zeroing the new-class logits (however large) leaves the mining of a slice to the old ones."""
  rng = np.random.default_rng(3)
  num_old = 3
  z_syn = jnp.asarray(rng.normal(size=(BATCH, 6)), jnp.float32).at[:, num_old:].set(50.0)
  labels = jnp.asarray([0, 0, 1, 1, 2, 2, 0, 1], jnp.int32)
  pooled = jnp.asarray(rng.normal(size=(BATCH, 5)), jnp.float32)
  inputs = learners.DistillInputs(*([None] * 3), syn_labels=labels, t_real_logits=None,
                                  t_syn_logits=None, t_real_pooled=None, t_syn_pooled=None,
                                  t_real_stage1=None, rng=jax.random.key(0))
  got = learners.rgal_replay_triplet(z_syn, pooled, inputs, jnp.int32(num_old))
  expected = rgal_losses.mined_triplet_loss(
      jax.random.key(0), mining=z_syn[:, :num_old], labels=labels, num_dims=num_old,
      embeddings=[rgal_losses.embedding(pooled)], lower=0.5, upper=1.4, clamp=True)
  assert float(expected) > 0
  np.testing.assert_allclose(float(got), float(expected), rtol=1e-6)


@pytest.mark.parametrize("method, keys", [
    ("rfd", {"train/loss_ce", "train/loss_dist_syn", "train/loss_dist_real", "train/loss_lfd"}),
    ("rdfcil", {"train/loss_ce", "train/loss_hkd", "train/loss_rkd"}),
    ("abd", {"train/loss_ce", "train/loss_global_ce", "train/loss_kd"}),
    ("deepinversion", {"train/loss_ce", "train/loss_kd_real", "train/loss_kd_syn"})])
def test_main_step_of_each_learner(setup, method, keys):
  state, new_state, metrics = _run(setup, method, "main")
  assert keys <= set(metrics) and all(np.isfinite(float(v)) for v in metrics.values())
  assert not np.allclose(new_state.params["stem_conv"]["kernel"], state.params["stem_conv"]["kernel"])
  # real labels (4, 5) and teacher labels of the synthetic batch (among 0..3) are counted
  counts = np.asarray(new_state.class_counts)
  assert counts[4:6].sum() == BATCH and counts[:4].sum() == BATCH and counts[6:].sum() == 0
  if method == "rdfcil":  # the RKD projections are trained with the student
    assert not np.allclose(new_state.aux_params["student_proj"]["kernel"],
                           state.aux_params["student_proj"]["kernel"])


@pytest.mark.parametrize("method, keys", [
    ("rdfcil", {"train/loss_wce", "train/loss_hkd"}),
    ("rfd", {"train/loss_wce", "train/loss_dist_syn", "train/loss_dist_real"})])
def test_finetune_moves_only_the_heads_and_keeps_bn_statistics(setup, method, keys):
  state, new_state, metrics = _run(setup, method, "finetune")
  assert keys <= set(metrics) and "train/loss_lfd" not in metrics
  unchanged = lambda a, b: all(np.array_equal(x, y) for x, y in
                               zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  backbone = lambda p: {k: v for k, v in p.items() if k != "head"}
  assert unchanged(backbone(state.params), backbone(new_state.params))
  assert unchanged(state.batch_stats, new_state.batch_stats)  # BN on running statistics
  assert unchanged(state.aux_params, new_state.aux_params)
  assert not unchanged(state.params["head"]["task0_out"], new_state.params["head"]["task0_out"])
  assert unchanged(state.params["head"]["task3_out"], new_state.params["head"]["task3_out"])


def test_rfd_passes_thread_bn_statistics_real_then_synthetic_then_hybrid(setup):
  """The loss's BN running stats equal three separate train-mode passes in the original's order;
  the hybrid pass (stages 2-4 on the teacher's stage-1 map) leaves the stem and stage 1 alone."""
  model, _, teacher, _, _, _ = setup
  student = random_train_state(model, optim.momentum_transform(0.9), image_size=SIZE,
                               num_classes=10, seed=5)
  rng = np.random.default_rng(1)
  real, syn = (jnp.asarray(rng.normal(size=(BATCH, SIZE, SIZE, 3)), jnp.float32) for _ in "rs")
  t_vars = {"params": teacher.params, "batch_stats": teacher.batch_stats}
  t_logits, t_feats = model.apply(t_vars, jnp.concatenate([real, syn]), train=False)
  inputs = learners.DistillInputs(
      real=real, labels=jnp.full((BATCH,), 4, jnp.int32), syn=syn,
      syn_labels=jnp.zeros((BATCH,), jnp.int32), t_real_logits=t_logits[:BATCH],
      t_syn_logits=t_logits[BATCH:], t_real_pooled=t_feats["pooled"][:BATCH],
      t_syn_pooled=t_feats["pooled"][BATCH:], t_real_stage1=t_feats["stage1"][:BATCH])
  config = digits.get_config()
  hparams = {"num_old": jnp.int32(4), "num_seen": jnp.int32(6), "weights": learners.loss_weights(
      config.distill, "rfd", num_old=4, num_new=2)}
  _, (stats, _) = learners.rfd_main_loss(student.params, {}, student.batch_stats, inputs, hparams,
                                         model=model, teacher_vars=t_vars, temperature=4.0)

  def train_pass(batch_stats, x, **kwargs):
    _, updates = model.apply({"params": student.params, "batch_stats": batch_stats}, x,
                             train=True, mutable=["batch_stats"], **kwargs)
    return updates["batch_stats"]

  after_two = train_pass(train_pass(student.batch_stats, real), syn)
  expected = train_pass(after_two, t_feats["stage1"][:BATCH], method=model.from_stage1)
  chex.assert_trees_all_close(stats, expected, rtol=1e-5, atol=1e-6)
  for shallow in ("stem_bn", "stage1"):
    chex.assert_trees_all_equal(stats[shallow], after_two[shallow])
  for deep in ("stage2", "stage3", "stage4"):
    assert not np.allclose(jax.tree.leaves(stats[deep])[0], jax.tree.leaves(after_two[deep])[0])


def test_each_step_compiles_once_per_run_whatever_the_number_of_tasks(monkeypatch, tmp_path):
  """A 3-task run (2 inversions, 2 × main + fine-tuning phases) compiles every jitted function
  exactly once: the task index, class counts, teacher and generator are data, not shapes, so the
  count cannot grow with the number of tasks. Runs with RGAL inversion, the largest step graphs."""
  captured = []
  original = steps.build_step_fns

  def capture(*args, **kwargs):
    fns = original(*args, **kwargs)
    captured.append(fns)
    return fns

  monkeypatch.setattr(steps, "build_step_fns", capture)
  config = train_test.tiny_config("rfd")
  config.inversion.kind = "rgal"  # the RGAL inversion and replay triplet, end to end
  config.data.num_tasks = 3  # 2 inversions, main and fine-tuning phases: a count would grow
  config.data.task_split = "rdfcil"  # 4, 3, 3 classes: task sizes are data too
  config.inversion.chunk_steps = 2
  config.log.every_steps = 1  # every step's losses in metrics.jsonl
  config.log.images = True  # and check the replay grids of an inverting run here
  results = dfcil.train_and_evaluate(config, str(tmp_path))
  assert len(results["acc_matrix"]) == 3
  fns = captured[-1]
  counts = {name: fn._cache_size() for name, fn in (  # pylint: disable=protected-access
      ("ce", fns.train_fn("ce", True)), ("main", fns.train_fn("distill_main", True)),
      ("finetune", fns.train_fn("distill_finetune", True)),  # device-resident, host loop
      ("eval", fns.eval_step),
      ("inversion", fns.inversion_chunk.step), ("class_weights", fns.class_weights))}
  assert counts == {"ce": 1, "main": 1, "finetune": 1, "eval": 1, "inversion": 1,
                    "class_weights": 1}, counts
  with open(tmp_path / "metrics.jsonl") as f:
    logged = [json.loads(line) for line in f]
  # both RGAL terms are in the objectives: the inversion triplet and the main phase's replay
  # triplet (0 here, where the tiny teacher gives most replays one label; its value is tested in
  # test_replay_triplet_mines_in_the_old_classes_only)
  assert any("inversion/loss_triplet" in r for r in logged)
  triplets = [r["train/loss_triplet"] for r in logged if "train/loss_triplet" in r]
  assert len(triplets) >= 2 and all(np.isfinite(t) for t in triplets)
  grids = sorted(f for f in os.listdir(tmp_path) if f.startswith("synthetic_task"))
  assert grids == [f"synthetic_task{t}.png" for t in range(2, 4)]  # tasks 2-3, numbered from 1
  assert Image.open(tmp_path / grids[0]).size == (800, 840)  # 64 images, 8 × 8


def _distill_inputs(model, teacher, num_old, seed=1):
  rng = np.random.default_rng(seed)
  real, syn = (jnp.asarray(rng.normal(size=(BATCH, SIZE, SIZE, 3)), jnp.float32) for _ in "rs")
  t_vars = {"params": teacher.params, "batch_stats": teacher.batch_stats}
  t_logits, t_feats = model.apply(t_vars, jnp.concatenate([real, syn]), train=False)
  t_logits = np.where(np.arange(10) < num_old, np.asarray(t_logits), -1e9)
  labels = jnp.asarray(rng.integers(num_old, num_old + 2, BATCH), jnp.int32)
  syn_labels = jnp.asarray(np.argmax(t_logits[BATCH:], axis=-1), jnp.int32)
  return t_vars, learners.DistillInputs(
      real=real, labels=labels, syn=syn, syn_labels=syn_labels,
      t_real_logits=jnp.asarray(t_logits[:BATCH]), t_syn_logits=jnp.asarray(t_logits[BATCH:]),
      t_real_pooled=t_feats["pooled"][:BATCH], t_syn_pooled=t_feats["pooled"][BATCH:],
      t_real_stage1=t_feats["stage1"][:BATCH])


def _np_log_softmax(z):
  z = z - z.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def test_deepinversion_is_abds_deepinversiongenbn(setup):
  """CE over the seen classes on the real rows only; KD on the real rows over the old classes and
  on the synthetic rows against the teacher's softmax zero-padded over the seen classes; T = 2,
  no T² factor (ABD's learners/datafree.py update_model, learners/default.py loss_fn_kd)."""
  model, _, teacher, _, _, _ = setup
  num_old, num_seen, temp, mu = 4, 6, 2.0, 1.0
  student = random_train_state(model, optim.momentum_transform(0.9), image_size=SIZE,
                               num_classes=10, seed=6)
  t_vars, inputs = _distill_inputs(model, teacher, num_old)
  hparams = {"num_old": jnp.int32(num_old), "num_seen": jnp.int32(num_seen)}
  loss, (_, metrics) = learners.deepinversion_loss(
      student.params, {}, student.batch_stats, inputs, hparams, model=model, teacher_vars=t_vars,
      mu=mu, temperature=temp)
  (z, _), _ = model.apply({"params": student.params, "batch_stats": student.batch_stats},
                          jnp.concatenate([inputs.real, inputs.syn]), train=True,
                          mutable=["batch_stats"])
  z = np.asarray(z, np.float64)
  z_real, z_syn = z[:BATCH, :num_seen], z[BATCH:, :num_seen]
  labels = np.asarray(inputs.labels)
  ce = -_np_log_softmax(z_real)[np.arange(BATCH), labels].mean()
  q_real = np.exp(_np_log_softmax(np.asarray(inputs.t_real_logits)[:, :num_old] / temp))
  q_syn = np.exp(_np_log_softmax(np.asarray(inputs.t_syn_logits)[:, :num_old] / temp))
  kd_real = -(q_real * _np_log_softmax(z_real[:, :num_old] / temp)).sum(1).mean()
  padded = np.concatenate([q_syn, np.zeros((BATCH, num_seen - num_old))], axis=1)
  kd_syn = -(padded * _np_log_softmax(z_syn / temp)).sum(1).mean()
  np.testing.assert_allclose(float(metrics["train/loss_ce"]), ce, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["train/loss_kd_real"]), kd_real, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["train/loss_kd_syn"]), kd_syn, rtol=1e-5)
  np.testing.assert_allclose(float(loss), ce + mu * (kd_real + kd_syn), rtol=1e-5)


@pytest.mark.parametrize("all_outputs", [True, False])
def test_abd_global_ce_and_its_double_bn_update(setup, all_outputs):
  """ABD's global CE is on the head's output over every class with its own head (a single Linear
  over all classes; unseen ones included), over the seen classes otherwise; its second no-grad
  train-mode pass updates BN twice."""
  model, _, teacher, _, _, _ = setup
  num_old, num_seen = 4, 6
  student = random_train_state(model, optim.momentum_transform(0.9), image_size=SIZE,
                               num_classes=10, seed=7)
  t_vars, inputs = _distill_inputs(model, teacher, num_old, seed=2)
  hparams = {"num_old": jnp.int32(num_old), "num_seen": jnp.int32(num_seen)}
  _, (stats, metrics) = learners.abd_loss(student.params, {}, student.batch_stats, inputs,
                                          hparams, model=model, teacher_vars=t_vars, mu=0.1,
                                          all_outputs=all_outputs)
  x = jnp.concatenate([inputs.real, inputs.syn])

  def train_pass(batch_stats):
    (z, _), updates = model.apply({"params": student.params, "batch_stats": batch_stats}, x,
                                  train=True, mutable=["batch_stats"])
    return np.asarray(z, np.float64), updates["batch_stats"]

  z, once = train_pass(student.batch_stats)
  _, twice = train_pass(once)
  chex.assert_trees_all_close(stats, twice, rtol=1e-5, atol=1e-6)
  labels = np.concatenate([np.asarray(inputs.labels), np.asarray(inputs.syn_labels)])
  weight = np.where(labels < num_old, num_old / num_seen, 1 - num_old / num_seen)
  z = z if all_outputs else z[:, :num_seen]
  global_ce = (weight * -_np_log_softmax(z)[np.arange(2 * BATCH), labels]).mean()
  np.testing.assert_allclose(float(metrics["train/loss_global_ce"]), global_ce, rtol=1e-5)


@pytest.mark.parametrize("method,main_epochs,has_ft", [
    ("rfd", 16, True), ("rdfcil", 16, True), ("abd", 20, False), ("deepinversion", 20, False),
    ("finetune", 20, False), ("joint", 20, False)])
def test_learners_without_finetuning_train_every_epoch(method, main_epochs, has_ft):
  """Every learner but rfd / rdfcil trains all optim.epochs of each task as its main phase."""
  config = digits.get_config()  # 20 epochs, 4 of them head fine-tuning
  config.method = method
  learner = learners.get_learner(config)
  segments = dfcil_run.make_plan(config, learner, [7] * 5).segments
  by_task = lambda t: [(s.name, s.num_epochs) for s in segments
                       if s.task == t and s.name in ("main", "finetune")]
  assert by_task(0) == [("main", main_epochs)]
  assert by_task(1) == [("main", main_epochs)] + ([("finetune", 4)] if has_ft else [])


def test_abd_trains_every_head_only_with_its_own_head():
  config = digits.get_config()
  config.method = "abd"
  assert not learners.get_learner(config).ce_over_all_outputs  # RFD's bias-free per-task heads
  config.model.head = "abd"
  assert learners.get_learner(config).ce_over_all_outputs
