"""scikit-learn's 8×8 digits: the built-in dataset (ships with the sklearn wheel, no download)."""

from __future__ import annotations

import numpy as np

from rfd_jax.data import datasets

DIGITS_TEST_FRACTION = 0.3  # fixed stratified split of sklearn's 1797 digits: 1257 train / 540 test
DIGITS_SPLIT_SEED = 0


def load_digits(image_size: int = 32) -> datasets.Dataset:
  """scikit-learn's 8×8 digits (ships with the wheel, no download) as grey-on-RGB uint8 images.

  Pixel values 0..16 are scaled to 0..255 and resized bilinearly to image_size; the grey channel is
  repeated three times. The 70/30 train/test split is stratified and fixed (seed 0).
  """
  # sklearn's `datasets`, renamed: not rfd_jax.data.datasets.
  from sklearn import datasets as sklearn_datasets  # pylint: disable=g-import-not-at-top
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  digits = sklearn_datasets.load_digits()
  grey = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  images = datasets.grey_to_rgb(grey, image_size)
  labels = digits.target.astype(np.int64)
  tr_x, te_x, tr_y, te_y = model_selection.train_test_split(
      images, labels, test_size=DIGITS_TEST_FRACTION, stratify=labels,
      random_state=DIGITS_SPLIT_SEED)
  scaled = tr_x[..., 0].astype(np.float64) / 255.0
  mean = np.full(3, scaled.mean(), np.float32)
  std = np.full(3, scaled.std(), np.float32)
  return datasets.Dataset("digits", tr_x, tr_y, te_x, te_y, mean, std)

