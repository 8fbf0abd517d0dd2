"""Each learner's total loss on a tiny ResNet, called through `learners.get_learner`: in float64,
its gradient against central finite differences along random directions in parameter space, every
loss term depending on the trainables, and the gradient reaching exactly the parameters it must; in
float32, as training computes it, the same gradient leaf by leaf (rkd_angle's float32 gradient was
exactly 0, leaving R-DFCIL's projections untrained: a bug a finiteness check never catches).

The methods come from config_validation.METHODS and the phases from the Learner, so a changed or
new learner loss is covered without touching this file. BN runs in train mode in the main phases:
deterministic, so finite differences apply.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits
from rfd_jax.cli import config_validation
from rfd_jax.methods import learners
from rfd_jax.engine import optim
from rfd_jax.models.resnet import CifarResNet, mask_unseen

from gradient_checks import (FAST_COMPILE, assert_differences_match, directions_for, flatten,
                             frozen_differences, grad_and_held, leaf_norms, to_float64)
from random_states import random_train_state

SIZE, BATCH, NUM_OLD, NUM_SEEN = 8, 8, 4, 6  # task 2 of 4 × 2 classes: old 0..3, new 4, 5
UNSEEN_HEADS = ("task3_",)
# Two stages of one block: the hybrid path (stages 2..) is stage 2. A case's compilation is most of
# its time, and it grows with the depth.
MODELS = {dtype: CifarResNet(task_sizes=(2,) * 4, stage_blocks=(1, 1), widths=(4, 8), dtype=dtype)
          for dtype in (jnp.float32, jnp.float64)}
# Loss terms (metric names) and parameters each must depend on (its finite differences along a
# random direction within them are nonzero). RKD: both projections and the backbone; LFD: its
# student side (the stem, through the real images' pooled feature) and the hybrid path (stages 2..
# only). The projections get gradient from RKD alone, so their gradient (checked for every
# trainable leaf, in float64 and float32) is RKD's.
TERM_DEPENDS_ON = {
    "train/loss_rkd": ("['aux']['student_proj']['kernel']", "['aux']['teacher_proj']['kernel']",
                       "['params']['stem_conv']"),
    "train/loss_lfd": ("['params']['stem_conv']", "['params']['stage2']['block0']['conv_b']"),
}
PATHS = sorted({path for paths in TERM_DEPENDS_ON.values() for path in paths})


def _config(method, inversion_kind):
  config = digits.get_config()
  config.method = method
  config.inversion.kind = inversion_kind
  return config


def _cases():
  """(method, inversion kind, phase) for every phase of every learner with a loss. rfd's main
  phase runs with RGAL inversion only: its loss is the standard one plus the replay triplet."""
  cases = []
  for method in config_validation.METHODS:
    kind = "rgal" if method == "rfd" else "standard"
    learner = learners.get_learner(_config(method, kind))
    for phase, loss_fn in (("main", learner.main_loss), ("finetune", learner.finetune_loss)):
      if loss_fn is not None:
        cases.append(pytest.param(method, kind, phase, id=f"{method}-{phase}"))
  return cases


@pytest.fixture(scope="module", name="states")
def _states():
  tx = optim.momentum_transform(0.9)
  student, teacher = (random_train_state(MODELS[jnp.float32], tx, image_size=SIZE,
                                         num_classes=8, seed=seed, scale=0.3) for seed in (2, 1))
  images = np.random.default_rng(0).normal(size=(2, BATCH, SIZE, SIZE, 3))
  return student, teacher, images


@functools.partial(jax.jit, static_argnames="dtype", compiler_options=FAST_COMPILE)
def _inputs(teacher_vars, images, dtype):
  """DistillInputs as distill_train_step builds them (teacher in eval mode, masked to the old
  classes), the synthetic labels fixed so that the replay triplet has pairs."""
  real, syn = images.astype(dtype)
  t_logits, t_feats = MODELS[dtype].apply(teacher_vars, jnp.concatenate([real, syn]), train=False)
  t_logits = mask_unseen(t_logits, NUM_OLD)
  return learners.DistillInputs(
      real=real, labels=jnp.asarray([4, 5] * (BATCH // 2), jnp.int32),
      syn=syn, syn_labels=jnp.asarray(np.arange(BATCH) // 2 % NUM_OLD, jnp.int32),
      t_real_logits=t_logits[:BATCH], t_syn_logits=t_logits[BATCH:],
      t_real_pooled=t_feats["pooled"][:BATCH], t_syn_pooled=t_feats["pooled"][BATCH:],
      t_real_stage1=t_feats["stage1"][:BATCH], rng=jax.random.key(4))


def _loss_terms(loss_fn, dtype, teacher_vars, batch_stats, hparams, images, unflatten):
  """(flat trainables, key) ↦ {"total": the loss, every "…loss…" metric}, in `dtype`; the key is
  that of the losses that sample."""
  inputs = _inputs(teacher_vars, images, dtype)

  def loss_terms(flat_trainable, rng):
    tree = unflatten(flat_trainable)
    loss, (_, metrics) = loss_fn(tree["params"], tree["aux"], batch_stats,
                                 inputs._replace(rng=rng), hparams, model=MODELS[dtype],
                                 teacher_vars=teacher_vars)
    return {"total": loss, **{k: v for k, v in metrics.items() if "loss" in k}}

  return loss_terms


def _directions_within(trainable, paths, seed=5):
  """(len(paths), N): for each path, a random unit vector over the leaves under it (0 elsewhere,
  and 0 if there are none), in `flatten(trainable)` order."""
  rng = np.random.default_rng(seed)
  rows = []
  for path in paths:
    row, _ = flatten(jax.tree_util.tree_map_with_path(
        lambda p, leaf, path=path: (jax.tree_util.keystr(p).startswith(path)
                                    * rng.standard_normal(np.shape(leaf))), trainable))
    rows.append(row / max(np.linalg.norm(row), 1e-300))  # 0 if the learner has no such leaf
  return np.stack(rows)


@pytest.mark.parametrize("method, inversion_kind, phase", _cases())
def test_learner_loss_gradient(states, method, inversion_kind, phase):
  student, teacher, images = states
  config = _config(method, inversion_kind)
  learner = learners.get_learner(config)
  loss_fn = learner.main_loss if phase == "main" else learner.finetune_loss
  hparams = {"num_old": jnp.int32(NUM_OLD), "num_seen": jnp.int32(NUM_SEEN),
             "weights": learners.loss_weights(config.distill, method, num_old=NUM_OLD,
                                              num_new=NUM_SEEN - NUM_OLD),
             "class_weights": jnp.asarray(np.random.default_rng(1).uniform(0.5, 2.0, size=8))}
  num_features = MODELS[jnp.float32].num_features
  aux = learner.init_aux(jax.random.key(3), num_features) if learner.init_aux else {}
  arguments = ({"params": teacher.params, "batch_stats": teacher.batch_stats}, student.batch_stats,
               hparams, images)
  trainable = {"params": student.params, "aux": aux}
  rng = jax.random.key(4)

  # float32, as training computes it. Whether the loss samples: whether its key is used.
  flat32, unflatten32 = flatten(trainable)
  loss_terms = _loss_terms(loss_fn, jnp.float32, *arguments, unflatten32)
  traced = jax.jit(jax.grad(lambda x, key: loss_terms(x, key)["total"]),
                   compiler_options=FAST_COMPILE).trace(flat32, rng)
  samples = any(traced.jaxpr.jaxpr.invars[-1] in eqn.invars for eqn in traced.jaxpr.jaxpr.eqns)
  grad32 = np.asarray(traced.lower().compile()(flat32, rng))

  with jax.enable_x64(True):
    args64, trainable64 = to_float64((arguments, trainable))
    flat, unflatten = flatten(trainable64)
    loss_terms = functools.partial(_loss_terms(loss_fn, jnp.float64, *args64, unflatten), rng=rng)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run(x):
      """The gradient of the total, and every term's finite differences along two random
      directions, the gradient's and those within PATHS, all in one compilation. The stop_gradients
      are held (the frozen backbone of head fine-tuning, ABD's detached features, RGAL's mining)."""
      grad, values, held = grad_and_held(loss_terms, x, lambda terms: terms["total"])
      directions = jnp.concatenate([directions_for(grad), _directions_within(trainable, PATHS)])
      return values, grad, directions, frozen_differences(loss_terms, x, directions, 1e-6, held)

    values, grad, directions, differences = jax.tree.map(np.asarray, run(flat))
  assert values["total"].dtype == np.float64
  assert_differences_match(grad, directions, differences["total"], rtol=1e-5)

  terms = [term for term in values if term != "total"]
  assert len(terms) >= 2, f"no loss terms in the metrics: {sorted(values)}"
  for term in terms:  # every term depends on the trainables, and RKD and LFD on PATHS
    assert np.abs(differences[term][:2]).max() > 1e-7, (term, differences[term])
    for path in TERM_DEPENDS_ON.get(term, ()):
      assert abs(differences[term][3 + PATHS.index(path)]) > 1e-7, (term, path, differences[term])

  grads, grads32 = leaf_norms(unflatten(grad)), leaf_norms(unflatten32(grad32))
  errors32 = leaf_norms(unflatten(grad32.astype(np.float64) - grad))
  wrong = {}  # which trainables the gradient reaches, in both precisions
  for path, norm in grads.items():
    norm32, error32 = grads32[path], errors32[path]
    if any(head in path for head in UNSEEN_HEADS) and not learner.ce_over_all_outputs:
      ok = norm == 0.0 and norm32 == 0.0  # masked classes: no gradient at all
    elif phase == "finetune" and not path.startswith("['params']['head']"):
      ok = norm == 0.0 and norm32 == 0.0  # frozen backbone, unused aux params
    elif path.startswith("['aux']") and path.endswith("['bias']") and method == "rdfcil":
      # rkd_angle sees differences of projected rows only: a shared bias cannot change it
      scale = grads["['aux']['student_proj']['kernel']"]
      ok = norm < 1e-10 * scale and norm32 < 1e-4 * scale
    else:  # float32 agrees with float64 (and so is not 0); loosely if the loss samples: the two
      # precisions draw different samples (RGAL's mining draws Gumbel noise in the logits' dtype)
      ok = norm > 1e-6 and error32 <= (0.5 if samples else 1e-2) * norm
    if not ok:
      wrong[path] = f"|grad| {norm:.3g} (float32: {norm32:.3g}, off by {error32:.3g})"
  assert not wrong, wrong
