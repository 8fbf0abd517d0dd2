"""CIFAR ResNet-32 of RFD / cl_lite (spec §2.1) with RFD's per-task classifier heads (spec §2.2).

Layout is NHWC. The backbone differs from He et al.'s ResNet-32:
  * 15 blocks: stage1 = 5 blocks @16, stage2 = increase block (16→32, stride 2) + 4 @32,
    stage3 = increase block (32→64, stride 2) + 3 @64, stage4 = 1 extra block @64;
  * no ReLU after the residual add, nor between blocks/stages (stage outputs are pre-activation);
  * the stride shortcut subsamples `x[:, ::2, ::2]` and appends zero channels after the input ones;
  * convs use kaiming-normal(fan_out) init; the second BN of every block starts with γ = 0.

`config.model.name = "resnet32_he"` is He et al.'s ResNet-32 as ABD builds it (its
models/resnet.py, Idelbayev's CIFAR ResNet): 3 stages of 5 blocks at 16/32/64, ReLU after every
residual add (the last block's output, hence the pooled feature, is post-ReLU), option-A shortcut
`x[:, ::2, ::2]` zero-padded by C/4 channels on BOTH sides, kaiming-normal(fan_in) convs, BN at
γ = 1, β = 0. Same layer shapes as the cl_lite net, so the same 463,504 backbone parameters.

The head is built once for all tasks so that shapes never change during a run: one classifier per
task, concatenated to C logits. Unseen classes are masked by the caller (see `mask_unseen`).
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rfd_jax.models import batch_norm
from rfd_jax.models.layers import Conv, conv_compute_dtype

# PyTorch's kaiming_normal_(mode="fan_out", nonlinearity="relu"): untruncated N(0, 2/fan_out).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's kaiming_normal_ with its defaults (fan_in, gain √2), ABD's `_weights_init` for every
# Conv2d and Linear: untruncated N(0, 2/fan_in).
fan_in_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# PyTorch's default nn.Linear init, kaiming_uniform(a=√5): U(±1/√fan_in).
torch_linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

BN_MOMENTUM = 0.9  # flax convention: running = m·running + (1 − m)·batch (PyTorch momentum 0.1)
MASKED_LOGIT = -1e9  # finite, so 0 * masked stays 0 in losses; exp() underflows to exactly 0


@dataclasses.dataclass(frozen=True)
class BlockStyle:
  """How a CIFAR BasicBlock is built: cl_lite's (RFD's ResNet-32) or He et al.'s (ABD's).

  Attributes:
    relu_after_add: ReLU after the residual add.
    shortcut_pad: where the stride shortcut's zero channels go: "append" after the input's
      (cl_lite: `[x, 0·x]`), or "symmetric", half on each side (He et al.'s option A:
      `F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, C/4, C/4))`).
    zero_init_residual: the block's second BN starts at γ = 0 (else γ = 1).
    conv_fan: kaiming-normal init mode of the convs, "fan_out" or "fan_in".
  """
  relu_after_add: bool = False
  shortcut_pad: str = "append"
  zero_init_residual: bool = True
  conv_fan: str = "fan_out"


CL_LITE_BLOCK = BlockStyle()
HE_BLOCK = BlockStyle(relu_after_add=True, shortcut_pad="symmetric", zero_init_residual=False,
                      conv_fan="fan_in")


def _conv3x3(features: int, stride: int, name: str, dtype: Any = jnp.float32,
             conv_dtype: Any = None, fan: str = "fan_out") -> nn.Conv:
  # Explicit symmetric padding: Flax "SAME" pads (0, 1) at stride 2, PyTorch's padding=1 pads (1, 1).
  # conv_dtype (config.dtype, via build_model): the dtype the convolution itself runs in (None:
  # `dtype`); its result is cast back to `dtype`, the activations', so BN and the adds see `dtype`.
  return Conv(features, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)),
              use_bias=False, kernel_init={"fan_out": conv_init, "fan_in": fan_in_init}[fan],
              dtype=conv_dtype or dtype, out_dtype=dtype, name=name)


class BatchNorm(batch_norm.BatchNorm):
  """BatchNorm (flax's variables and formulas; training mode in one pass each way, see
  `batch_norm.BatchNorm`) that can also report the batch statistics of its *input*.

  When the "bn_stats" collection is mutable (`apply(..., mutable=["bn_stats"])`), it sows the
  per-channel mean and biased variance over all but the last axis as "input_mean"/"input_var"
  (C,), next to the layer's running statistics; model inversion matches the two. Otherwise it
  does no extra work.
  """

  def __call__(self, x, use_running_average=None, **kwargs):
    if self.is_mutable_collection("bn_stats"):
      if self.one_pass:
        mean, var = batch_norm.moments(x)
      else:
        axes = tuple(range(x.ndim - 1))
        x32 = x.astype(jnp.float32)
        mean, var = jnp.mean(x32, axes), jnp.var(x32, axes)
      keep_last = lambda _, new: new
      self.sow("bn_stats", "input_mean", mean, reduce_fn=keep_last, init_fn=lambda: None)
      self.sow("bn_stats", "input_var", var, reduce_fn=keep_last, init_fn=lambda: None)
    return super().__call__(x, use_running_average=use_running_average, **kwargs)


def _batch_norm(train: bool, name: str, zero_scale: bool = False,
                dtype: Any = jnp.float32) -> nn.BatchNorm:
  # `dtype` is the output's; flax computes the statistics in float32 and keeps them in float32.
  return BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=1e-5,
                   scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones,
                   dtype=dtype, name=name)


class BasicBlock(nn.Module):
  """conv3×3(stride) → BN → ReLU → conv3×3 → BN → + shortcut [→ ReLU], as `style` says.

  cl_lite (default): second BN at γ = 0, no ReLU after the add, zero channels appended to the
  subsampled shortcut. He et al. (`HE_BLOCK`): γ = 1, ReLU after the add, symmetric zero padding.
  """
  features: int
  stride: int = 1
  dtype: Any = jnp.float32  # activations; parameters are float32
  conv_dtype: Any = None  # the convolutions' inputs and kernels (None: dtype)
  style: BlockStyle = CL_LITE_BLOCK

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    fan = self.style.conv_fan
    y = _conv3x3(self.features, self.stride, "conv_a", self.dtype, self.conv_dtype, fan)(x)
    y = nn.relu(_batch_norm(train, "bn_a", dtype=self.dtype)(y))
    y = _conv3x3(self.features, 1, "conv_b", self.dtype, self.conv_dtype, fan)(y)
    y = _batch_norm(train, "bn_b", zero_scale=self.style.zero_init_residual, dtype=self.dtype)(y)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = x[:, ::self.stride, ::self.stride, :]
      pad = self.features - shortcut.shape[-1]
      before = pad // 2 if self.style.shortcut_pad == "symmetric" else 0
      shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (before, pad - before)))
    y = y + shortcut
    return nn.relu(y) if self.style.relu_after_add else y


class Stage(nn.Module):
  """A sequence of BasicBlocks; the first may change width and stride."""
  features: int
  num_blocks: int
  stride: int = 1
  dtype: Any = jnp.float32
  conv_dtype: Any = None
  style: BlockStyle = CL_LITE_BLOCK

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    for i in range(self.num_blocks):
      x = BasicBlock(self.features, self.stride if i == 0 else 1, self.dtype, self.conv_dtype,
                     self.style, name=f"block{i}")(x, train=train)
    return x


def _torch_bias_init(fan_in: int):
  """PyTorch's default nn.Linear bias init: U(±1/√fan_in)."""
  bound = 1.0 / fan_in ** 0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class TaskHeads(nn.Module):
  """One classifier per task on the pooled feature; logits concatenated in task order.

  kind="rfd": Linear(F→F) → Linear(F→n_t), both bias-free, no nonlinearity, PyTorch default init
    (RFD's init call is a silent no-op, spec §2.2).
  kind="linear": a single Linear(F→n_t), bias-free, N(0, 1e-3) init (R-DFCIL / cl-lite).
  kind="abd": Linear(F→n_t) with bias, kaiming-normal(fan_in) weights N(0, 2/F) and PyTorch's
    default bias U(±1/√F): ABD's single `last` = Linear(F→C) cut into one block of outputs per task
    (same function and init; the split lets an unseen task's outputs stay frozen: `trainable_mask`).
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
      elif self.kind == "abd":
        logits.append(nn.Dense(size, kernel_init=fan_in_init,
                               bias_init=_torch_bias_init(pooled.shape[-1]),
                               name=f"task{t}_out")(pooled))
      else:
        raise ValueError(f"config.model.head={self.kind!r}: expected 'rfd', 'linear' or 'abd'")
    return jnp.concatenate(logits, axis=-1)


class _StagedResNet(nn.Module):
  """Shared interface of the backbones: subclasses set up `stem_conv`, `stem_bn`, `stages`
  (stage1..stage4), `classifier`, `widths`, and define `_stem(x, *, train)`."""

  @property
  def num_features(self) -> int:
    return self.widths[-1]

  def stage1(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Stem + stage 1: normalised images (B, H, W, 3) → the shallow map RFD distils."""
    return self._stem_and_stage1(x, train=train)[1]

  def _stem_and_stage1(self, x, *, train):
    stem = self._stem(x, train=train)
    return stem, self.stages[0](stem, train=train)

  def from_stage1(self, f1: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Stages 2.. (to 4, or 3 for "resnet32_he"), global average pool and head on a given
    stage-1 map.

    Returns (logits (B, C), features) with features "stage2".. and "pooled" (B, F).
    """
    features = {}
    x = f1
    for i, stage in enumerate(self.stages[1:], start=2):
      x = stage(x, train=train)
      features[f"stage{i}"] = x
    # f32 from here on (float64 kept: the gradient tests run the network in float64)
    features["pooled"] = jnp.mean(x.astype(jnp.promote_types(x.dtype, jnp.float32)), axis=(1, 2))
    return self.classifier(features["pooled"]), features

  def head_logits(self, pooled: jax.Array) -> jax.Array:
    """The classifier alone: pooled features (B, F) → logits (B, C)."""
    return self.classifier(pooled)

  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, Any]]:
    """x: (B, H, W, 3) normalised images → (logits (B, C), features).

    features: "stem", "stage1".."stage4" ("stage3" for "resnet32_he"; NHWC maps) and "pooled"
    (B, F).
    """
    stem, f1 = self._stem_and_stage1(x, train=train)
    logits, features = self.from_stage1(f1, train=train)
    return logits, {"stem": stem, "stage1": f1, **features}


class CifarResNet(_StagedResNet):
  """ResNet-32 (cl_lite `resnet_cifar`, or He et al.'s), exposing stage features and a stage-1
  split.

  Attributes:
    task_sizes: classes per task; the head has sum(task_sizes) outputs.
    head: "rfd" (two linears per task), "linear" or "abd" (see `TaskHeads`).
    stage_blocks: blocks per stage; (5, 5, 4, 1) is ResNet-32.
    widths: channels per stage.
    style: how the blocks are built (`BlockStyle`); `HE_BLOCK` with stage_blocks (5, 5, 5) and
      widths (16, 32, 64) is He et al.'s ResNet-32 (`config.model.name = "resnet32_he"`), whose
      stem conv is then kaiming-normal(fan_in) too.
    dtype: of the backbone's activations and stage features (float32 from `build_model`; the
      gradient tests use float64). Parameters and BatchNorm statistics stay float32; "pooled",
      the head and the logits are float32.
    conv_dtype: what the convolutions run in (config.dtype, via `build_model`; None: `dtype`).
      With bfloat16, each conv's input and kernel are cast to bf16 and its result back to
      `dtype`; BN, the adds, params, losses and the optimizer are unchanged.
  """
  task_sizes: Sequence[int]
  head: str = "rfd"
  stage_blocks: Sequence[int] = (5, 5, 4, 1)
  widths: Sequence[int] = (16, 32, 64, 64)
  dtype: Any = jnp.float32
  conv_dtype: Any = None
  style: BlockStyle = CL_LITE_BLOCK

  def setup(self):
    self.stem_conv = _conv3x3(self.widths[0], 1, "stem_conv", self.dtype, self.conv_dtype,
                              self.style.conv_fan)
    self.stem_bn = BatchNorm(momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                             name="stem_bn")  # mode set per call
    strides = [1] + [2 if self.widths[i] != self.widths[i - 1] else 1
                     for i in range(1, len(self.widths))]
    self.stages = [Stage(w, n, s, self.dtype, self.conv_dtype, self.style, name=f"stage{i + 1}")
                   for i, (w, n, s) in enumerate(zip(self.widths, self.stage_blocks, strides))]
    self.classifier = TaskHeads(tuple(self.task_sizes), self.head, name="head")

  def _stem(self, x, *, train):
    return nn.relu(self.stem_bn(self.stem_conv(x), use_running_average=not train))

class PodnetBlock(nn.Module):
  """ResNet-18 BasicBlock of PODNet / cl_lite `backbone/resnet.py` (its PyTorch names in brackets).

  conv_a: conv3×3(stride) [conv1] → bn_a [bn1] → ReLU → conv_b: conv3×3 [conv2] → bn_b, γ=0 [bn2]
  → + shortcut → ReLU iff `last_relu`. The shortcut is the identity, or shortcut_conv: conv1×1
  (stride) + shortcut_bn [downsample.0, downsample.1] when the stride or width changes.
  """
  features: int
  stride: int = 1
  last_relu: bool = True
  conv_dtype: Any = None  # the convolutions' inputs and kernels (None: float32)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = _conv3x3(self.features, self.stride, "conv_a", conv_dtype=self.conv_dtype)(x)
    y = nn.relu(_batch_norm(train, "bn_a")(y))
    y = _conv3x3(self.features, 1, "conv_b", conv_dtype=self.conv_dtype)(y)
    y = _batch_norm(train, "bn_b", zero_scale=True)(y)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = Conv(self.features, (1, 1), strides=(self.stride, self.stride),
                      padding="VALID", use_bias=False, kernel_init=conv_init,
                      dtype=self.conv_dtype or jnp.float32, out_dtype=jnp.float32,
                      name="shortcut_conv")(x)
      shortcut = _batch_norm(train, "shortcut_bn")(shortcut)
    y = y + shortcut
    return nn.relu(y) if self.last_relu else y


class PodnetLayer(nn.Module):
  """A ResNet-18 layer: only the first block ends with ReLU (PODNet's `_make_layer` with its default
  last_relu=False), so the layer output, that of the last block, is pre-activation."""
  features: int
  num_blocks: int
  stride: int = 1
  conv_dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    for i in range(self.num_blocks):
      x = PodnetBlock(self.features, self.stride if i == 0 else 1, last_relu=i == 0,
                      conv_dtype=self.conv_dtype, name=f"block{i}")(x, train=train)
    return x


class ResNet18(_StagedResNet):
  """ResNet-18 of PODNet / cl_lite for ImageNet-100 and ImageNet-R (spec §2.1), same interface as
  `CifarResNet`.

  stem: conv3×3(3→64, stride 1) → BN → ReLU → maxpool 3×3/2 (pad 1); layers (`stage1`..`stage4`):
  2 `PodnetBlock`s at 64, 128, 256, 512 channels, strides 1, 2, 2, 2; no ReLU after the last block
  of a layer nor between layers. Convs use kaiming-normal(fan_out), every block's second BN starts
  at γ = 0. A 224-px input gives stage1 112×112×64 and stage4 14×14×512; stage 1 (layer1) is RFD's
  shallow feature.

  Attributes:
    task_sizes: classes per task; the head has sum(task_sizes) outputs.
    head: "rfd" (two linears per task) or "linear".
    stage_blocks: blocks per layer; (2, 2, 2, 2) is ResNet-18.
    widths: channels per layer.
    conv_dtype: what the convolutions run in (None: float32; see `CifarResNet`).
  """
  task_sizes: Sequence[int]
  head: str = "rfd"
  stage_blocks: Sequence[int] = (2, 2, 2, 2)
  widths: Sequence[int] = (64, 128, 256, 512)
  conv_dtype: Any = None

  def setup(self):
    self.stem_conv = _conv3x3(self.widths[0], 1, "stem_conv", conv_dtype=self.conv_dtype)
    self.stem_bn = BatchNorm(momentum=0.9, epsilon=1e-5, name="stem_bn")  # mode set per call
    self.stages = [PodnetLayer(w, n, 1 if i == 0 else 2, self.conv_dtype, name=f"stage{i + 1}")
                   for i, (w, n) in enumerate(zip(self.widths, self.stage_blocks))]
    self.classifier = TaskHeads(tuple(self.task_sizes), self.head, name="head")

  def _stem(self, x, *, train):
    stem = nn.relu(self.stem_bn(self.stem_conv(x), use_running_average=not train))
    return nn.max_pool(stem, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # -inf padding


def mask_classes(logits: jax.Array, first: jax.Array | int, stop: jax.Array | int) -> jax.Array:
  """Keeps the logits of classes in [first, stop); the others become a large negative constant.

  The bounds may be traced, so the task index is data, not shape: one compile per run. A softmax
  / CE over the result equals one over the slice `logits[:, first:stop]`. (B, C) → (B, C).
  """
  ids = jnp.arange(logits.shape[-1])
  return jnp.where((ids >= first) & (ids < stop), logits, MASKED_LOGIT)


def mask_unseen(logits: jax.Array, num_seen: jax.Array | int) -> jax.Array:
  """Masks the classes >= num_seen (see `mask_classes`). (B, C) → (B, C)."""
  return mask_classes(logits, 0, num_seen)


# He et al.'s CIFAR ResNet-32 as ABD builds it (spec §6.2): 3 stages × 5 blocks at 16/32/64.
HE_RESNET32 = dict(stage_blocks=(5, 5, 5), widths=(16, 32, 64), style=HE_BLOCK)
MODEL_NAMES = ("resnet32", "resnet32_he", "resnet18", "resnet_tiny")


def build_model(model_config, task_sizes: Sequence[int], *, dtype: str = "float32") -> nn.Module:
  """The backbone named by `model_config.name` with a head for `task_sizes`.

  "resnet32": cl_lite's (RFD); "resnet32_he": He et al.'s (ABD's); "resnet18": PODNet's;
  "resnet_tiny": resnet32 with one block per stage, for smoke tests and CI (not a paper model).
  dtype: config.dtype, "float32" or "bfloat16": what every convolution runs in (bfloat16: its
  input and kernel cast to bf16, its result cast back to float32); activations, BN, the adds,
  params, losses and the optimizer stay float32 in both.
  """
  conv_dtype = conv_compute_dtype(dtype)
  if model_config.name in ("resnet32", "resnet32_he"):
    he = HE_RESNET32 if model_config.name == "resnet32_he" else {}
    return CifarResNet(task_sizes=tuple(task_sizes), head=model_config.head,
                       conv_dtype=conv_dtype, **he)
  if model_config.name == "resnet_tiny":
    return CifarResNet(task_sizes=tuple(task_sizes), head=model_config.head,
                       conv_dtype=conv_dtype, stage_blocks=(1, 1, 1, 1))
  if model_config.name == "resnet18":
    return ResNet18(task_sizes=tuple(task_sizes), head=model_config.head, conv_dtype=conv_dtype)
  raise ValueError(f"config.model.name={model_config.name!r}: expected one of {MODEL_NAMES}")
