"""One BatchNorm layer, forward + backward, jitted: flax against one-pass variants of the
statistics (separate sums, variadic reduce, dots, two-stage sums). Issue #29; not run by the test
suite. python -m bench.bn_micro [N,H,W,C]"""
import time, sys
import numpy as np, jax, jax.numpy as jnp, flax.linen as nn
from jax import lax

def timeit(f, *a, n=30):
  r = f(*a); jax.block_until_ready(r)
  ts = []
  for _ in range(n):
    t = time.perf_counter(); jax.block_until_ready(f(*a)); ts.append(time.perf_counter() - t)
  return 1e3 * np.median(ts)

EPS = 1e-5
def stats_sep(x):
  ax = (0, 1, 2)
  return jnp.sum(x, ax), jnp.sum(x * x, ax)
def stats_variadic(x):
  return lax.reduce((x, x * x), (jnp.float32(0), jnp.float32(0)),
                    lambda a, b: (a[0] + b[0], a[1] + b[1]), (0, 1, 2))
def stats_dot(x):
  x2 = x.reshape(-1, x.shape[-1])
  ones = jnp.ones((x2.shape[0],), x.dtype)
  return ones @ x2, ones @ (x2 * x2)
def stats_dot2(x):
  x2 = x.reshape(-1, x.shape[-1])
  ones = jnp.ones((1, x2.shape[0]), x.dtype)
  s = ones @ jnp.concatenate([x2, x2 * x2], axis=1)
  c = x.shape[-1]
  return s[0, :c], s[0, c:]
def stats_rows(x):  # two-stage: rows of W*C then sum
  n, h, w, c = x.shape
  x2 = x.reshape(n * h, w * c)
  s1 = jnp.sum(x2, 0).reshape(w, c).sum(0)
  s2 = jnp.sum(x2 * x2, 0).reshape(w, c).sum(0)
  return s1, s2

def make_bn(stats):
  @jax.custom_vjp
  def bn(x, scale, bias):
    return fwd(x, scale, bias)[0]
  def fwd(x, scale, bias):
    m = x.size // x.shape[-1]
    s1, s2 = stats(x)
    mean = s1 / m
    var = jnp.maximum(0.0, s2 / m - mean * mean)
    rstd = lax.rsqrt(var + EPS)
    xhat = (x - mean) * rstd
    return xhat * scale + bias, (x, mean, rstd, scale)
  def bwd(res, g):
    x, mean, rstd, scale = res
    m = x.size // x.shape[-1]
    xhat = (x - mean) * rstd
    sg, sgx = stats_g(g, xhat)
    dx = (scale * rstd) * (g - sg / m - xhat * (sgx / m))
    return dx, sgx, sg
  bn.defvjp(fwd, bwd)
  return bn

def stats_g_sep(g, xh):
  ax = (0, 1, 2); return jnp.sum(g, ax), jnp.sum(g * xh, ax)
def stats_g_var(g, xh):
  return lax.reduce((g, g * xh), (jnp.float32(0), jnp.float32(0)),
                    lambda a, b: (a[0] + b[0], a[1] + b[1]), (0, 1, 2))
def stats_g_dot(g, xh):
  c = g.shape[-1]; g2 = g.reshape(-1, c); ones = jnp.ones((g2.shape[0],), g.dtype)
  return ones @ g2, ones @ (g2 * xh.reshape(-1, c))

def stats_g_rows(g, xh):
  n, h, w, c = g.shape
  f = lambda a: jnp.sum(a.reshape(n * h, w * c), 0).reshape(w, c).sum(0)
  return f(g), f(g * xh)
def flax_bn(x, scale, bias):
  v = {"params": {"scale": scale, "bias": bias}, "batch_stats": {"mean": jnp.zeros_like(scale), "var": jnp.ones_like(scale)}}
  y, _ = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=EPS).apply(v, x, mutable=["batch_stats"])
  return y

shape = tuple(int(s) for s in sys.argv[1].split(",")) if len(sys.argv) > 1 else (128, 32, 32, 16)
rng = np.random.default_rng(0)
x = jnp.asarray(rng.normal(size=shape).astype(np.float32) + 0.3)
c = shape[-1]
scale = jnp.asarray(rng.normal(size=(c,)).astype(np.float32)); bias = jnp.zeros((c,))
gy = jnp.asarray(rng.normal(size=shape).astype(np.float32))
def loss_of(bn):
  return jax.jit(jax.grad(lambda x, s, b: jnp.sum(bn(x, s, b) * gy), argnums=(0, 1, 2)))
ref = loss_of(flax_bn)
print("shape", shape, "flax fwd+bwd %.2f ms" % timeit(ref, x, scale, bias))
r0 = ref(x, scale, bias)
for name, st in [("sep", stats_sep), ("rows", stats_rows)]:
  for gname, sg in [("sep", stats_g_sep), ("var", stats_g_var), ("dot", stats_g_dot), ("rows", stats_g_rows)]:
    global stats_g
    stats_g = sg
    f = loss_of(make_bn(st))
    r = f(x, scale, bias)
    err = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30)) for a, b in zip(r, r0))
    print(f"fwd {name:9s} bwd {gname:4s} {timeit(f, x, scale, bias):7.2f} ms  relerr {err:.1e}")
fs = {k: jax.jit(v) for k, v in [("sep", stats_sep), ("variadic", stats_variadic), ("dot", stats_dot), ("rows", stats_rows)]}
for k, f in fs.items():
  print(f"stats only {k:9s} {timeit(f, x):7.2f} ms")
