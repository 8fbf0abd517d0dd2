"""Tests for rfd_jax.data.augment: normalisation, crop and flip, colour jitter, Augmentation."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rfd_jax.data import augment


def test_normalize_matches_numpy():
  images = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
  mean, std = np.array([0.1, 0.2, 0.3], np.float32), np.array([0.5, 0.25, 2.0], np.float32)
  np.testing.assert_allclose(augment.normalize(images, mean, std),
                             (images / 255.0 - mean) / std, rtol=1e-5, atol=1e-6)


def test_random_crop_flip_matches_numpy_reference():
  rng = jax.random.key(3)
  images = np.random.default_rng(1).normal(size=(6, 8, 8, 3)).astype(np.float32)
  out = np.asarray(augment.random_crop_flip(rng, jnp.asarray(images), pad=4))
  # same draws as the implementation, then crop/flip written out in numpy
  rng_y, rng_x, rng_flip = jax.random.split(rng, 3)
  top = np.asarray(jax.random.randint(rng_y, (6,), 0, 9))
  left = np.asarray(jax.random.randint(rng_x, (6,), 0, 9))
  flip = np.asarray(jax.random.bernoulli(rng_flip, 0.5, (6,)))
  padded = np.zeros((6, 16, 16, 3), np.float32)
  padded[:, 4:12, 4:12] = images
  for i in range(6):
    expected = padded[i, top[i]:top[i] + 8, left[i]:left[i] + 8]
    if flip[i]:
      expected = expected[:, ::-1]
    np.testing.assert_array_equal(out[i], expected)
  assert len(set(zip(top, left))) > 1  # the draws really vary per sample


def test_black_fill_without_flip_shifts_over_black():
  mean, std = np.array([0.2, 0.2, 0.2], np.float32), np.array([0.4, 0.4, 0.4], np.float32)
  pixels = np.zeros((4, 6, 6, 3), np.uint8)
  pixels[:, 2:4, 2:4] = 255  # a white square on black
  images = augment.normalize(pixels, mean, std)
  aug = augment.Augmentation(crop_padding=2, crop_fill="black", flip=False)
  out = np.asarray(augment.augment(jax.random.key(0), images, aug, mean, std))
  black = (0 - 0.2) / 0.4
  # every output pixel is either the square or black background: no mean-colour bars
  assert np.all(np.isclose(out, black, atol=1e-6) | np.isclose(out, (1 - 0.2) / 0.4, atol=1e-6))
  assert np.all((np.isclose(out, (1 - 0.2) / 0.4)).sum(axis=(1, 2, 3)) == 4 * 3)  # square kept
  # the papers' fill pads with 0 in normalised space, i.e. the mean colour
  paper = np.asarray(augment.augment(jax.random.key(0), images,
                                     augment.Augmentation(2, "normalized", False),
                                     mean, std))
  assert np.isclose(paper, 0.0).any() and not np.isclose(out, 0.0).any()


# ---- colour jitter (ABD's recipe) -------------------------------------------------------------


def _numpy_jitter(images, brightness, contrast, contrast_first):
  """torchvision's adjust_brightness / adjust_contrast written out per image: b·x and c·x +
  (1 − c)·mean(0.299 R + 0.587 G + 0.114 B), each clamped to [0, 1], in the given order."""
  out = []
  for img, b, c, cf in zip(images.astype(np.float64), brightness, contrast, contrast_first):
    ops = [lambda x: np.clip(x * b, 0, 1),
           lambda x: np.clip(c * x + (1 - c) * (x @ [0.299, 0.587, 0.114]).mean(), 0, 1)]
    for op in (ops[::-1] if cf else ops):
      img = op(img)
    out.append(img)
  return np.stack(out)


def test_adjust_brightness_contrast_matches_numpy_with_fixed_factors():
  images = np.random.default_rng(0).uniform(0, 1, (4, 5, 5, 3)).astype(np.float32)
  brightness = np.array([1.24, 0.76, 1.1, 0.9], np.float32)
  contrast = np.array([1.8, 0.2, 1.5, 0.5], np.float32)
  contrast_first = np.array([True, False, False, True])
  out = np.asarray(augment.adjust_brightness_contrast(
      jnp.asarray(images), brightness=jnp.asarray(brightness), contrast=jnp.asarray(contrast),
      contrast_first=jnp.asarray(contrast_first)))
  expected = _numpy_jitter(images, brightness, contrast, contrast_first)
  np.testing.assert_allclose(out, expected, atol=2e-6)
  assert (out == 1.0).any() and (out == 0.0).any()  # the clamps were exercised
  # the order matters (clamping), so both branches are really tested
  swapped = _numpy_jitter(images, brightness, contrast, ~contrast_first)
  assert not np.allclose(swapped, expected, atol=1e-3)
  # a skipped adjustment is the identity
  only_b = augment.adjust_brightness_contrast(
      jnp.asarray(images), brightness=jnp.asarray(brightness), contrast=None,
      contrast_first=jnp.asarray(contrast_first))
  np.testing.assert_allclose(only_b, np.clip(images * brightness[:, None, None, None], 0, 1),
                             atol=1e-6)


def test_color_jitter_draws_per_image_factors_in_torchvision_ranges():
  rng = jax.random.key(5)
  images = np.random.default_rng(1).uniform(0, 1, (64, 4, 4, 3)).astype(np.float32)
  out = np.asarray(augment.color_jitter(rng, jnp.asarray(images), brightness=63 / 255,
                                        contrast=0.8))
  # the implementation's draws, then the adjustments written out in numpy
  rng_b, rng_c, rng_order = jax.random.split(rng, 3)
  b = np.asarray(jax.random.uniform(rng_b, (64,), minval=1 - 63 / 255, maxval=1 + 63 / 255))
  c = np.asarray(jax.random.uniform(rng_c, (64,), minval=0.2, maxval=1.8))
  order = np.asarray(jax.random.bernoulli(rng_order, 0.5, (64,)))
  np.testing.assert_allclose(out, _numpy_jitter(images, b, c, order), atol=2e-6)
  assert 0 < order.sum() < 64 and len(np.unique(b)) == 64  # per image: factors and order vary
  # the factor ranges themselves: brightness on a flat grey image, contrast on a two-level one
  grey = jnp.full((512, 2, 2, 3), 0.25)
  factors = np.asarray(augment.color_jitter(rng, grey, brightness=63 / 255,
                                            contrast=0.0))[:, 0, 0, 0] / 0.25
  assert factors.min() >= 1 - 63 / 255 - 1e-6 and factors.max() <= 1 + 63 / 255 + 1e-6
  assert factors.min() < 0.77 and factors.max() > 1.23
  two_level = jnp.asarray(np.repeat([0.2, 0.6], 2)[None, :, None, None] * np.ones((512, 4, 1, 3)))
  for strength, low, high in ((0.8, 0.2, 1.8), (1.5, 0.0, 2.5)):  # max(0, 1 − s)
    out = np.asarray(augment.color_jitter(rng, two_level, brightness=0.0,
                                          contrast=strength))
    factors = (out[:, 2, 0, 0] - 0.4) / 0.2  # 0.6 → 0.4 + 0.2·c, below the clamp for c < 3
    assert factors.min() >= low - 1e-5 and factors.max() <= high + 1e-5
    assert factors.min() < low + 0.05 and factors.max() > high - 0.05


@pytest.mark.parametrize("fill", ["normalized", "black"])
def test_augment_without_jitter_is_exactly_the_crop_and_flip(fill):
  """Jitter off (the default, and configs without the fields): bit-identical to the former
  augment, i.e. `random_crop_flip` with the fill in normalised units."""
  mean, std = np.array([0.5, 0.4, 0.3], np.float32), np.array([0.25, 0.2, 0.3], np.float32)
  images = augment.normalize(
      np.random.default_rng(2).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8), mean, std)
  config = ml_collections.ConfigDict({"crop_padding": 4, "crop_fill": fill, "flip": True})
  aug = augment.Augmentation.from_config(config)
  assert aug == augment.Augmentation(4, fill, True, 0.0, 0.0)
  rng = jax.random.key(7)
  out = augment.augment(rng, images, aug, mean, std)
  former_fill = 0.0 if fill == "normalized" else -jnp.asarray(mean) / jnp.asarray(std)
  np.testing.assert_array_equal(
      out, augment.random_crop_flip(rng, images, pad=4, fill=former_fill, flip=True))


def test_augment_with_jitter_runs_jitter_then_flip_then_black_padded_crop():
  """ABD's order: ColorJitter on [0, 1] pixels → flip → RandomCrop(padding=4, black) →
  Normalize; the crop and flip draws are those of the jitter-free augmentation."""
  mean, std = np.array([0.5, 0.4, 0.3], np.float32), np.array([0.25, 0.2, 0.3], np.float32)
  pixels = np.random.default_rng(3).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
  images = augment.normalize(pixels, mean, std)
  aug = augment.Augmentation(4, "black", True, 63 / 255, 0.8)
  rng = jax.random.key(11)
  out = np.asarray(augment.augment(rng, images, aug, mean, std))
  # jitter draws from fold_in(rng, 1), as color_jitter's own test reproduces them
  rng_b, rng_c, rng_order = jax.random.split(jax.random.fold_in(rng, 1), 3)
  b = np.asarray(jax.random.uniform(rng_b, (6,), minval=1 - 63 / 255, maxval=1 + 63 / 255))
  c = np.asarray(jax.random.uniform(rng_c, (6,), minval=0.2, maxval=1.8))
  order = np.asarray(jax.random.bernoulli(rng_order, 0.5, (6,)))
  jittered = _numpy_jitter(pixels / 255.0, b, c, order)
  # crop/flip draws of random_crop_flip; padding is black, i.e. 0 before normalisation
  rng_y, rng_x, rng_flip = jax.random.split(rng, 3)
  top = np.asarray(jax.random.randint(rng_y, (6,), 0, 9))
  left = np.asarray(jax.random.randint(rng_x, (6,), 0, 9))
  flip = np.asarray(jax.random.bernoulli(rng_flip, 0.5, (6,)))
  padded = np.zeros((6, 16, 16, 3))
  padded[:, 4:12, 4:12] = jittered
  for i in range(6):
    expected = padded[i, top[i]:top[i] + 8, left[i]:left[i] + 8]
    expected = (expected[:, ::-1] if flip[i] else expected)
    np.testing.assert_allclose(out[i], (expected - mean) / std, atol=2e-5)
  assert ((top != 4) | (left != 4)).any()  # some padding is in view, and it is black
  assert np.isclose(out, -mean / std, atol=1e-5).all(axis=-1).any()
