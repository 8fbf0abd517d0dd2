"""Test helper: gradients against central finite differences in float64.

A gradient that is finite can still be wrong, or exactly zero (losses.rkd_angle's was, in float32).
These checks compare ⟨∇f(x), v⟩ with (f(x + εv) − f(x − εv)) / 2ε along random unit directions v
and along the gradient's own direction (where the difference quotient must equal ‖∇f‖, so a
gradient that is too small or zero fails), with x64 enabled only inside the check. The gradient,
the directions and the differences come out of one compiled function.
"""

from __future__ import annotations

from collections.abc import Callable
import contextlib
import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np

# The checks compile many small one-off functions whose compilation costs far more than their run:
# without LLVM's optimisations and XLA CPU's fusion emitters, a tiny ResNet's loss, gradient and
# finite differences compile 3-6x faster (and run about as fast).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
                "xla_cpu_use_fusion_emitters": False}


def to_float64(tree):
  """Floating leaves as float64 arrays (call under `jax.enable_x64(True)`); others unchanged. The
  cast is on the host: no compilation per leaf shape."""
  def cast(x):
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
      return x
    assert jax.config.jax_enable_x64, "to_float64 outside jax.enable_x64(True)"
    return jnp.asarray(np.asarray(x, np.float64))
  return jax.tree.map(cast, tree)


def flatten(tree) -> tuple[np.ndarray, Callable]:
  """(the leaves concatenated into one numpy vector, its inverse). Like ravel_pytree, but on the
  host: no compilation per leaf shape. The inverse takes numpy vectors or tracers."""
  leaves, treedef = jax.tree.flatten(tree)
  leaves = [np.asarray(leaf) for leaf in leaves]
  bounds = np.cumsum([0] + [leaf.size for leaf in leaves])

  def unflatten(flat):
    return jax.tree.unflatten(treedef, [
        flat[start:stop].reshape(leaf.shape).astype(leaf.dtype)
        for leaf, start, stop in zip(leaves, bounds[:-1], bounds[1:])])

  return np.concatenate([leaf.ravel() for leaf in leaves]), unflatten


@contextlib.contextmanager
def _project_stop_gradient(replacement: Callable):
  """While tracing: `jax.lax.stop_gradient` calls made by rfd_jax code go to replacement(x)."""
  original = jax.lax.stop_gradient

  def dispatch(x):
    caller = sys._getframe(1).f_globals.get("__name__", "")  # pylint: disable=protected-access
    return replacement(x) if caller.startswith("rfd_jax") else original(x)

  jax.lax.stop_gradient = dispatch
  try:
    yield
  finally:
    jax.lax.stop_gradient = original


def directions_for(grad: jax.Array, *, num_directions: int = 2, seed: int = 0) -> jax.Array:
  """(num_directions + 1, N): random unit vectors (fixed by seed), then grad/‖grad‖ (0 if 0)."""
  random = np.random.default_rng(seed).standard_normal((num_directions, grad.shape[0]))
  random /= np.linalg.norm(random, axis=1, keepdims=True)
  unit = grad / jnp.maximum(jnp.linalg.norm(grad), 1e-300)
  return jnp.concatenate([jnp.asarray(random, grad.dtype), unit[None]])


def with_held_stop_gradients(fn: Callable, x: jax.Array):
  """Traceable: (fn(x), the values of the `jax.lax.stop_gradient` calls of rfd_jax's code in it)."""
  original = jax.lax.stop_gradient
  held = []

  def keep(t):
    held.append(t)
    return original(t)

  with _project_stop_gradient(keep):
    out = fn(x)
  return out, held


def grad_and_held(fn: Callable, x: jax.Array, scalar: Callable = lambda out: out):
  """Traceable, in one trace of fn: (∇ scalar(fn(·))(x), fn(x), the values of the
  `jax.lax.stop_gradient` calls of rfd_jax's code in it, for `frozen_differences`)."""
  def objective(y):
    out, held = with_held_stop_gradients(fn, y)
    return scalar(out), (out, held)

  grad, (out, held) = jax.grad(objective, has_aux=True)(x)
  return grad, out, held


def frozen_differences(fn: Callable, x: jax.Array, directions: jax.Array, eps: float,
                       held: list):
  """Traceable: (fn(x + εv) − fn(x − εv)) / 2ε for each row v of directions, per output of fn (a
  pytree of scalars; (num_directions,) each), with every `jax.lax.stop_gradient(t)` of rfd_jax's
  code held at its value at x (`held`, from `with_held_stop_gradients(fn, x)`).

  Reverse mode treats a stop_gradient's output as a constant, so the gradient of a loss with one
  inside (a frozen backbone, detached features, RGAL's mining) is the derivative of this held
  function, not of the loss's value: these are the differences to compare it with.
  """
  def frozen_fn(y):
    queue = list(held)
    def take(t):
      value = queue.pop(0)
      assert jax.tree.structure(value) == jax.tree.structure(t)
      return value
    with _project_stop_gradient(take):
      out = fn(y)
    assert not queue, "fewer stop_gradient calls than at x"
    return out

  steps = eps * directions
  values = jax.lax.map(frozen_fn, jnp.concatenate([x + steps, x - steps]))
  return jax.tree.map(lambda v: (v[:len(steps)] - v[len(steps):]) / (2 * eps), values)


def assert_differences_match(grad, directions, differences, *, rtol: float = 1e-6,
                             atol: float = 1e-10) -> None:
  """|difference quotient − ⟨grad, v⟩| <= atol + rtol·‖grad‖ along every direction."""
  grad, directions, differences = (np.asarray(a, np.float64)
                                   for a in (grad, directions, differences))
  g_norm = float(np.linalg.norm(grad))
  for i, (v, numeric) in enumerate(zip(directions, differences)):
    analytic = float(v @ grad)
    assert abs(numeric - analytic) <= atol + rtol * g_norm, (
        f"direction {i}: finite differences {numeric:.10g}, gradient {analytic:.10g} "
        f"(|gradient| {g_norm:.4g})")


def leaf_norms(tree) -> dict[str, float]:
  """{"path": ‖leaf‖₂} for every leaf of a pytree."""
  return {jax.tree_util.keystr(path): float(np.linalg.norm(np.ravel(leaf)))
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def check_gradient(fn: Callable, *args, min_norm: float = 1e-3, eps: float = 1e-6,
                   rtol: float = 1e-6, atol: float = 1e-10, num_directions: int = 2) -> tuple:
  """∇fn w.r.t. every argument, in float64, against central differences; every leaf's gradient
  must have norm > min_norm (no differentiable input may get a zero gradient).

  fn(*args) → scalar; args: pytrees of float arrays (cast to float64); anything not to be
  differentiated (labels, keys, traced class counts) is closed over by fn. One compilation.
  Returns the gradients (one pytree of numpy arrays per argument).
  """
  with jax.enable_x64(True):
    flat, unravel = flatten(to_float64(tuple(args)))
    flat_fn = lambda x: fn(*unravel(x))

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run(x):
      grad, value, held = grad_and_held(flat_fn, x)
      directions = directions_for(grad, num_directions=num_directions)
      return value, grad, directions, frozen_differences(flat_fn, x, directions, eps, held)

    value, grad, directions, differences = jax.tree.map(np.asarray, run(flat))
  assert value.dtype == np.float64, f"the loss came out {value.dtype}, not float64"
  assert_differences_match(grad, directions, differences, rtol=rtol, atol=atol)
  grads = unravel(grad)
  small = {f"arg{i}{path}": norm for i, g in enumerate(grads)
           for path, norm in leaf_norms(g).items() if not norm > min_norm}
  assert not small, f"gradient norm <= {min_norm}: {small}"
  return grads
