"""Teacher / student classifiers of data-free knowledge distillation (CMI, RGAL) on CIFAR-like images.

Layout is NHWC; any square input whose side is >= 8 and divisible by 4 works (the nets stride ×4 at
most for WRN and ×8 for ResNet; a side divisible by 4 gives ResNet a stage4 side of >= 1).

  * `WideResNet`: the pre-activation WRN-d-k of Zagoruyko & Komodakis in the layout of the widely
    used PyTorch port (xternalz/WideResNet-pytorch) that CMI and RGAL train their teachers with.
  * `CifarResNetV1`: the post-activation CIFAR ResNet-18/34 (kuangliu/pytorch-cifar layout) of CMI.

Every BN is `resnet.BatchNorm` (PyTorch momentum 0.1 = Flax 0.9, eps 1e-5), so
`apply(..., mutable=["bn_stats"])` reports each BN layer's input statistics for model inversion.
Convs use kaiming-normal(fan_out), BN γ = 1 and β = 0, the classifier U(±1/√fan_in) weights and a
zero bias. Every model returns `(logits (B, K) float32, features)` with features "stage1".. (NHWC
maps) and "pooled" (B, F), all float32; `conv_dtype` (config.dtype) is what the convolutions alone
run in (bfloat16: inputs and kernels cast to bf16, results cast back to float32).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rfd_jax.models.layers import Conv, conv_compute_dtype
from rfd_jax.models.resnet import _batch_norm, _conv3x3, conv_init, torch_linear_init


def _conv1x1(features: int, stride: int, name: str, conv_dtype: Any) -> nn.Conv:
  return Conv(features, (1, 1), strides=(stride, stride), padding="VALID", use_bias=False,
              kernel_init=conv_init, dtype=conv_dtype or jnp.float32, out_dtype=jnp.float32,
              name=name)


def _classifier(num_classes: int) -> nn.Dense:
  # float32 on float32 pooled features; bias 0 as in CMI's WRN init (and harmless for ResNet).
  return nn.Dense(num_classes, kernel_init=torch_linear_init, bias_init=nn.initializers.zeros,
                  name="classifier")


class WideBlock(nn.Module):
  """Pre-activation WRN block (no dropout).

  o = ReLU(bn1(x)); y = conv3×3(stride)(o) → ReLU(bn2) → conv3×3; out = y + shortcut, where the
  shortcut is x when the width and stride are kept, else conv1×1(stride)(o) — applied to the
  BN-ReLU'd input, as in the original.
  """
  features: int
  stride: int = 1
  conv_dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    o = nn.relu(_batch_norm(train, "bn1")(x))
    y = _conv3x3(self.features, self.stride, "conv1", conv_dtype=self.conv_dtype)(o)
    y = nn.relu(_batch_norm(train, "bn2")(y))
    y = _conv3x3(self.features, 1, "conv2", conv_dtype=self.conv_dtype)(y)
    if x.shape[-1] == self.features and self.stride == 1:
      shortcut = x
    else:
      shortcut = _conv1x1(self.features, self.stride, "shortcut_conv", self.conv_dtype)(o)
    return y + shortcut


class WideResNet(nn.Module):
  """WRN-depth-widen_factor: (B, H, W, 3) → (logits (B, K), features).

  stem conv3×3(3→16) → 3 groups of n = (depth − 4) / 6 `WideBlock`s at 16k, 32k, 64k channels
  (strides 1, 2, 2) → ReLU(BN) → global average pool → Linear(64k → K).
  features: "stage1" (B, H, W, 16k), "stage2" (B, H/2, W/2, 32k), "stage3" (B, H/4, W/4, 64k),
  the group outputs (stage3 before the final BN-ReLU), and "pooled" (B, 64k), after it.

  Attributes:
    depth: 6n + 4 (16, 40, ...).
    widen_factor: k.
    num_classes: K.
    conv_dtype: what the convolutions run in (None: float32; bfloat16: see the module docstring).
  """
  depth: int
  widen_factor: int
  num_classes: int
  conv_dtype: Any = None

  stage_names = ("stage1", "stage2", "stage3")

  def __post_init__(self):
    if self.depth < 10 or (self.depth - 4) % 6 != 0:
      raise ValueError(f"WideResNet depth={self.depth}: expected 6n + 4 with n >= 1 "
                       "((depth - 4) % 6 == 0), e.g. 16, 22, 28, 40")
    super().__post_init__()

  @property
  def widths(self) -> tuple[int, int, int]:
    return (16 * self.widen_factor, 32 * self.widen_factor, 64 * self.widen_factor)

  @property
  def num_features(self) -> int:
    return self.widths[-1]

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    n = (self.depth - 4) // 6
    x = _conv3x3(16, 1, "stem_conv", conv_dtype=self.conv_dtype)(x)
    features = {}
    for g, (width, stride) in enumerate(zip(self.widths, (1, 2, 2))):
      for i in range(n):
        x = WideBlock(width, stride if i == 0 else 1, self.conv_dtype,
                      name=f"stage{g + 1}_block{i}")(x, train=train)
      features[f"stage{g + 1}"] = x
    x = nn.relu(_batch_norm(train, "bn_final")(x))
    features["pooled"] = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return _classifier(self.num_classes)(features["pooled"]), features


class ResNetV1Block(nn.Module):
  """Post-activation BasicBlock: ReLU(bn1(conv3×3(stride))) → bn2(conv3×3) → + shortcut → ReLU.

  The shortcut is the identity, or conv1×1(stride) → BN when the stride or width changes.
  """
  features: int
  stride: int = 1
  conv_dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = _conv3x3(self.features, self.stride, "conv1", conv_dtype=self.conv_dtype)(x)
    y = nn.relu(_batch_norm(train, "bn1")(y))
    y = _conv3x3(self.features, 1, "conv2", conv_dtype=self.conv_dtype)(y)
    y = _batch_norm(train, "bn2")(y)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = _conv1x1(self.features, self.stride, "shortcut_conv", self.conv_dtype)(x)
      shortcut = _batch_norm(train, "shortcut_bn")(shortcut)
    return nn.relu(y + shortcut)


class CifarResNetV1(nn.Module):
  """CIFAR ResNet-18/34 of CMI: (B, H, W, 3) → (logits (B, K), features).

  stem conv3×3(3→64) → BN → ReLU (no max-pool) → 4 layers of `ResNetV1Block`s at 64, 128, 256,
  512 channels, strides 1, 2, 2, 2 → global average pool → Linear(512 → K).
  features: "stage1".."stage4", the layer outputs (post-ReLU; sides H, H/2, H/4, H/8), and
  "pooled" (B, 512).

  Attributes:
    stage_blocks: blocks per layer; (2, 2, 2, 2) is ResNet-18, (3, 4, 6, 3) ResNet-34.
    num_classes: K.
    conv_dtype: what the convolutions run in (None: float32; bfloat16: see the module docstring).
  """
  stage_blocks: Sequence[int]
  num_classes: int
  conv_dtype: Any = None

  stage_names = ("stage1", "stage2", "stage3", "stage4")
  widths = (64, 128, 256, 512)

  @property
  def num_features(self) -> int:
    return self.widths[-1]

  def __post_init__(self):
    if len(self.stage_blocks) != len(self.widths):
      raise ValueError(f"CifarResNetV1 stage_blocks={tuple(self.stage_blocks)}: expected "
                       f"{len(self.widths)} layers")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    x = _conv3x3(64, 1, "stem_conv", conv_dtype=self.conv_dtype)(x)
    x = nn.relu(_batch_norm(train, "stem_bn")(x))
    features = {}
    for s, (width, blocks, stride) in enumerate(zip(self.widths, self.stage_blocks, (1, 2, 2, 2))):
      for i in range(blocks):
        x = ResNetV1Block(width, stride if i == 0 else 1, self.conv_dtype,
                          name=f"stage{s + 1}_block{i}")(x, train=train)
      features[f"stage{s + 1}"] = x
    features["pooled"] = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return _classifier(self.num_classes)(features["pooled"]), features


_CLASSIFIERS = {
    "wrn16_1": lambda k, dt: WideResNet(16, 1, k, dt),
    "wrn16_2": lambda k, dt: WideResNet(16, 2, k, dt),
    "wrn40_1": lambda k, dt: WideResNet(40, 1, k, dt),
    "wrn40_2": lambda k, dt: WideResNet(40, 2, k, dt),
    "resnet18_cifar": lambda k, dt: CifarResNetV1((2, 2, 2, 2), k, dt),
    "resnet34_cifar": lambda k, dt: CifarResNetV1((3, 4, 6, 3), k, dt),
}
CLASSIFIER_NAMES = tuple(_CLASSIFIERS)


def build_classifier(name: str, num_classes: int, *, dtype: str = "float32") -> nn.Module:
  """The classifier `name` (one of CLASSIFIER_NAMES) with `num_classes` outputs.

  dtype: config.dtype, "float32" or "bfloat16": what the convolutions run in (see the module
  docstring); activations, BN, params and logits are float32 either way.
  """
  if name not in _CLASSIFIERS:
    raise ValueError(f"config.model.name={name!r}: expected one of {CLASSIFIER_NAMES}")
  return _CLASSIFIERS[name](num_classes, conv_compute_dtype(dtype))
