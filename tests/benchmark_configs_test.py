"""The Tiny-ImageNet, ImageNet-100 and ImageNet-R configs: spec values, validation, and one train
step and one inversion step each on a fake dataset in the benchmark's on-disk layout, shrunk
to 16 px. ABD's own CIFAR-100 recipe: its values, validation, the model it builds and one step."""

import functools
import random

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import abd_cifar100, imagenet100, imagenet_r, tiny_imagenet
from rfd_jax.cli import config_validation
from rfd_jax.jobs import dfcil_run, steps
from rfd_jax.methods import inversion, learners
from rfd_jax.engine import errors, optim
from rfd_jax.data import augment, datasets, sources
from rfd_jax.models.generator import generator_for
from rfd_jax.models.resnet import build_model
from rfd_jax.engine.state import trainable_mask

from fake_folders import make_imagenet100, make_imagenet_r, make_tiny_imagenet
from random_states import random_train_state

CONFIGS = {"tiny_imagenet": tiny_imagenet, "imagenet100": imagenet100, "imagenet_r": imagenet_r}
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _compile_fast(fn, *args):
  """Runs jit(fn)(*args) compiled without LLVM optimisations: the same computation, compiled ~3×
  faster on CPU (these tests run a step once)."""
  return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)(*args)


@pytest.mark.parametrize("name, model, tasks, first, size, batch, epochs, ft, milestones, wd", [
    ("tiny_imagenet", "resnet32", 5, 131, 64, 256, 200, 40, (80, 120), 2e-4),
    ("imagenet100", "resnet18", 10, 68, 224, 64, 120, 30, (30, 60), 1e-4),
    ("imagenet_r", "resnet18", 10, 131, 224, 64, 120, 30, (30, 60), 1e-4)])
def test_spec_hyperparameters(name, model, tasks, first, size, batch, epochs, ft, milestones, wd):
  config = CONFIGS[name].get_config()
  spec = config_validation.validate(config)
  assert config.data.dataset == name and config.model.name == model
  assert spec.num_tasks == tasks and len(set(spec.sizes)) == 1 and spec.class_order[0] == first
  assert (config.data.image_size, config.data.batch_size) == (size, batch)
  assert (config.optim.epochs, config.optim.ft_epochs, tuple(config.optim.milestones)) == (
      epochs, ft, milestones)
  assert config.optim.weight_decay == wd
  assert (config.optim.lr, config.optim.ft_lr, config.optim.momentum) == (0.1, 0.005, 0.9)


def test_folder_datasets_accept_shrunk_image_sizes_but_cifar_does_not():
  config = imagenet100.get_config()
  config.data.image_size = 16
  config_validation.validate(config)
  config.data.image_size = 30
  with pytest.raises(errors.ConfigError, match="config.data.image_size=30"):
    config_validation.validate(config)
  config = imagenet100.get_config()
  config.data.dataset, config.data.image_size = "cifar100", 64
  with pytest.raises(errors.ConfigError, match="must be 32 for cifar100"):
    config_validation.validate(config)
  config = imagenet100.get_config()
  config.data.decode_threads = -1
  with pytest.raises(errors.ConfigError, match="config.data.decode_threads=-1"):
    config_validation.validate(config)


@pytest.mark.parametrize("name", ["tiny_imagenet", "imagenet100", "imagenet_r"])
def test_one_train_step_on_fake_folder_data(name, tmp_path):
  config = CONFIGS[name].get_config()
  config.data.data_dir = str(tmp_path)
  config.data.image_size = 16
  config.data.batch_size = 4
  {"tiny_imagenet": make_tiny_imagenet, "imagenet100": make_imagenet100,
   "imagenet_r": make_imagenet_r}[name](tmp_path)
  spec = config_validation.validate(config)
  data = sources.load_dataset(config.data)
  labels = spec.to_model_labels(data.train_labels).astype(np.int32)
  sel = datasets.epoch_batches(len(labels), 4, seed=0, task=0, epoch=0)[0]
  batch = {"images": data.train_images[sel], "labels": labels[sel]}

  model = build_model(config.model, spec.sizes)
  tx = optim.momentum_transform(config.optim.momentum)
  state = random_train_state(model, tx, image_size=16, num_classes=spec.num_classes, scale=0.05)
  step = functools.partial(steps.train_step, model=model, tx=tx,
                           weight_decay=config.optim.weight_decay, mean=data.mean, std=data.std)
  hparams = {"lr": jnp.float32(config.optim.lr), "num_seen": jnp.int32(spec.num_classes),
             "trainable": trainable_mask(state, tasks_seen=spec.num_tasks, backbone=True)}
  new_state, metrics = _compile_fast(step, state, batch, jax.random.key(1, impl="unsafe_rbg"),
                                     hparams)
  assert int(new_state.step) == 1
  loss = float(metrics["train/loss"])
  assert np.isfinite(loss) and abs(loss - np.log(spec.num_classes)) < 2.0
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), state.params,
                         new_state.params)
  assert changed["stem_conv"]["kernel"] and changed["stage4"]["block0"]["conv_a"]["kernel"]

  # and one model-inversion step against that network as the teacher
  generator = generator_for(config.data.image_size)
  gen_tx = optax.adam(config.inversion.lr)
  gen_state = inversion.create_generator_state(generator=generator, rng=jax.random.key(2),
                                               tx=gen_tx)
  inv_step = functools.partial(
      inversion.generator_step, generator=generator, teacher=model, tx=gen_tx, batch_size=4,
      weights=inversion.weights_from_config(config))
  new_gen, inv_metrics = _compile_fast(inv_step, gen_state, new_state.variables, jax.random.key(3),
                                       jnp.int32(spec.sizes[0]))
  assert int(new_gen.step) == 1 and np.isfinite(float(inv_metrics["inversion/loss"]))


@pytest.mark.slow
def test_imagenet100_end_to_end_on_lazy_images(tmp_path):
  """train.train_and_evaluate over LazyImages: one class per task, one step per task."""
  from rfd_jax.methods import tasks  # pylint: disable=g-import-not-at-top
  from rfd_jax.jobs import dfcil  # pylint: disable=g-import-not-at-top
  order = tasks.class_order("imagenet1993", 100)
  make_imagenet100(tmp_path / "data", labels=order[::10], per_class=2)
  config = imagenet100.get_config()
  config.data.data_dir = str(tmp_path / "data")
  config.data.image_size = 16
  config.data.batch_size = 2
  config.data.eval_batch_size = 4
  config.optim.epochs, config.optim.ft_epochs, config.optim.milestones = 1, 0, ()
  config.inversion.iterations, config.inversion.chunk_steps = 1, 1
  config.log.progress = False
  results = dfcil.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["dataset"] == "imagenet100" and len(results["acc_matrix"]) == 10
  assert results["task_sizes"] == [10] * 10


@pytest.mark.parametrize("num_tasks", [5, 10, 20])
def test_abd_cifar100_is_abds_recipe(num_tasks):
  """configs/abd_cifar100.py against GT-RIPL/AlwaysBeDreaming-DFCIL's cifar100-*task.sh (which
  differ only in the split size) and the code they run; no data, no training."""
  config = abd_cifar100.get_config()
  config.data.num_tasks = num_tasks
  spec = config_validation.validate(config)
  order, saved = list(range(100)), random.getstate()
  random.seed(0)  # ABD's trainer.py, repeat 0
  random.shuffle(order)
  random.setstate(saved)
  assert list(spec.class_order) == order and list(spec.sizes) == [100 // num_tasks] * num_tasks
  assert (config.method, config.data.batch_size, config.inversion.batch_size) == ("abd", 128, 128)
  assert augment.Augmentation.from_config(config.data) == augment.Augmentation(
      crop_padding=4, crop_fill="black", flip=True, jitter_brightness=63 / 255,
      jitter_contrast=0.8)
  # MultiStepLR(milestones=[100, 150, 200, 250]) over schedule[-1] = 250 epochs
  assert config.optim.epochs == 250 and (config.optim.momentum, config.optim.weight_decay) == (
      0.9, 2e-4)
  learner = learners.get_learner(config)
  assert learner.reuse_generator and not learner.has_finetune_phase
  task_plan = dfcil_run.make_plan(config, learner, [390] * 10).segments[2:5]  # task 0: main, eval; task 1: ...
  assert [(s.name, s.num_epochs) for s in task_plan] == [("inversion", 0), ("main", 250),
                                                         ("eval", 0)]
  lrs = [task_plan[1].lrs[e] for e in (0, 99, 100, 149, 150, 199, 200, 249)]
  np.testing.assert_allclose(lrs, [0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4], rtol=1e-9)
  # deep_inv_params 1e-3 5e1 1e-3 1e3 1, power_iters 10000, class balance weight 1
  assert (config.inversion.iterations, config.inversion.lr) == (10_000, 1e-3)
  assert inversion.weights_from_config(config) == {
      "ce": 1.0, "balance": 1.0, "smoothness": 1e-3, "bn": 50.0, "ce_temperature": 1000.0}
  assert config.distill.abd_mu == 0.1
  model = build_model(config.model, spec.sizes)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jnp.zeros((1, 32, 32, 3)))
  assert sum(x.size for x in jax.tree.leaves(shapes["params"])) == 463_504 + 64 * 100 + 100


@pytest.mark.parametrize("field, value, message", [
    ("data.color_jitter_brightness", -0.1, "config.data.color_jitter_brightness=-0.1"),
    ("data.color_jitter_contrast", -1.0, "config.data.color_jitter_contrast=-1.0"),
    ("inversion.kind", "rgal", "config.model.name='resnet32_he' has 3 stages"),
    ("model.head", "bias", "config.model.head='bias' is unknown")])
def test_abd_cifar100_bad_values_name_the_field(field, value, message):
  config = abd_cifar100.get_config()
  group, name = field.split(".")
  config[group][name] = value
  with pytest.raises(errors.ConfigError, match=message):
    config_validation.validate(config)


def test_one_abd_step_with_abds_recipe():
  """One distillation step (task 3 of 10) with the recipe's learner, head, jitter and weight decay
  on a 1-block-per-stage He ResNet at 8 px: every part is wired, unseen heads stay put."""
  config = abd_cifar100.get_config()
  spec = config_validation.validate(config)
  model = build_model(config.model, spec.sizes).clone(stage_blocks=(1, 1, 1))
  tx = optim.momentum_transform(config.optim.momentum)
  teacher = random_train_state(model, tx, image_size=8, num_classes=100, seed=1)
  state = random_train_state(model, tx, image_size=8, num_classes=100, seed=2)
  generator = generator_for(8)
  gen_vars = generator.init(jax.random.key(0), jnp.zeros((2, 1000)), train=False)
  rng = np.random.default_rng(0)
  batch = {"images": rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8),
           "labels": rng.integers(20, 30, (4,)).astype(np.int32)}
  learner = learners.get_learner(config)
  step = functools.partial(
      steps.distill_train_step, loss_fn=learner.main_loss, model=model, generator=generator, tx=tx,
      weight_decay=config.optim.weight_decay, mean=np.full(3, 0.5, np.float32),
      std=np.full(3, 0.25, np.float32),
      augmentation=augment.Augmentation.from_config(config.data))
  hparams = {"lr": jnp.float32(0.1), "num_seen": jnp.int32(30), "num_old": jnp.int32(20),
             "trainable": trainable_mask(state, tasks_seen=3, backbone=True), "weights": {},
             "class_weights": jnp.ones(100)}
  new_state, metrics = _compile_fast(step, state, batch, jax.random.key(4), hparams,
                                     teacher.variables, gen_vars)
  assert {"train/loss_ce", "train/loss_global_ce", "train/loss_kd"} <= set(metrics)
  assert all(np.isfinite(float(v)) for v in metrics.values())
  head, new_head = state.params["head"], new_state.params["head"]
  for t in range(10):
    moved = [not np.array_equal(head[f"task{t}_out"][k], new_head[f"task{t}_out"][k])
             for k in ("kernel", "bias")]
    assert moved == [t < 3] * 2
  assert not np.array_equal(state.params["stem_conv"]["kernel"],
                            new_state.params["stem_conv"]["kernel"])
