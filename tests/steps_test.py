"""Tests for rfd_jax.jobs.steps: one train step on mock CIFAR data, masking of unseen heads, eval, the
distillation inputs."""

import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rfd_jax.engine import evaluation, optim
from rfd_jax.jobs import steps
from rfd_jax.methods import tasks
from rfd_jax.data import augment, sources
from rfd_jax.models import resnet
from rfd_jax.engine.state import create_train_state, trainable_mask

import distill_reference
from fake_tfds import mock_cifar, write_placeholder_prepared_dir


@pytest.fixture(scope="module", name="cifar_batch")
def _cifar_batch(tmp_path_factory):
  """A batch of 16 mock CIFAR-10 train images with model labels of tasks 0 and 1 (seed0 order)."""
  data_dir = tmp_path_factory.mktemp("tfds")
  write_placeholder_prepared_dir(data_dir, "cifar10")
  cfg = ml_collections.ConfigDict({"dataset": "cifar10", "data_dir": str(data_dir),
                                   "image_size": 32})
  with mock_cifar(64):
    data = sources.load_dataset(cfg)
  spec = tasks.make_task_spec(num_classes=10, num_tasks=5, order="seed0")
  labels = spec.to_model_labels(data.train_labels).astype(np.int32)
  keep = np.flatnonzero(labels < spec.num_seen(1))[:16]
  return data, {"images": data.train_images[keep], "labels": labels[keep]}


def _setup(data):
  model = resnet.CifarResNet(task_sizes=(2,) * 5)
  tx = optim.momentum_transform(0.9)
  state = create_train_state(model=model, rng=jax.random.key(0), image_size=32, num_classes=10,
                             tx=tx)
  step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, weight_decay=5e-4,
                                   mean=data.mean, std=data.std, augmentation=None))
  return model, state, step


def test_one_train_step_on_mock_cifar(cifar_batch):
  data, batch = cifar_batch
  model, state, step = _setup(data)
  hparams = {"lr": jnp.float32(0.1), "num_seen": jnp.int32(4),
             "trainable": trainable_mask(state, tasks_seen=2, backbone=True)}
  new_state, metrics = step(state, batch, jax.random.key(1), hparams)

  # the reported loss is the CE over the 4 seen classes, recomputed here in numpy
  x = augment.normalize(batch["images"], data.mean, data.std)
  (logits, _), _ = model.apply(state.variables, x, train=True, mutable=["batch_stats"])
  z = np.asarray(logits, np.float64)[:, :4]
  log_probs = z - z.max(1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
  expected = -log_probs[np.arange(len(z)), batch["labels"]].mean()
  np.testing.assert_allclose(metrics["train/loss"], expected, rtol=1e-5)
  chex.assert_shape(metrics["train/acc"], ())
  assert int(new_state.step) == 1

  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, new_state.params)
  head = changed["head"]
  assert head["task0_out"]["kernel"] and head["task1_hidden"]["kernel"]
  for t in (2, 3, 4):  # unseen heads: no gradient, no weight decay, no momentum
    assert not head[f"task{t}_out"]["kernel"] and not head[f"task{t}_hidden"]["kernel"]
  assert changed["stem_conv"]["kernel"] and changed["stage3"]["block2"]["conv_a"]["kernel"]
  assert not np.allclose(new_state.batch_stats["stem_bn"]["mean"],
                         state.batch_stats["stem_bn"]["mean"])
  # class counts feed R-DFCIL's class-balanced fine-tuning CE
  np.testing.assert_array_equal(new_state.class_counts,
                                np.bincount(batch["labels"], minlength=10))


def test_frozen_backbone_mask_only_moves_heads(cifar_batch):
  data, batch = cifar_batch
  _, state, step = _setup(data)
  hparams = {"lr": jnp.float32(0.1), "num_seen": jnp.int32(4),
             "trainable": trainable_mask(state, tasks_seen=2, backbone=False)}
  new_state, _ = step(state, batch, jax.random.key(1), hparams)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, new_state.params)
  assert not any(jax.tree.leaves({k: v for k, v in changed.items() if k != "head"}))
  assert changed["head"]["task1_out"]["kernel"]


def test_eval_step_predicts_only_seen_classes(cifar_batch):
  data, batch = cifar_batch
  model, state, _ = _setup(data)
  # bias the unseen head strongly: masking must still keep predictions among the seen classes
  params = jax.tree_util.tree_map_with_path(
      lambda p, v: v + 1.0 if "task4" in jax.tree_util.keystr(p) else v, state.params)
  eval_fn = jax.jit(functools.partial(evaluation.eval_step, model=model, mean=data.mean, std=data.std))
  preds = eval_fn({"params": params, "batch_stats": state.batch_stats}, batch["images"],
                  jnp.int32(4))
  chex.assert_shape(preds, (16,))
  chex.assert_type(preds, jnp.int32)
  assert int(preds.max()) < 4


def test_distill_inputs_are_those_of_one_concatenated_teacher_pass():
  """The teacher runs over real and synthetic rows interleaved (issue #16) instead of concatenated:
  in eval mode every row is independent, so every input of the RFD learner is bit for bit the
  same, t_real_stage1 (the first B rows of the concatenated pass) included."""
  static, args = distill_reference.tiny_rfd_setup()
  new = distill_reference.jitted(steps.distill_inputs, static)(*args)
  old = distill_reference.jitted(distill_reference.concatenated_distill_inputs, static)(*args)
  for name in new._fields:
    if name != "rng":
      np.testing.assert_array_equal(getattr(new, name), getattr(old, name), err_msg=name)
  np.testing.assert_array_equal(jax.random.key_data(new.rng), jax.random.key_data(old.rng))
  b = distill_reference.BATCH
  chex.assert_shape([new.t_real_logits, new.t_syn_logits], (b, 10))
  chex.assert_shape(new.t_real_stage1, (b, 8, 8, 16))
  # real and synthetic rows differ, so a swapped or shuffled split would not pass the comparison
  assert not np.allclose(new.t_real_logits, new.t_syn_logits)
  assert not np.allclose(new.t_real_stage1[1:], new.t_real_stage1[:-1])
  assert np.all(np.asarray(new.t_real_logits)[:, distill_reference.NUM_OLD:] < -1e8)  # masked
