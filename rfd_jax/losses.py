"""Small pure loss functions. Keyword-only arguments; shapes in the docstrings."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(*, logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example CE, −log softmax(logits)[label].

  logits: float (B, C); labels: int (B,) → float (B,).
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def accuracy(*, logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example 0/1 correctness of argmax(logits). logits (B, C), labels (B,) → float (B,)."""
  return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
