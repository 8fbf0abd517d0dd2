"""Test helper: `steps.distill_inputs` as it was before issue #16 (one teacher pass over
`jnp.concatenate([real, syn])`), and a tiny RFD setup to compare it with the current one.

Used by steps_test.py (same values on one device) and parallel_checks.py (the concatenation makes
XLA reshard the combined batch with all-to-alls on several devices; the current layout does not).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rfd_jax.methods import inversion, learners
from rfd_jax.engine import optim
from rfd_jax.data import augment
from rfd_jax.models import resnet
from rfd_jax.models.generator import generator_for
from rfd_jax.models.resnet import mask_unseen

import random_states

BATCH, IMAGE_SIZE, NUM_OLD = 16, 8, 4
MEAN, STD = np.full(3, 0.3, np.float32), np.full(3, 0.25, np.float32)


def concatenated_distill_inputs(batch, rng, hparams, teacher_vars, gen_vars, *, model, generator,
                                mean, std, augmentation=augment.Augmentation(),
                                batch_sharding=None) -> learners.DistillInputs:
  """The pre-#16 formula: the teacher over real ∪ synthetic concatenated on the batch axis."""
  rng_aug, rng_syn = jax.random.split(rng)
  real = augment.normalize(batch["images"], mean, std)
  if augmentation is not None:
    real = augment.augment(rng_aug, real, augmentation, mean, std)
  syn = inversion.generate(gen_vars, rng_syn, generator=generator, batch_size=real.shape[0],
                           batch_sharding=batch_sharding)
  teacher_vars = jax.lax.stop_gradient(teacher_vars)
  t_logits, t_feats = model.apply(teacher_vars, jnp.concatenate([real, syn]), train=False)
  t_logits = mask_unseen(t_logits, hparams["num_old"])
  t_real_logits, t_syn_logits = jnp.split(t_logits, 2)
  t_real_pooled, t_syn_pooled = jnp.split(t_feats["pooled"], 2)
  t_real_stage1 = t_feats["stage1"][:real.shape[0]]
  syn_labels = jnp.argmax(t_syn_logits, axis=-1).astype(jnp.int32)
  return learners.DistillInputs(real=real, labels=batch["labels"], syn=syn, syn_labels=syn_labels,
                                t_real_logits=t_real_logits, t_syn_logits=t_syn_logits,
                                t_real_pooled=t_real_pooled, t_syn_pooled=t_syn_pooled,
                                t_real_stage1=t_real_stage1, rng=jax.random.fold_in(rng, 2))


def tiny_rfd_setup(seed: int = 0):
  """One block per stage of RFD's ResNet (rfd head) on 8×8 images, a random teacher, a random
  generator, a random uint8 batch (BATCH,) and hparams with NUM_OLD old classes.

  Returns (static kwargs of distill_inputs, (batch, rng, hparams, teacher_vars, gen_vars)).
  """
  model = resnet.CifarResNet(task_sizes=(2,) * 5, stage_blocks=(1, 1, 1, 1))
  teacher = random_states.random_train_state(model, optim.momentum_transform(0.9),
                                             image_size=IMAGE_SIZE, num_classes=10, seed=seed)
  generator = generator_for(IMAGE_SIZE)
  gen_vars = random_states.random_variables(generator, jnp.zeros((2, generator.z_dim)),
                                            seed=seed + 1, train=False)
  rng = np.random.default_rng(seed)
  batch = {"images": rng.integers(0, 256, (BATCH, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8),
           "labels": rng.integers(NUM_OLD, NUM_OLD + 2, (BATCH,)).astype(np.int32)}
  static = dict(model=model, generator=generator, mean=MEAN, std=STD)
  teacher_vars = {"params": teacher.params, "batch_stats": teacher.batch_stats}
  args = (batch, jax.random.key(seed + 1), {"num_old": np.int32(NUM_OLD)}, teacher_vars, gen_vars)
  return static, args


def jitted(distill_inputs_fn, static, **shardings):
  """distill_inputs_fn with `static` bound, under jax.jit with `shardings` (in_shardings...)."""
  return jax.jit(functools.partial(distill_inputs_fn, **static), **shardings)
