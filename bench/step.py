r"""The full distillation train step of a learner (default: the RFD main phase), timed.

  python -m bench.step [--method rfd] [--phase main] [--image_size 32] [--batch_size 128]
                       [--steps 10] [--peak_gflops 0] [--dtype float32]
                       [--gen_conv_dtype float32]

One step = a synthetic batch from the frozen generator, the teacher pass over real ∪ synthetic,
the learner's student passes and losses (rfd main: real, synthetic and hybrid passes, CE + DIST +
LFD), and the SGD update; the state is donated, as in training. Prints the median step time over
`--steps` steps after one warm-up step, real images per second (the synthetic batch has the same
size), the compile time, XLA's cost-analysis FLOPs per step, the achieved GFLOP/s and its fraction
of `--peak_gflops` (if given), and the process's peak RSS. Not run by the test suite.
"""

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from bench import common
from configs import cifar100
from rfd_jax.methods import learners
from rfd_jax.engine import optim
from rfd_jax.jobs import steps
from rfd_jax.models.generator import generator_for
from rfd_jax.models.resnet import build_model
from rfd_jax.engine.state import create_train_state, trainable_mask

NUM_OLD, NUM_NEW = 50, 10  # CIFAR-100 10 × 10, task 6: the loss weights of a mid-run step


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--method", default="rfd")
  parser.add_argument("--phase", default="main", choices=("main", "finetune"))
  common.add_common_args(parser)
  args = parser.parse_args()
  args.gen_conv_dtype = args.gen_conv_dtype or args.dtype

  config = cifar100.get_config()
  config.method = args.method
  config.dtype = args.dtype
  learner = learners.get_learner(config)
  loss_fn = learner.main_loss if args.phase == "main" else learner.finetune_loss
  if loss_fn is None:
    raise SystemExit(f"error: --method={args.method} has no {args.phase} distillation loss")
  size, batch = args.image_size, args.batch_size
  model = build_model(config.model, (10,) * 10, dtype=args.dtype)
  generator = generator_for(size, args.gen_conv_dtype, upsample=args.upsample)
  tx = optim.momentum_transform(config.optim.momentum)
  aux = {} if learner.init_aux is None else learner.init_aux(jax.random.key(3),
                                                              model.num_features)
  state = create_train_state(model=model, rng=jax.random.key(0), image_size=size, num_classes=100,
                             tx=tx, aux_params=aux)
  teacher = create_train_state(model=model, rng=jax.random.key(1), image_size=size,
                               num_classes=100, tx=tx)
  teacher_vars = jax.tree.map(jnp.copy, teacher.variables)
  gen_vars = generator.init(jax.random.key(2), jnp.zeros((2, 1000)), train=False)
  tasks_seen = (NUM_OLD + NUM_NEW) // 10
  hparams = {"lr": jnp.float32(0.1), "num_seen": jnp.int32(NUM_OLD + NUM_NEW),
             "num_old": jnp.int32(NUM_OLD),
             "trainable": trainable_mask(state, tasks_seen=tasks_seen,
                                         backbone=args.phase == "main"),
             "weights": {k: jnp.float32(v) for k, v in learners.loss_weights(
                 config.distill, args.method, num_old=NUM_OLD, num_new=NUM_NEW).items()},
             "class_weights": jnp.ones((100,), jnp.float32)}
  rng = np.random.default_rng(0)
  data = {"images": jnp.asarray(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)),
          "labels": jnp.asarray(rng.integers(NUM_OLD, NUM_OLD + NUM_NEW, (batch,)), jnp.int32)}
  step = jax.jit(functools.partial(
      steps.distill_train_step, loss_fn=loss_fn, model=model, generator=generator, tx=tx,
      weight_decay=config.optim.weight_decay, mean=np.full(3, 0.5, np.float32),
      std=np.full(3, 0.25, np.float32)), donate_argnums=(0,))
  state = state.replace(opt_state=tx.init(state.trainable))
  call_args = (data, jax.random.key(4), hparams, teacher_vars, gen_vars)

  compiled, compile_s, flops = common.compile_with_cost(step, state, *call_args)

  def one_step(i):
    nonlocal state
    state, metrics = compiled(state, data, jax.random.key(4 + i), *call_args[2:])
    return state, metrics

  per_step, cpu_per_step = common.time_steps(one_step, args.steps)
  common.report(f"{args.method} {args.phase} step, {size} px, batch {batch} real + {batch} "
                f"synthetic, dtype {args.dtype}, generator conv_dtype "
                f"{args.gen_conv_dtype}",
                per_step=per_step, cpu_per_step=cpu_per_step, images=batch, steps=args.steps,
                compile_s=compile_s, flops=flops, peak_gflops=args.peak_gflops)

if __name__ == "__main__":
  main()
