"""Tests for rfd_jax.data.prepare.tfds_writer: a failure while writing leaves nothing behind, and
--overwrite replaces an existing dataset only once the new one is complete."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from rfd_jax.data import tfds_source
from rfd_jax.data.prepare import tfds_writer

from fake_idx import no_network


@pytest.fixture(autouse=True, scope="module")
def _offline():
  with no_network():
    yield


def _examples(num: int, *, fail_after: int | None = None):
  for index in range(num):
    if index == fail_after:
      raise RuntimeError("source went away")
    image = np.full((28, 28), index, np.uint8)
    yield index, {"image": tfds_writer.encode_png(image), "label": index % 10}


def _write(data_dir, *, num_train: int, fail_after: int | None = None, overwrite: bool = False):
  return tfds_writer.write_tfds_dataset(
      {"train": _examples(num_train, fail_after=fail_after), "test": _examples(2)},
      dataset_name="fashion_mnist", data_dir=data_dir, overwrite=overwrite)


def test_failure_while_writing_leaves_nothing(tmp_path):
  data_dir = tmp_path / "tfds"
  with pytest.raises(RuntimeError, match="source went away"):
    _write(data_dir, num_train=5, fail_after=3)
  assert not data_dir.exists()

  data_dir.mkdir()
  (data_dir / "cifar10").mkdir()  # someone else's data stays; only our staging dir goes
  with pytest.raises(RuntimeError):
    _write(data_dir, num_train=5, fail_after=3)
  assert [p.name for p in data_dir.iterdir()] == ["cifar10"]


def test_overwrite_replaces_only_a_complete_dataset(tmp_path):
  data_dir = tmp_path / "tfds"
  target = _write(data_dir, num_train=3)
  assert target == tfds_writer.prepared_dir("fashion_mnist", data_dir=data_dir)
  with pytest.raises(FileExistsError, match="--overwrite"):
    _write(data_dir, num_train=4)

  with pytest.raises(RuntimeError):
    _write(data_dir, num_train=4, fail_after=2, overwrite=True)
  _, labels = tfds_source.load_split("fashion_mnist", "train", data_dir)
  assert len(labels) == 3  # the old dataset, intact
  assert [p.name for p in data_dir.iterdir()] == ["fashion_mnist"]

  _write(data_dir, num_train=4, overwrite=True)
  images, labels = tfds_source.load_split("fashion_mnist", "train", data_dir)
  assert images.shape == (4, 28, 28, 1)
  assert sorted(images[:, 0, 0, 0]) == [0, 1, 2, 3]
  assert [p.name for p in data_dir.iterdir()] == ["fashion_mnist"]


def test_encode_png_accepts_grey_and_rgb():
  grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
  for image, mode in ((grey, "L"), (grey[..., None], "L"), (np.stack([grey] * 3, -1), "RGB")):
    decoded = Image.open(io.BytesIO(tfds_writer.encode_png(image)))
    assert decoded.mode == mode
    np.testing.assert_array_equal(np.asarray(decoded).reshape(image.shape), image)
