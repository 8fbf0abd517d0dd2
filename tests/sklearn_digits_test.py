"""Tests for rfd_jax.data.sklearn_digits: the fixed stratified split of sklearn's digits."""

import chex
import numpy as np

from rfd_jax.data import datasets, sklearn_digits


def test_digits_fixed_stratified_split():
  data = sklearn_digits.load_digits(16)
  chex.assert_shape([data.train_images, data.test_images], [(1257, 16, 16, 3), (540, 16, 16, 3)])
  chex.assert_type([data.train_images, data.train_labels], [np.uint8, np.int64])
  np.testing.assert_array_equal(data.train_images[..., 0], data.train_images[..., 2])  # grey
  counts = np.bincount(data.test_labels, minlength=10)
  assert counts.min() >= 52 and counts.max() <= 55  # 30% of each class (174..183 per class)
  again = sklearn_digits.load_digits(16)
  np.testing.assert_array_equal(again.test_images, data.test_images)
  scaled = data.train_images[..., 0] / 255.0
  np.testing.assert_allclose(data.mean, scaled.mean(), rtol=1e-5)
  np.testing.assert_allclose(data.std, scaled.std(), rtol=1e-5)


def test_digits_at_native_size_are_the_sklearn_pixels():
  from sklearn import datasets
  data = sklearn_digits.load_digits(8)
  originals = {tuple(np.round(img * 255 / 16).astype(np.uint8).ravel())
               for img in datasets.load_digits().images}
  assert all(tuple(img[..., 0].ravel()) in originals for img in data.test_images[:20])
