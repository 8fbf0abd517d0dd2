"""Tests for rfd_jax.data.tfds_source: mocked reads through tfds.data_source, missing-data errors."""

from __future__ import annotations

import socket
import time
from unittest import mock

import chex
import numpy as np
import pytest
import tensorflow_datasets as tfds

from rfd_jax.data import tfds_source

from fake_tfds import fake_image, mock_cifar, write_placeholder_prepared_dir


@pytest.fixture(name="no_network")
def _no_network(monkeypatch):
  """Makes any connection attempt fail loudly instead of hanging."""

  def refuse(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args}")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.parametrize("name, num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_load_split_reads_through_tfds_data_source(tmp_path, no_network, name, num_classes):
  del no_network
  write_placeholder_prepared_dir(tmp_path, name)
  num_examples = 4100  # More than one read batch.
  seen_builders = []

  with mock_cifar(num_examples, seen_builders), \
       mock.patch.object(tfds, "data_source", wraps=tfds.data_source) as data_source:
    images, labels = tfds_source.load_split(name, "train", str(tmp_path))

  data_source.assert_called_once_with(name, split="train", data_dir=str(tmp_path),
                                      download=False, try_gcs=False)
  assert seen_builders == [(name, "train")]
  chex.assert_shape(images, (num_examples, 32, 32, 3))
  chex.assert_type(images, np.uint8)
  chex.assert_shape(labels, (num_examples,))
  chex.assert_type(labels, np.int64)
  np.testing.assert_array_equal(labels, (7 * np.arange(num_examples)) % num_classes)
  for index in (0, 1, 4095, 4096, num_examples - 1):
    np.testing.assert_array_equal(images[index], fake_image(index))


def test_load_split_accepts_split_expressions(tmp_path):
  write_placeholder_prepared_dir(tmp_path, "cifar10")
  with mock_cifar(3):
    images, labels = tfds_source.load_split("cifar10", "test[:2]+train", tmp_path)
  chex.assert_shape(images, (3, 32, 32, 3))
  chex.assert_shape(labels, (3,))


def test_missing_data_fails_fast_with_fix(tmp_path, no_network):
  del no_network
  with mock.patch.object(tfds, "data_source", wraps=tfds.data_source) as data_source:
    start = time.monotonic()
    with pytest.raises(tfds_source.PreparedDataNotFoundError) as error:
      tfds_source.load_split("cifar100", "train", str(tmp_path))
    elapsed = time.monotonic() - start

  assert elapsed < 5.0
  data_source.assert_not_called()
  assert isinstance(error.value, FileNotFoundError)
  message = str(error.value)
  version = str(tfds.builder_cls("cifar100").VERSION)
  assert str(tmp_path / "cifar100" / version / "dataset_info.json") in message
  assert (f"python -m rfd_jax.prepare_data cifar100 --archive /path/to/cifar-100-python.tar.gz "
          f"--data_dir {tmp_path}") in message
  assert f"--config.data.data_dir={tmp_path}" in message
  assert "https://www.cs.toronto.edu/~kriz/cifar.html" in message


def test_missing_fashion_mnist_names_the_debian_package_and_converter(tmp_path):
  with pytest.raises(tfds_source.PreparedDataNotFoundError) as error:
    tfds_source.load_split("fashion_mnist", "train", tmp_path)
  message = str(error.value)
  assert "apt-get install dataset-fashion-mnist" in message and "--source" in message
  assert f"python -m rfd_jax.prepare_data fashion_mnist --data_dir {tmp_path}" in message


def test_missing_data_uses_tfds_data_dir_env_when_data_dir_is_none(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  with pytest.raises(tfds_source.PreparedDataNotFoundError, match="--data_dir " + str(tmp_path)):
    tfds_source.load_split("cifar10", "test", None)


def test_tfrecord_only_data_is_reported_as_needing_array_record(tmp_path):
  write_placeholder_prepared_dir(tmp_path, "cifar10", file_format="tfrecord")
  with pytest.raises(tfds_source.PreparedDataNotFoundError) as error:
    tfds_source.load_split("cifar10", "train", tmp_path)
  message = str(error.value)
  assert "tfrecord" in message and "array_record" in message
  assert "prepare_data cifar10" in message


def test_other_versions_are_mentioned(tmp_path):
  (tmp_path / "cifar10" / "1.0.0").mkdir(parents=True)
  with pytest.raises(tfds_source.PreparedDataNotFoundError, match="1.0.0"):
    tfds_source.load_split("cifar10", "train", tmp_path)


def test_unknown_split_and_dataset_are_value_errors(tmp_path):
  write_placeholder_prepared_dir(tmp_path, "cifar10")
  with pytest.raises(ValueError, match="validation"):
    tfds_source.load_split("cifar10", "validation", tmp_path)
  with pytest.raises(ValueError, match="mnist"):
    tfds_source.load_split("mnist", "train", tmp_path)


def test_base_split_names():
  assert tfds_source.base_split_names("train") == ["train"]
  assert tfds_source.base_split_names("train[:10%]+test[5:]") == ["train", "test"]
