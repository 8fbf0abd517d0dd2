"""The Tiny-ImageNet, ImageNet-100 and ImageNet-R configs: spec values, validation, and one train
step and one inversion step each on a fake dataset in the benchmark's on-disk layout, shrunk
to 16 px."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import imagenet100, imagenet_r, tiny_imagenet
from rfd_jax import config_validation, input_pipeline, inversion, optim, steps, train
from rfd_jax.models.generator import generator_for
from rfd_jax.models.resnet import build_model
from rfd_jax.state import trainable_mask

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
  with pytest.raises(config_validation.ConfigError, match="config.data.image_size=30"):
    config_validation.validate(config)
  config = imagenet100.get_config()
  config.data.dataset, config.data.image_size = "cifar100", 64
  with pytest.raises(config_validation.ConfigError, match="must be 32 for cifar100"):
    config_validation.validate(config)
  config = imagenet100.get_config()
  config.data.decode_threads = -1
  with pytest.raises(config_validation.ConfigError, match="config.data.decode_threads=-1"):
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
  data = input_pipeline.load_dataset(config.data)
  labels = spec.to_model_labels(data.train_labels).astype(np.int32)
  sel = input_pipeline.epoch_batches(len(labels), 4, seed=0, task=0, epoch=0)[0]
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
      weights=train.inversion_weights(config.inversion))
  new_gen, inv_metrics = _compile_fast(inv_step, gen_state, new_state.variables, jax.random.key(3),
                                       jnp.int32(spec.sizes[0]))
  assert int(new_gen.step) == 1 and np.isfinite(float(inv_metrics["inversion/loss"]))


@pytest.mark.slow
def test_imagenet100_end_to_end_on_lazy_images(tmp_path):
  """train.train_and_evaluate over LazyImages: one class per task, one step per task."""
  from rfd_jax import tasks, train  # pylint: disable=g-import-not-at-top
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
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["dataset"] == "imagenet100" and len(results["acc_matrix"]) == 10
  assert results["task_sizes"] == [10] * 10
