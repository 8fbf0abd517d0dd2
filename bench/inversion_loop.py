r"""Inversion loop on this backend: a rolled lax.scan chunk vs a host loop over one jitted step.

  python -m bench.inversion_loop [--image_size 16] [--batch_size 32] [--chunk 5]

Prints ms per inversion iteration (median of 3 chunks after a warm-up chunk) for each loop kind
and the compile time. Not run by the test suite.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rfd_jax.methods import inversion
from rfd_jax.models.generator import generator_for
from rfd_jax.models.resnet import CifarResNet

WEIGHTS = {"ce": 1.0, "balance": 1.0, "smoothness": 1e-3, "bn": 50.0, "ce_temperature": 1e3}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--image_size", type=int, default=16)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--chunk", type=int, default=5)
  args = parser.parse_args()
  size = args.image_size
  teacher = CifarResNet(task_sizes=(2,) * 5)
  variables = teacher.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
  teacher_vars = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
  generator, tx = generator_for(size), optax.adam(1e-3)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {size} px, batch {args.batch_size}")
  for loop in ("host", "scan"):
    state = inversion.create_generator_state(generator=generator, rng=jax.random.key(1), tx=tx)
    chunk = inversion.make_inversion_chunk_fn(
        generator=generator, teacher=teacher, tx=tx, batch_size=args.batch_size,
        chunk_steps=args.chunk, weights=WEIGHTS, loop=loop)
    start = time.perf_counter()
    state, _ = chunk(state, teacher_vars, jax.random.key(2), jnp.int32(4), jnp.int32(0))
    jax.block_until_ready(state)
    first = time.perf_counter() - start
    times = []
    for i in range(3):
      start = time.perf_counter()
      state, _ = chunk(state, teacher_vars, jax.random.key(2), jnp.int32(4),
                       jnp.int32((i + 1) * args.chunk))
      jax.block_until_ready(state)
      times.append((time.perf_counter() - start) / args.chunk)
    per_iter = float(np.median(times))
    print(f"{loop:>4}: {1000 * per_iter:8.1f} ms/iteration  {args.batch_size / per_iter:7.0f} "
          f"images/s  (first chunk incl. compile {first:.1f} s)")


if __name__ == "__main__":
  main()
