"""What a dataset is (`Dataset`, `DatasetInfo`), loading one by name, and epoch batching.

Images stay uint8 NHWC in host memory; the steps normalise and augment them on the device
(`rfd_jax.data.augment`). One module per source: `sklearn_digits`, `tfds_source` (prepared
CIFAR-10/100, Fashion-MNIST), `image_folders` (Tiny-ImageNet, ImageNet-100, ImageNet-R). Grey
datasets (digits, fashion_mnist) are resized to config.data.image_size and repeated to 3 channels;
`config.data.train_per_class` > 0 keeps only the first N training images of each class.
"""

from __future__ import annotations

import dataclasses

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
    # Folder datasets (rfd_jax/data/image_folders.py).
    "tiny_imagenet": DatasetInfo(200, 64, (0.4803, 0.4481, 0.3976), (0.2764, 0.2688, 0.2816),
                                 resized=True),
    "imagenet100": DatasetInfo(100, 224, IMAGENET_MEAN, IMAGENET_STD, resized=True),
    "imagenet_r": DatasetInfo(200, 224, IMAGENET_MEAN, IMAGENET_STD, resized=True),
}

@dataclasses.dataclass(frozen=True)
class Dataset:
  """A whole dataset in host memory.

  Attributes:
    train_images, test_images: uint8 (N, H, W, 3); for imagenet100 / imagenet_r an
      `image_decode.LazyImages` that decodes the rows it is indexed with (same contract).
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


def grey_to_rgb(grey: np.ndarray, size: int) -> np.ndarray:
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


def epoch_batches(num_examples: int, batch_size: int, *, seed: int, task: int,
                  epoch: int) -> np.ndarray:
  """Shuffled batch indices for one epoch, dropping the last partial batch.

  A pure function of (seed, task, epoch), so a resumed run sees the same stream.
  Returns int64 (num_examples // batch_size, batch_size) indices into the task's examples.
  """
  perm = np.random.default_rng([seed, task, epoch]).permutation(num_examples)
  steps = num_examples // batch_size
  return perm[:steps * batch_size].reshape(steps, batch_size)
