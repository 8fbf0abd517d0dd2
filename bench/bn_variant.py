"""Bench driver (issue #29; not run by the test suite): python -m bench.bn_variant MODE bench.step|bench.inversion [bench args]
MODE: flax (common.use_flax_batch_norm: before) | train (one-pass train BN, old two-pass sown stats) | all"""
import sys, importlib
import jax.numpy as jnp
from bench import common
from rfd_jax.models import batch_norm
mode, mod = sys.argv[1], sys.argv[2]
sys.argv = [mod] + sys.argv[3:]
if mode == "flax":
  common.use_flax_batch_norm(True)
elif mode == "train":
  def two_pass(x):
    x32 = x.astype(jnp.float32)
    return jnp.mean(x32, (0, 1, 2)), jnp.var(x32, (0, 1, 2))
  batch_norm.moments = two_pass
else:
  assert mode == "all"
importlib.import_module(mod).main()
