"""Tests for rfd_jax.methods.inversion: BN-input statistics, and that inversion against a small teacher
trained on digits lowers the loss and makes the teacher see all of its classes."""

import functools

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rfd_jax.methods import inversion
from rfd_jax.engine import evaluation, optim
from rfd_jax.jobs import steps
from rfd_jax.data import sklearn_digits
from rfd_jax.models.generator import generator_for
from rfd_jax.models.resnet import CifarResNet
from rfd_jax.engine.state import create_train_state, trainable_mask

SIZE, NUM_OLD = 16, 4
WEIGHTS = {"ce": 1.0, "balance": 1.0, "smoothness": 1e-3, "bn": 50.0, "ce_temperature": 1000.0}


@pytest.fixture(scope="module", name="teacher")
def _teacher():
  """ResNet-32 on 16-px digits 0..3 (model labels = digits): 100 steps at lr 0.05, 40 at 0.005."""
  data = sklearn_digits.load_digits(SIZE)
  keep = np.flatnonzero(data.train_labels < NUM_OLD)
  model = CifarResNet(task_sizes=(NUM_OLD, 10 - NUM_OLD))
  tx = optim.momentum_transform(0.9)
  state = create_train_state(model=model, rng=jax.random.key(0), image_size=SIZE, num_classes=10,
                             tx=tx)
  step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, weight_decay=5e-4,
                                   mean=data.mean, std=data.std))
  hparams = {"lr": jnp.float32(0.05), "num_seen": jnp.int32(NUM_OLD),
             "trainable": trainable_mask(state, tasks_seen=1, backbone=True)}
  rng = np.random.default_rng(0)
  for i in range(140):
    if i == 100:
      hparams["lr"] = jnp.float32(0.005)
    sel = rng.choice(keep, 64, replace=False)
    state, _ = step(state, {"images": data.train_images[sel],
                            "labels": data.train_labels[sel].astype(np.int32)},
                    jax.random.key(i), hparams)
  preds = evaluation.eval_step(state.variables, data.test_images, jnp.int32(NUM_OLD), model=model,
                          mean=data.mean, std=data.std)
  mask = data.test_labels < NUM_OLD
  accuracy = float(np.mean(np.asarray(preds)[mask] == data.test_labels[mask]))
  assert accuracy > 0.7, accuracy  # a usable teacher (77% measured)
  return model, state.variables


def test_bn_stats_report_the_input_of_each_batchnorm(teacher):
  model, variables = teacher
  x = jax.random.normal(jax.random.key(1), (6, SIZE, SIZE, 3))
  (logits, _), sown = model.apply(variables, x, train=False, mutable=["bn_stats"])
  plain_logits, _ = model.apply(variables, x, train=False)
  np.testing.assert_array_equal(logits, plain_logits)  # recording changes nothing
  stem_in = model.apply(variables, x, method=lambda m, x: m.stem_conv(x))
  np.testing.assert_allclose(sown["bn_stats"]["stem_bn"]["input_mean"],
                             np.asarray(stem_in).mean((0, 1, 2)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(sown["bn_stats"]["stem_bn"]["input_var"],
                             np.asarray(stem_in).var((0, 1, 2)), rtol=1e-4, atol=1e-6)
  # one entry per BN layer of the teacher, mirroring its running statistics
  sown_layers = {k[:-1] for k in traverse_util.flatten_dict(sown["bn_stats"])}
  run_layers = {k[:-1] for k in traverse_util.flatten_dict(variables["batch_stats"])}
  assert sown_layers == run_layers and len(run_layers) == 1 + 2 * 15


def test_inversion_lowers_loss_and_covers_the_teacher_classes(teacher):
  model, teacher_vars = teacher
  generator = generator_for(SIZE)
  tx = optax.adam(1e-2)  # larger than the paper's 1e-3 so that 60 steps show the trend
  gen_state = inversion.create_generator_state(generator=generator, rng=jax.random.key(2), tx=tx)
  chunk = inversion.make_inversion_chunk_fn(generator=generator, teacher=model, tx=tx,
                                            batch_size=32, chunk_steps=20, weights=WEIGHTS)
  history = []
  for first in (0, 20, 40):
    gen_state, m = chunk(gen_state, teacher_vars, jax.random.key(3), jnp.int32(NUM_OLD),
                         jnp.int32(first))
    history.append(float(m["inversion/loss"]))
  assert len(history) == 3 and history[-1] < history[0], history
  images = inversion.generate(gen_state.variables, jax.random.key(4), generator=generator,
                              batch_size=256)
  logits, _ = model.apply(teacher_vars, images, train=False)
  predicted = np.asarray(jnp.argmax(logits[:, :NUM_OLD], axis=-1))
  assert set(predicted.tolist()) == set(range(NUM_OLD)), np.bincount(predicted)
  assert chunk.step._cache_size() == 1  # pylint: disable=protected-access


def test_scan_and_host_loops_agree(teacher):
  model, teacher_vars = teacher
  generator = generator_for(SIZE)
  tx = optax.adam(1e-3)
  results = []
  for loop in ("scan", "host"):
    state = inversion.create_generator_state(generator=generator, rng=jax.random.key(5), tx=tx)
    chunk = inversion.make_inversion_chunk_fn(generator=generator, teacher=model, tx=tx,
                                              batch_size=8, chunk_steps=2, weights=WEIGHTS,
                                              loop=loop)
    state, metrics = chunk(state, teacher_vars, jax.random.key(6), jnp.int32(NUM_OLD),
                           jnp.int32(0))
    results.append(metrics)
  # Parameters are not compared: biases feeding a BN (and a few kernel entries) have gradients of
  # float-noise size, which Adam normalises into ±lr steps. The chunk-mean losses include the
  # second step's, computed with the parameters after the first.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4), results[0], results[1])


def test_rgal_inversion_adds_the_focal_triplet_on_the_old_classes(teacher):
  model, teacher_vars = teacher
  generator = generator_for(SIZE)
  tx = optax.adam(1e-3)
  state = inversion.create_generator_state(generator=generator, rng=jax.random.key(5), tx=tx)
  z = inversion.sample_latents(jax.random.key(6), 16, generator.z_dim)
  metrics = {}
  for kind, weights in (("standard", WEIGHTS),
                        ("rgal", {**WEIGHTS, "rgal_triplet": 0.1, "rgal_swap": True})):
    loss_fn = jax.jit(functools.partial(inversion.inversion_loss, generator=generator,
                                        teacher=model, weights=weights))
    loss, (_, metrics[kind]) = loss_fn(state.params, state.batch_stats, teacher_vars, z,
                                       jnp.int32(NUM_OLD), jax.random.key(7))
    assert float(loss) == float(metrics[kind]["inversion/loss"])
  triplet = float(metrics["rgal"]["inversion/loss_triplet"])
  assert "inversion/loss_triplet" not in metrics["standard"] and triplet > 0
  np.testing.assert_allclose(float(metrics["rgal"]["inversion/loss"]),
                             float(metrics["standard"]["inversion/loss"]) + 0.1 * triplet,
                             rtol=1e-5)


def test_old_class_logits_zero_the_other_classes():
  logits = jnp.asarray([[3.0, -1.0, 2.0, 5.0], [-2.0, -3.0, -1e9, -1e9]])
  np.testing.assert_array_equal(inversion.old_class_logits(logits, jnp.int32(2)),
                                [[3.0, -1.0, 0.0, 0.0], [-2.0, -3.0, 0.0, 0.0]])
