"""CIFAR ResNet-32 of RFD / cl_lite (spec §2.1) with RFD's per-task classifier heads (spec §2.2).

Layout is NHWC. The backbone differs from He et al.'s ResNet-32:
  * 15 blocks: stage1 = 5 blocks @16, stage2 = increase block (16→32, stride 2) + 4 @32,
    stage3 = increase block (32→64, stride 2) + 3 @64, stage4 = 1 extra block @64;
  * no ReLU after the residual add, nor between blocks/stages (stage outputs are pre-activation);
  * the stride shortcut subsamples `x[:, ::2, ::2]` and appends zero channels after the input ones;
  * convs use kaiming-normal(fan_out) init; the second BN of every block starts with γ = 0.

The head is built once for all tasks so that shapes never change during a run: one classifier per
task, concatenated to C logits. Unseen classes are masked by the caller (see `mask_unseen`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch's kaiming_normal_(mode="fan_out", nonlinearity="relu"): untruncated N(0, 2/fan_out).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's default nn.Linear init, kaiming_uniform(a=√5): U(±1/√fan_in).
torch_linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

MASKED_LOGIT = -1e9  # finite, so 0 * masked stays 0 in losses; exp() underflows to exactly 0


def _conv3x3(features: int, stride: int, name: str, dtype: Any = jnp.float32) -> nn.Conv:
  # Explicit symmetric padding: Flax "SAME" pads (0, 1) at stride 2, PyTorch's padding=1 pads (1, 1).
  return nn.Conv(features, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)),
                 use_bias=False, kernel_init=conv_init, dtype=dtype, name=name)


def _batch_norm(train: bool, name: str, zero_scale: bool = False,
                dtype: Any = jnp.float32) -> nn.BatchNorm:
  # `dtype` is the output's; flax computes the statistics in float32 and keeps them in float32.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones,
                      dtype=dtype, name=name)


class BasicBlock(nn.Module):
  """conv3×3(stride) → BN → ReLU → conv3×3 → BN(γ=0) → + shortcut; no ReLU after the add."""
  features: int
  stride: int = 1
  dtype: Any = jnp.float32  # activations; parameters are float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = _conv3x3(self.features, self.stride, "conv_a", self.dtype)(x)
    y = nn.relu(_batch_norm(train, "bn_a", dtype=self.dtype)(y))
    y = _conv3x3(self.features, 1, "conv_b", self.dtype)(y)
    y = _batch_norm(train, "bn_b", zero_scale=True, dtype=self.dtype)(y)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = x[:, ::self.stride, ::self.stride, :]
      pad = self.features - shortcut.shape[-1]
      shortcut = jnp.concatenate([shortcut, jnp.zeros_like(shortcut[..., :pad])], axis=-1)
    return y + shortcut


class Stage(nn.Module):
  """A sequence of BasicBlocks; the first may change width and stride."""
  features: int
  num_blocks: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    for i in range(self.num_blocks):
      x = BasicBlock(self.features, self.stride if i == 0 else 1, self.dtype,
                     name=f"block{i}")(x, train=train)
    return x


class TaskHeads(nn.Module):
  """One bias-free classifier per task on the pooled feature; logits concatenated in task order.

  kind="rfd": Linear(F→F) → Linear(F→n_t), both bias-free, no nonlinearity, PyTorch default init
    (RFD's init call is a silent no-op, spec §2.2).
  kind="linear": a single Linear(F→n_t), bias-free, N(0, 1e-3) init (R-DFCIL / cl-lite).
  """
  task_sizes: Sequence[int]
  kind: str = "rfd"

  @nn.compact
  def __call__(self, pooled: jax.Array) -> jax.Array:
    logits = []
    for t, size in enumerate(self.task_sizes):
      if self.kind == "rfd":
        h = nn.Dense(pooled.shape[-1], use_bias=False, kernel_init=torch_linear_init,
                     name=f"task{t}_hidden")(pooled)
        logits.append(nn.Dense(size, use_bias=False, kernel_init=torch_linear_init,
                               name=f"task{t}_out")(h))
      elif self.kind == "linear":
        logits.append(nn.Dense(size, use_bias=False, kernel_init=nn.initializers.normal(1e-3),
                               name=f"task{t}_out")(pooled))
      else:
        raise ValueError(f"config.model.head={self.kind!r}: expected 'rfd' or 'linear'")
    return jnp.concatenate(logits, axis=-1)


class CifarResNet(nn.Module):
  """ResNet-32 (cl_lite `resnet_cifar`), exposing stage features and a stage-1 split.

  Attributes:
    task_sizes: classes per task; the head has sum(task_sizes) outputs.
    head: "rfd" (two linears per task) or "linear".
    stage_blocks: blocks per stage; (5, 5, 4, 1) is ResNet-32.
    widths: channels per stage.
    dtype: of the backbone's activations and stage features (config.dtype: bfloat16 for mixed
      precision). Parameters and BatchNorm statistics stay float32; "pooled", the head and the
      logits are float32.
  """
  task_sizes: Sequence[int]
  head: str = "rfd"
  stage_blocks: Sequence[int] = (5, 5, 4, 1)
  widths: Sequence[int] = (16, 32, 64, 64)
  dtype: Any = jnp.float32

  def setup(self):
    self.stem_conv = _conv3x3(self.widths[0], 1, "stem_conv", self.dtype)
    self.stem_bn = nn.BatchNorm(momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                                name="stem_bn")  # mode set per call
    strides = [1] + [2 if self.widths[i] != self.widths[i - 1] else 1
                     for i in range(1, len(self.widths))]
    self.stages = [Stage(w, n, s, self.dtype, name=f"stage{i + 1}")
                   for i, (w, n, s) in enumerate(zip(self.widths, self.stage_blocks, strides))]
    self.classifier = TaskHeads(tuple(self.task_sizes), self.head, name="head")

  @property
  def num_features(self) -> int:
    return self.widths[-1]

  def stage1(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Stem + stage 1. x: (B, H, W, 3) normalised images → (B, H, W, 16) shallow map."""
    return self._stem_and_stage1(x, train=train)[1]

  def _stem_and_stage1(self, x, *, train):
    stem = nn.relu(self.stem_bn(self.stem_conv(x), use_running_average=not train))
    return stem, self.stages[0](stem, train=train)

  def from_stage1(self, f1: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Stages 2–4, global average pool and head on a given stage-1 map.

    Returns (logits (B, C), features) with features "stage2".."stage4" and "pooled" (B, F).
    """
    features = {}
    x = f1
    for i, stage in enumerate(self.stages[1:], start=2):
      x = stage(x, train=train)
      features[f"stage{i}"] = x
    features["pooled"] = jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # f32 from here on
    return self.classifier(features["pooled"]), features

  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, Any]]:
    """x: (B, H, W, 3) normalised images → (logits (B, C), features).

    features: "stem", "stage1".."stage4" (NHWC maps; 32-px input gives 32,32,16,8,8 spatial) and
    "pooled" (B, 64).
    """
    stem, f1 = self._stem_and_stage1(x, train=train)
    logits, features = self.from_stage1(f1, train=train)
    return logits, {"stem": stem, "stage1": f1, **features}


def mask_unseen(logits: jax.Array, num_seen: jax.Array | int) -> jax.Array:
  """Replaces logits of classes >= num_seen by a large negative constant.

  num_seen may be traced, so the task index is data, not shape: one compile per run.
  logits: (B, C) → (B, C).
  """
  seen = jnp.arange(logits.shape[-1]) < num_seen
  return jnp.where(seen, logits, MASKED_LOGIT)


def build_model(model_config, task_sizes: Sequence[int], *, dtype: str = "float32") -> nn.Module:
  """The backbone named by `model_config.name` with a head for `task_sizes`.

  dtype: of the activations (config.dtype), "float32" or "bfloat16".
  """
  if model_config.name == "resnet32":
    return CifarResNet(task_sizes=tuple(task_sizes), head=model_config.head,
                       dtype=jnp.dtype(dtype))
  raise ValueError(f"config.model.name={model_config.name!r}: expected one of ('resnet32',)")
