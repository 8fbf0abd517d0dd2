"""The teacher and dfkd jobs end to end on tiny digits (8 px), their resume, and their errors."""

import functools
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import dfkd_digits, teacher_digits
from rfd_jax.engine import checkpointing, errors, loop, plan
from rfd_jax.cli import config_validation
from rfd_jax.jobs import dfkd, dfkd_steps, teacher
from rfd_jax.data import augment, sources
from rfd_jax.models import dfkd_nets
from rfd_jax.models.cmi_generator import CmiGenerator


def tiny_teacher_config():
  config = teacher_digits.get_config("wrn16_1")
  config.data.image_size = 8
  config.data.batch_size = 64
  # 3 epochs: after 2 the cosine schedule leaves the tiny teacher at 22% on this machine's XLA:CPU
  # (over 30% elsewhere); 3 give 60%
  config.optim.epochs = 3
  config.log.progress = False
  config.log.every_steps = 1  # a record per step: a resumed run's records equal the full run's
  return config


def tiny_dfkd_config(teacher_dir):
  config = dfkd_digits.get_config()
  config.teacher_ckpt = teacher_dir
  config.teacher_model = "wrn16_1"
  config.data.image_size = 8
  config.data.batch_size = 8
  config.synthesis.iterations = 4
  config.synthesis.chunk_steps = 2  # a resume inside a round restarts at a chunk boundary
  config.synthesis.batch_size = 16
  config.synthesis.nz = 16
  config.synthesis.ngf = 8
  config.student.kd_steps = 2
  config.optim.epochs = 2
  config.log.progress = False
  config.log.every_steps = 1
  return config


@pytest.fixture(scope="module", name="teacher_run")
def _teacher_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("teacher"))
  return workdir, teacher.train_teacher(tiny_teacher_config(), workdir)


def _records(workdir, key=None):
  """metrics.jsonl's records (those with `key`)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if key is None or key in r]


def test_teacher_learns_and_writes_results(teacher_run):
  workdir, results = teacher_run
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["accuracies"] == results["accuracies"]
  train_acc = [r["train/accuracy"] for r in _records(workdir, "train/accuracy")]
  assert len(train_acc) == 3 * _epoch_steps(tiny_teacher_config())
  assert all(isinstance(a, float) and 0 <= a <= 100 for a in train_acc)  # percent
  assert [r["eval/accuracy"] for r in _records(workdir, "eval/accuracy")] == results["accuracies"]
  assert len(results["accuracies"]) == 3
  assert results["accuracy"] > 30.0  # 10 classes: chance is 10%


def _epoch_steps(config):
  return len(sources.load_dataset(config.data).train_labels) // config.data.batch_size


def _preempted_at(monkeypatch, step, run):
  """Runs `run()` with a SIGTERM sent right after global step `step`: it saves and stops there."""
  monkeypatch.setenv(loop.ENV_TEST_KILL_AT, f"{step}:TERM")
  with pytest.raises(checkpointing.Preempted, match=f"step {step} of"):
    run()
  monkeypatch.delenv(loop.ENV_TEST_KILL_AT)


def test_teacher_preempted_mid_epoch_resumes_exactly(teacher_run, tmp_path, monkeypatch):
  full_dir, full = teacher_run
  config, workdir = tiny_teacher_config(), str(tmp_path)
  # inside the second epoch's training (each epoch: its train steps, then the evaluation)
  _preempted_at(monkeypatch, _epoch_steps(config) + 1 + 5,
                lambda: teacher.train_teacher(config, workdir))
  resumed = teacher.train_teacher(config, workdir)
  assert resumed["accuracies"] == full["accuracies"]
  assert len(resumed["wall_seconds_per_invocation"]) == 2
  assert _records(workdir) == _records(full_dir)


def test_dfkd_resumed_run_equals_uninterrupted(teacher_run, tmp_path, monkeypatch):
  teacher_dir, teacher_results = teacher_run
  config = tiny_dfkd_config(teacher_dir)
  full = dfkd.train_dfkd(config, str(tmp_path / "full"))
  assert len(full["accuracies"]) == 2 and full["pool_size"] == 2 * 16
  assert full["teacher_accuracy"] == pytest.approx(teacher_results["accuracy"])
  assert full["best_accuracy"] == max(full["accuracies"])
  # Each epoch: 4 synthesis iterations in chunks of 2, 2 student steps, the evaluation (7 global
  # steps). Stop the second epoch inside its synthesis round after its first chunk (the round's
  # state, best batch included, is checkpointed), then inside its student training.
  part = str(tmp_path / "part")
  _preempted_at(monkeypatch, 7 + 2, lambda: dfkd.train_dfkd(config, part))
  _preempted_at(monkeypatch, 7 + 4 + 1, lambda: dfkd.train_dfkd(config, part))
  changed = tiny_dfkd_config(teacher_dir)
  changed.rgal.syn_triplet_direction = "released_code"
  with pytest.raises(errors.ConfigError, match="rgal.syn_triplet_direction"):
    dfkd.train_dfkd(changed, part)  # a checkpoint of another config: refused
  resumed = dfkd.train_dfkd(config, part)
  assert resumed["accuracies"] == full["accuracies"]
  assert len(resumed["wall_seconds_per_invocation"]) == 3  # the refused call saved nothing
  assert resumed["wall_seconds"] == pytest.approx(sum(resumed["wall_seconds_per_invocation"]))
  assert len(full["wall_seconds_per_invocation"]) == 1
  lines = _records(tmp_path / "full")
  assert _records(part) == lines  # every loss of every segment
  assert len(_records(part, "train/loss")) == 2 * 2  # a record per step
  assert len(_records(part, "synthesis/loss")) == 2 * 2  # a record per chunk
  assert [r["eval/accuracy"] for r in _records(part, "eval/accuracy")] == full["accuracies"]
  for key in ("train/teacher_agreement", "synthesis/teacher_student_agree"):  # percent
    assert all(0 <= line[key] <= 100 for line in _records(part, key))
  assert max(line["train/teacher_agreement"] for line in _records(part, "train/loss")) > 1


def test_resume_inside_a_chunk_is_refused():
  """A checkpoint taken with another synthesis.chunk_steps (allow_config_change) may sit inside a
  chunk: refused, not run past the round's end."""
  p = plan.dfkd_plan(epochs=2, synthesis_iterations=4, synthesis_block=2, student_steps=2, lr=0.1)
  for step in (0, 2, 4 + 1, 7 + 2, p.total_steps):  # chunk boundaries, student steps, the end
    dfkd._check_resume_on_a_chunk(p, step, 2)  # pylint: disable=protected-access
  with pytest.raises(errors.ConfigError, match="synthesis.chunk_steps=2.*iteration 1"):
    dfkd._check_resume_on_a_chunk(p, 7 + 1, 2)  # pylint: disable=protected-access


def test_pool_draws_at_once_equal_sequential_draws():
  """The student's pool indices of an epoch are drawn at once (so a resume inside the epoch finds
  them); they are the numbers the earlier step-by-step draws gave."""
  for pool_size, batch, steps in ((16, 8, 2), (32, 7, 5), (25_600, 128, 400)):
    draw = np.random.default_rng([3, 1])
    sequential = np.stack([draw.integers(0, pool_size, batch) for _ in range(steps)])
    np.testing.assert_array_equal(
        np.random.default_rng([3, 1]).integers(0, pool_size, (steps, batch)), sequential)


@pytest.mark.parametrize("field,value,message", [
    ("teacher_ckpt", "", "train a teacher first"),
    ("teacher_ckpt", "/nonexistent/teacher", "does not exist"),
    ("teacher_model", "wrn40_2", "model.name='wrn16_1'"),
    ("rgal.syn_triplet_direction", "sideways", "syn_triplet_direction"),
    ("rgal.adv", -1.0, "rgal.adv"),
    ("model.name", "resnet32", "expected one of"),
    ("synthesis.chunk_steps", 3, r"synthesis.chunk_steps=3 must be >= 1 and divide "
                                 r"config.synthesis.iterations=4"),
    ("synthesis.chunk_steps", 0, "synthesis.chunk_steps=0"),
    ("synthesis.loop", "while", "synthesis.loop='while'"),
    ("synthesis.upsample", "nearest", "synthesis.upsample='nearest'"),
])
def test_dfkd_config_errors_name_the_field(teacher_run, tmp_path, field, value, message):
  config = tiny_dfkd_config(teacher_run[0])
  section, _, key = field.rpartition(".")
  (config[section] if section else config)[key] = value
  with pytest.raises(errors.ConfigError, match=message):
    dfkd.train_dfkd(config, str(tmp_path))


@pytest.mark.slow  # ~20 s of compiling; the CI suite is near its time budget
def test_synthesis_keeps_the_lowest_loss_batch():
  size, batch = 8, 4
  generator = CmiGenerator(nz=8, ngf=4, img_size=size)
  net = dfkd_nets.WideResNet(depth=10, widen_factor=1, num_classes=10)  # small: fast to compile
  net_vars = net.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
  tx = optax.adam(0.05, b1=0.5, b2=0.999)
  kwargs = dict(generator=generator, teacher=net, student=net,
                weights={"bn": 1.0, "oh": 1.0, "adv": 1.0, "triplet": 0.1},
                mean=np.zeros(3, np.float32), std=np.ones(3, np.float32),
                augmentation=augment.Augmentation(2, "black", False),
                triplet_layers=("stage3",), swap=True)
  state = dfkd_steps.init_synthesis(jax.random.key(1), generator=generator, batch_size=batch, tx=tx)
  targets = jnp.arange(batch) % 10
  step_fn = jax.jit(functools.partial(dfkd_steps.synthesis_step, tx=tx, **kwargs))
  render = jax.jit(lambda variables, z: generator.apply(variables, z, mutable=["batch_stats"])[0])
  seen = []  # (loss of the step's batch, that batch), the loss as computed before the update
  for i in range(4):
    images = render({"params": state.params, "batch_stats": state.batch_stats}, state.z)
    state, metrics = step_fn(state, net_vars, net_vars, targets, jax.random.key(10 + i))
    seen.append((float(metrics["synthesis/loss"]), np.asarray(images)))
  best_loss, best_images = min(seen, key=lambda item: item[0])
  np.testing.assert_allclose(state.best_loss, best_loss, rtol=1e-6)
  np.testing.assert_allclose(state.best_images, best_images, atol=1e-5)
  chex.assert_shape(state.best_images, (batch, size, size, 3))
  assert len({round(l, 6) for l, _ in seen}) > 1  # the steps changed the loss
  assert min(range(4), key=lambda i: seen[i][0]) > 0  # the kept batch is not simply the first


def test_cd_projection_of_pooled_features_equals_pooled_1x1_conv():
  rng = np.random.default_rng(0)
  maps = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
  proj = dfkd_steps.init_projections(jax.random.key(0), {"s": 3}, {"t": 5}, [("s", "t")])["s"]
  conv_then_pool = np.mean(maps @ np.asarray(proj["kernel"]) + np.asarray(proj["bias"]),
                           axis=(1, 2))
  np.testing.assert_allclose(dfkd_steps.pooled(maps) @ proj["kernel"] + proj["bias"], conv_then_pool,
                             rtol=1e-5, atol=1e-6)
  assert float(jnp.max(jnp.abs(proj["kernel"]))) <= 1 / np.sqrt(3)  # PyTorch Conv2d init bound


def test_cosine_lr_matches_torch_cosine_annealing():
  assert plan.cosine_lr(0.1, 0, 200) == pytest.approx(0.1)
  assert plan.cosine_lr(0.1, 100, 200) == pytest.approx(0.05)
  assert plan.cosine_lr(0.1, 150, 200) == pytest.approx(0.05 * (1 + np.cos(np.pi * 0.75)))


def test_unknown_job_is_a_config_error():
  config = tiny_teacher_config()
  config.job = "distill"
  with pytest.raises(errors.ConfigError, match="config.job='distill'"):
    config_validation.job_of(config)
