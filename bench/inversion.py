r"""One model-inversion iteration (the jitted `inversion.generator_step`), timed.

  python -m bench.inversion [--image_size 32] [--batch_size 128] [--steps 10] [--peak_gflops 0]
                            [--dtype float32] [--gen_conv_dtype float32]

One iteration = z ~ N(0, I) → generator forward in train mode → the frozen teacher (ResNet-32 of
CIFAR-100 10 × 10 after task 5: 50 old classes) in eval mode, reporting the input statistics of its
BN layers → CE(o/1000, argmax o) + class balance + smoothness + BN-KL → gradients into the
generator → Adam update; the generator state is donated, as in `make_inversion_chunk_fn`'s host
loop. Prints the same fields as bench/step.py: median ms/iteration over `--steps` iterations after
one warm-up, images/s (batch / time), compile time, XLA cost-analysis GFLOP per iteration,
GFLOP/s, fraction of `--peak_gflops` and the peak RSS. Not run by the test suite.
"""

import argparse
import functools

import jax
import jax.numpy as jnp
import optax

from bench import common
from configs import cifar100
from rfd_jax.methods import inversion
from rfd_jax.models.generator import generator_for
from rfd_jax.models.resnet import build_model

NUM_OLD = 50  # CIFAR-100 10 × 10, task 6: the teacher knows 50 classes


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  common.add_common_args(parser)
  args = parser.parse_args()
  args.gen_conv_dtype = args.gen_conv_dtype or args.dtype

  config = cifar100.get_config()
  config.dtype = args.dtype
  size, batch = args.image_size, args.batch_size
  teacher = build_model(config.model, (10,) * 10, dtype=args.dtype)
  teacher_vars = teacher.init(jax.random.key(0), jnp.zeros((2, size, size, 3)), train=False)
  teacher_vars = {"params": teacher_vars["params"], "batch_stats": teacher_vars["batch_stats"]}
  generator = generator_for(size, args.gen_conv_dtype, upsample=args.upsample)
  tx = optax.adam(config.inversion.lr)
  gen_state = inversion.create_generator_state(generator=generator, rng=jax.random.key(1), tx=tx)
  step = jax.jit(functools.partial(
      inversion.generator_step, generator=generator, teacher=teacher, tx=tx, batch_size=batch,
      weights=inversion.weights_from_config(config)), donate_argnums=(0,))
  num_old = jnp.int32(NUM_OLD)
  compiled, compile_s, flops = common.compile_with_cost(
      step, gen_state, teacher_vars, jax.random.key(2), num_old)

  def one_step(i):
    nonlocal gen_state
    gen_state, metrics = compiled(gen_state, teacher_vars, jax.random.key(2 + i), num_old)
    return gen_state, metrics

  per_step, cpu_per_step = common.time_steps(one_step, args.steps)
  common.report(f"inversion iteration, {size} px, batch {batch}, dtype {args.dtype}, "
                f"generator conv_dtype {args.gen_conv_dtype}",
                per_step=per_step, cpu_per_step=cpu_per_step, images=batch, steps=args.steps,
                compile_s=compile_s, flops=flops, peak_gflops=args.peak_gflops)

if __name__ == "__main__":
  main()
