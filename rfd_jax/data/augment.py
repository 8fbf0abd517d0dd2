"""On-device normalisation and training augmentation of uint8 image batches.

A train/eval step receives a uint8 NHWC batch and normalises (and, in training, augments) it on the
device, so that work fuses into the step. Augmentation follows spec §1.2 by default: normalise
first, then a random crop of the image zero-padded by 4 (zero in normalised space, i.e. the mean
colour) and a horizontal flip with probability 1/2. Datasets where that is unnatural (digits: black
background, no mirror symmetry) configure it, and ABD's recipe adds a colour jitter before the crop
(see `Augmentation`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def normalize(images: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
  """uint8 (B, H, W, 3) → float32 (B, H, W, 3), (x / 255 − mean) / std."""
  return (images.astype(jnp.float32) / 255.0 - mean) / std


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Training augmentation: optional colour jitter, random crop of the padded image, optional
  horizontal flip.

  Attributes:
    crop_padding: pixels of padding on each side (4 in the papers).
    crop_fill: "normalized": pad with 0 in normalised space, i.e. the dataset mean colour (the
      papers' code: padding after normalisation); "black": pad with black pixels.
    flip: horizontal flip with probability 1/2.
    jitter_brightness, jitter_contrast: torchvision's ColorJitter(brightness, contrast) before the
      crop and flip (ABD: 63/255 and 0.8; see `color_jitter`); 0 turns each off (the default).
  """
  crop_padding: int = 4
  crop_fill: str = "normalized"
  flip: bool = True
  jitter_brightness: float = 0.0
  jitter_contrast: float = 0.0

  @classmethod
  def from_config(cls, data_config) -> "Augmentation":
    # The jitter fields are optional: configs that predate them (and their checkpoints) stay valid.
    return cls(data_config.crop_padding, data_config.crop_fill, data_config.flip,
               float(data_config.get("color_jitter_brightness", 0.0)),
               float(data_config.get("color_jitter_contrast", 0.0)))


def augment(rng: jax.Array, images: jax.Array, augmentation: Augmentation, mean: jax.Array,
            std: jax.Array) -> jax.Array:
  """Applies `augmentation` to normalised images (B, H, W, C) → (B, H, W, C).

  With colour jitter this is ABD's ColorJitter → flip → crop → Normalize: the images are
  un-normalised to [0, 1], jittered, normalised again, then cropped and flipped (crop_fill "black"
  pads with what black pixels normalise to; crop-then-flip has the distribution of flip-then-crop).
  The jitter draws from `fold_in(rng, 1)`, so the crop and flip draws are the same with or without
  it, and without it this is exactly the crop and flip alone.
  """
  mean, std = jnp.asarray(mean), jnp.asarray(std)
  if augmentation.jitter_brightness > 0 or augmentation.jitter_contrast > 0:
    pixels = color_jitter(jax.random.fold_in(rng, 1), images * std + mean,
                          brightness=augmentation.jitter_brightness,
                          contrast=augmentation.jitter_contrast)
    images = (pixels - mean) / std
  fill = 0.0 if augmentation.crop_fill == "normalized" else -mean / std
  return random_crop_flip(rng, images, pad=augmentation.crop_padding, fill=fill,
                          flip=augmentation.flip)


def color_jitter(rng: jax.Array, images: jax.Array, *, brightness: float,
                 contrast: float) -> jax.Array:
  """torchvision's ColorJitter(brightness, contrast) with per-image draws (one call per image in a
  DataLoader): factors b ~ U[max(0, 1 − brightness), 1 + brightness] and c ~ U[max(0, 1 −
  contrast), 1 + contrast], the two adjustments in a random order per image; a strength of 0 skips
  that adjustment (torchvision's None). See `adjust_brightness_contrast`.

  images: float (B, H, W, 3) in [0, 1] → (B, H, W, 3) in [0, 1].
  """
  batch = images.shape[0]
  rng_b, rng_c, rng_order = jax.random.split(rng, 3)
  draw = lambda key, s: jax.random.uniform(key, (batch,), jnp.float32, max(0.0, 1.0 - s), 1.0 + s)
  return adjust_brightness_contrast(
      images, brightness=draw(rng_b, brightness) if brightness > 0 else None,
      contrast=draw(rng_c, contrast) if contrast > 0 else None,
      contrast_first=jax.random.bernoulli(rng_order, 0.5, (batch,)))


def adjust_brightness_contrast(images: jax.Array, *, brightness: jax.Array | None,
                               contrast: jax.Array | None,
                               contrast_first: jax.Array) -> jax.Array:
  """Per-image brightness and contrast with given factors, each result clamped to [0, 1].

  brightness: x ← clip(b·x) (PIL's blend with black); contrast: x ← clip(c·x + (1 − c)·m), m the
  image's mean grey level 0.299 R + 0.587 G + 0.114 B (PIL's "L"; a blend with a grey image).
  ABD applies them to uint8 PIL images, which also round the grey mean and each result to 1/255;
  here it is float. images: (B, H, W, 3) in [0, 1]; brightness, contrast: (B,) factors or None
  (skipped); contrast_first: bool (B,), True applies contrast before brightness.
  """
  def adjust_brightness(x):
    return x if brightness is None else jnp.clip(x * brightness[:, None, None, None], 0.0, 1.0)

  def adjust_contrast(x):
    if contrast is None:
      return x
    # elementwise, not a matmul: accelerators may run float32 matmuls at reduced precision
    grey = jnp.mean(0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2], axis=(1, 2))
    c = contrast[:, None, None, None]
    return jnp.clip(c * x + (1.0 - c) * grey[:, None, None, None], 0.0, 1.0)

  b_then_c = adjust_contrast(adjust_brightness(images))
  c_then_b = adjust_brightness(adjust_contrast(images))
  return jnp.where(contrast_first[:, None, None, None], c_then_b, b_then_c)


def random_crop_flip(rng: jax.Array, images: jax.Array, *, pad: int = 4, fill=0.0,
                     flip: bool = True) -> jax.Array:
  """Per-sample random crop of the padded image and horizontal flip (p = 1/2).

  images: float (B, H, W, C), already normalised → (B, H, W, C). fill: the padding value, a scalar
  or per channel (C,), in normalised units.
  """
  batch, height, width, channels = images.shape
  rng_y, rng_x, rng_flip = jax.random.split(rng, 3)
  padded = jnp.pad(images - fill, ((0, 0), (pad, pad), (pad, pad), (0, 0))) + fill
  top = jax.random.randint(rng_y, (batch,), 0, 2 * pad + 1)
  left = jax.random.randint(rng_x, (batch,), 0, 2 * pad + 1)
  crop = jax.vmap(lambda img, y, x: jax.lax.dynamic_slice(
      img, (y, x, 0), (height, width, channels)))(padded, top, left)
  if not flip:
    return crop
  flips = jax.random.bernoulli(rng_flip, 0.5, (batch,))
  return jnp.where(flips[:, None, None, None], crop[:, :, ::-1, :], crop)
