"""Datasets as in-memory uint8 arrays, deterministic epoch batching, and on-device augmentation.

Images stay uint8 NHWC on the host; a train/eval step receives a uint8 batch and normalises (and, in
training, augments) it on the device, so that work fuses into the step. Augmentation follows spec §1.2
by default: normalise first, then a random crop of the image zero-padded by 4 (zero in normalised
space, i.e. the mean colour) and a horizontal flip with probability 1/2. Datasets where that is
unnatural (digits: black background, no mirror symmetry) configure it, and ABD's recipe adds a
colour jitter before the crop (see `Augmentation`). Grey datasets (digits, fashion_mnist) are
resized to config.data.image_size and repeated to 3 channels; `config.data.train_per_class` > 0
keeps only the first N training images of each class.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static facts about a dataset, known without loading it."""
  num_classes: int
  image_size: int  # native side length after the dataset's own resizing
  mean: tuple[float, float, float] | None  # None: computed from the training set
  std: tuple[float, float, float] | None
  resized: bool = False  # the loader resizes to any config.data.image_size


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DATASETS = {
    "digits": DatasetInfo(10, 32, None, None, resized=True),
    "cifar10": DatasetInfo(10, 32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": DatasetInfo(100, 32, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    # Grey 28x28, resized; mean / std of the 60,000 training images at 28 px (0.28604, 0.35302).
    "fashion_mnist": DatasetInfo(10, 28, (0.2860,) * 3, (0.3530,) * 3, resized=True),
    # Folder datasets (rfd_jax/image_folders.py).
    "tiny_imagenet": DatasetInfo(200, 64, (0.4803, 0.4481, 0.3976), (0.2764, 0.2688, 0.2816),
                                 resized=True),
    "imagenet100": DatasetInfo(100, 224, IMAGENET_MEAN, IMAGENET_STD, resized=True),
    "imagenet_r": DatasetInfo(200, 224, IMAGENET_MEAN, IMAGENET_STD, resized=True),
}

DIGITS_TEST_FRACTION = 0.3  # fixed stratified split of sklearn's 1797 digits: 1257 train / 540 test
DIGITS_SPLIT_SEED = 0


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A whole dataset in host memory.

  Attributes:
    train_images, test_images: uint8 (N, H, W, 3); for imagenet100 / imagenet_r an
      `image_folders.LazyImages` that decodes the rows it is indexed with (same contract).
    train_labels, test_labels: int64 (N,), original dataset class ids.
    mean, std: float32 (3,), per-channel normalisation of images scaled to [0, 1].
  """
  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  mean: np.ndarray
  std: np.ndarray

  @property
  def num_classes(self) -> int:
    return DATASETS[self.name].num_classes


def dataset_info(name: str) -> DatasetInfo:
  if name not in DATASETS:
    raise ValueError(f"config.data.dataset={name!r} is unknown; expected one of {sorted(DATASETS)}.")
  return DATASETS[name]


def _resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of uint8 (N, h, w) or (N, h, w, 3) images to (N, size, size, ...)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if images.shape[1] == size and images.shape[2] == size:
    return images
  return np.stack([np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
                   for img in images])


def _grey_to_rgb(grey: np.ndarray, size: int) -> np.ndarray:
  """uint8 (N, h, w) → (N, size, size, 3): bilinear resize, the grey channel repeated 3 times."""
  return np.repeat(_resize_uint8(grey, size)[..., None], 3, axis=-1)


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
  """Indices (ascending) of the first `per_class` examples of each class in `labels` (N,) order."""
  rank = np.empty(len(labels), np.int64)  # rank[i]: how many earlier examples share i's label
  for label in np.unique(labels):
    where = np.flatnonzero(labels == label)
    rank[where] = np.arange(len(where))
  return np.flatnonzero(rank < per_class)


def keep_first_per_class(data: Dataset, per_class: int) -> Dataset:
  """The dataset with only the first `per_class` training images of each class (test unchanged).

  "First" is the order of `data.train_*` (for TFDS data, the prepared record order: TFDS's fixed
  hash of the file indices), so the subset is deterministic. Normalisation stays the full set's.
  """
  keep = first_per_class(data.train_labels, per_class)
  counts = np.bincount(data.train_labels[keep])
  logging.info("config.data.train_per_class=%d: training on %d of %d %s images", per_class,
               len(keep), len(data.train_labels), data.name)
  if counts.min(initial=per_class) < per_class:
    logging.warning("%s has fewer than %d training images in class(es) %s; using all of those",
                    data.name, per_class, np.flatnonzero(counts < per_class).tolist())
  return dataclasses.replace(data, train_images=data.train_images[keep],
                             train_labels=data.train_labels[keep])


def load_digits(image_size: int = 32) -> Dataset:
  """scikit-learn's 8×8 digits (ships with the wheel, no download) as grey-on-RGB uint8 images.

  Pixel values 0..16 are scaled to 0..255 and resized bilinearly to image_size; the grey channel is
  repeated three times. The 70/30 train/test split is stratified and fixed (seed 0).
  """
  from sklearn import datasets, model_selection  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  grey = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  images = _grey_to_rgb(grey, image_size)
  labels = digits.target.astype(np.int64)
  tr_x, te_x, tr_y, te_y = model_selection.train_test_split(
      images, labels, test_size=DIGITS_TEST_FRACTION, stratify=labels,
      random_state=DIGITS_SPLIT_SEED)
  scaled = tr_x[..., 0].astype(np.float64) / 255.0
  mean = np.full(3, scaled.mean(), np.float32)
  std = np.full(3, scaled.std(), np.float32)
  return Dataset("digits", tr_x, tr_y, te_x, te_y, mean, std)


def load_dataset(data_config) -> Dataset:
  """Loads `data_config.dataset` into host memory (the ImageNet-sized sets lazily).

  Raises:
    ValueError: unknown dataset, or train_per_class for a folder dataset.
    FileNotFoundError: prepared TFDS data or image files missing; the message says what to put
      where.
  """
  info = dataset_info(data_config.dataset)
  per_class = data_config.get("train_per_class", 0)
  if data_config.dataset == "digits":
    data = load_digits(data_config.image_size)
    return keep_first_per_class(data, per_class) if per_class else data
  from rfd_jax import image_folders  # pylint: disable=g-import-not-at-top
  if data_config.dataset in image_folders.FOLDER_DATASETS:
    if per_class:
      raise ValueError(f"config.data.train_per_class={per_class} is not supported for the folder "
                       f"dataset {data_config.dataset}; use 0.")
    return image_folders.load(data_config)
  from rfd_jax import tfds_data  # pylint: disable=g-import-not-at-top
  data_dir = data_config.data_dir or None
  tr_x, tr_y = tfds_data.load_split(data_config.dataset, "train", data_dir)
  te_x, te_y = tfds_data.load_split(data_config.dataset, "test", data_dir)
  data = Dataset(data_config.dataset, tr_x, tr_y, te_x, te_y,
                 np.asarray(info.mean, np.float32), np.asarray(info.std, np.float32))
  if per_class:
    data = keep_first_per_class(data, per_class)
  if tr_x.shape[-1] == 1:  # fashion_mnist: grey, handled like digits (after subsetting: cheaper)
    data = dataclasses.replace(
        data, train_images=_grey_to_rgb(data.train_images[..., 0], data_config.image_size),
        test_images=_grey_to_rgb(data.test_images[..., 0], data_config.image_size))
  return data


def epoch_batches(num_examples: int, batch_size: int, *, seed: int, task: int,
                  epoch: int) -> np.ndarray:
  """Shuffled batch indices for one epoch, dropping the last partial batch.

  A pure function of (seed, task, epoch), so a resumed run sees the same stream.
  Returns int64 (num_examples // batch_size, batch_size) indices into the task's examples.
  """
  perm = np.random.default_rng([seed, task, epoch]).permutation(num_examples)
  steps = num_examples // batch_size
  return perm[:steps * batch_size].reshape(steps, batch_size)


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
