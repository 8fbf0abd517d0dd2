"""Diagnostic only (issue #29; not run by the test suite): a bench with the ResNets' BatchNorm replaced.
  python -m bench.bn_diag MODE bench.step --steps 5
MODE: none | identity (BN → x) | nostats (normalize with the running stats: no reductions)"""
import sys, importlib
import jax, jax.numpy as jnp
import flax.linen as nn
from rfd_jax.models import resnet
mode = sys.argv[1]
mod = sys.argv[2]
sys.argv = [mod] + sys.argv[3:]

class Diag(nn.Module):
  use_running_average: bool | None = None
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: object = None
  scale_init: object = nn.initializers.ones
  bias_init: object = nn.initializers.zeros
  @nn.compact
  def __call__(self, x, use_running_average=None):
    c = x.shape[-1]
    scale = self.param("scale", self.scale_init, (c,), jnp.float32)
    bias = self.param("bias", self.bias_init, (c,), jnp.float32)
    m = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (c,))
    v = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (c,))
    if mode == "identity":
      return x
    return (x - m.value) * (jax.lax.rsqrt(v.value + 1e-5) * scale) + bias
if mode != "none":
  resnet.BatchNorm = Diag
importlib.import_module(mod).main()
