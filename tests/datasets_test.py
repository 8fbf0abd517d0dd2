"""Tests for rfd_jax.data.datasets: dataset names, mock CIFAR, per-class subsets, batching."""

import chex
import ml_collections
import numpy as np
import pytest

from rfd_jax.data import datasets, sklearn_digits, sources

from fake_tfds import fake_image, mock_cifar, write_placeholder_prepared_dir


def test_unknown_dataset_names_the_field():
  with pytest.raises(ValueError, match="config.data.dataset='imagenet7'"):
    datasets.dataset_info("imagenet7")


def test_cifar10_through_mocked_tfds(tmp_path):
  write_placeholder_prepared_dir(tmp_path, "cifar10")
  cfg = ml_collections.ConfigDict({"dataset": "cifar10", "data_dir": str(tmp_path),
                                   "image_size": 32})
  with mock_cifar(12):
    data = sources.load_dataset(cfg)
  chex.assert_shape([data.train_images, data.test_images], [(12, 32, 32, 3)] * 2)
  np.testing.assert_array_equal(data.train_images[5], fake_image(5))
  np.testing.assert_allclose(data.mean, [0.4914, 0.4822, 0.4465])
  assert data.num_classes == 10


def test_first_per_class_keeps_the_first_n_of_each_class_in_order():
  labels = np.array([3, 1, 3, 3, 0, 1, 1, 3])
  np.testing.assert_array_equal(datasets.first_per_class(labels, 2), [0, 1, 2, 4, 5])
  np.testing.assert_array_equal(datasets.first_per_class(labels, 9), np.arange(8))


def test_train_per_class_subsets_training_images_only():
  cfg = ml_collections.ConfigDict({"dataset": "digits", "data_dir": "", "image_size": 8,
                                   "train_per_class": 5})
  data, full = sources.load_dataset(cfg), sklearn_digits.load_digits(8)
  np.testing.assert_array_equal(np.bincount(data.train_labels), [5] * 10)
  keep = datasets.first_per_class(full.train_labels, 5)
  np.testing.assert_array_equal(data.train_images, full.train_images[keep])
  np.testing.assert_array_equal(data.test_labels, full.test_labels)
  np.testing.assert_array_equal(data.mean, full.mean)  # normalisation stays the full set's


def test_epoch_batches_deterministic_and_drop_last():
  a = datasets.epoch_batches(103, 10, seed=0, task=1, epoch=2)
  b = datasets.epoch_batches(103, 10, seed=0, task=1, epoch=2)
  c = datasets.epoch_batches(103, 10, seed=0, task=1, epoch=3)
  chex.assert_shape(a, (10, 10))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert len(np.unique(a)) == 100 and a.max() < 103
