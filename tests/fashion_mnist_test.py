"""Seq-Fashion-MNIST: the converter (tiny idx files -> TFDS array_record -> tfds.data_source), its
missing-file and malformed-file errors (exit 2, nothing written), the training loader on the
converted set, and configs/fashion_mnist.py."""

from __future__ import annotations

import gzip
import os

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import fashion_mnist as fashion_mnist_config
from rfd_jax.cli import config_validation
from rfd_jax import prepare_data
from rfd_jax.data import sources
from rfd_jax.data.prepare import fashion_mnist
from rfd_jax.engine import errors

from fake_idx import idx_bytes, no_network, write_fake_fashion_mnist, write_gzip

@pytest.fixture(autouse=True, scope="module")
def _offline():
  with no_network():
    yield


FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"]


@pytest.fixture(name="prepared", scope="module")
def _prepared(tmp_path_factory):
  """Converts one tiny set (12 train, 5 test) through the CLI; returns (data_dir, expected)."""
  root = tmp_path_factory.mktemp("fashion")
  expected = write_fake_fashion_mnist(root / "idx", rng=np.random.default_rng(0))
  status = prepare_data.main(["fashion_mnist", "--source", str(root / "idx"),
                              "--data_dir", str(root / "tfds")])
  assert status == 0
  return root / "tfds", expected


def _read_all(data_dir, split: str) -> list[dict]:
  source = tfds.data_source("fashion_mnist", split=split, data_dir=os.fspath(data_dir),
                            download=False, try_gcs=False)
  return [source[i] for i in range(len(source))]


def _file_index(images: np.ndarray, image: np.ndarray) -> int:
  """Index of `image` (28, 28) in the file's images (the random images are all distinct)."""
  (index,) = np.flatnonzero((images == image).all(axis=(1, 2)))
  return int(index)


def test_converted_set_has_tfds_features_and_the_file_contents(prepared):
  data_dir, expected = prepared
  info = tfds.builder("fashion_mnist", data_dir=str(data_dir)).info
  assert str(info.version) == str(tfds.builder_cls("fashion_mnist").VERSION)
  assert set(info.features.keys()) == {"image", "label"}
  assert info.features["image"].shape == (28, 28, 1)
  assert info.features["image"].np_dtype == np.uint8
  assert info.features["label"].names == FASHION_NAMES
  assert {name: split.num_examples for name, split in info.splits.items()} == {
      "train": 12, "test": 5}
  assert info.file_format.value == "array_record"
  assert info.module_name == tfds.builder_cls("fashion_mnist").__module__
  assert [p.name for p in data_dir.iterdir()] == ["fashion_mnist"]  # no staging dir left

  for split, (images, labels) in expected.items():
    records = _read_all(data_dir, split)
    order = [_file_index(images, record["image"][..., 0]) for record in records]
    assert sorted(order) == list(range(len(labels)))
    for record, index in zip(records, order):
      assert record["image"].shape == (28, 28, 1) and record["image"].dtype == np.uint8
      assert record["label"] == labels[index]


def test_loader_reads_the_converted_set_grey_to_rgb_and_subset(prepared):
  data_dir, expected = prepared
  cfg = ml_collections.ConfigDict({"dataset": "fashion_mnist", "data_dir": str(data_dir),
                                   "image_size": 28, "train_per_class": 0})
  data = sources.load_dataset(cfg)
  assert data.train_images.shape == (12, 28, 28, 3) and data.test_images.shape == (5, 28, 28, 3)
  assert data.train_images.dtype == np.uint8 and data.train_labels.dtype == np.int64
  np.testing.assert_array_equal(data.train_images[..., 0], data.train_images[..., 2])
  train_images, train_labels = expected["train"]
  for image, label in zip(data.train_images, data.train_labels):  # 28 px: the file's pixels
    assert train_labels[_file_index(train_images, image[..., 0])] == label
  np.testing.assert_allclose(data.mean, [0.2860] * 3)
  assert data.num_classes == 10

  cfg.image_size, cfg.train_per_class = 16, 1
  small = sources.load_dataset(cfg)
  assert small.train_images.shape == (10, 16, 16, 3) and small.test_images.shape == (5, 16, 16, 3)
  # The first image of each class in record order (classes 0 and 1 have two each in the files).
  assert sorted(small.train_labels) == list(range(10))
  firsts = [np.flatnonzero(data.train_labels == c)[0] for c in range(10)]
  np.testing.assert_array_equal(small.train_labels, data.train_labels[sorted(firsts)])


def test_missing_files_exit_2_with_one_line_naming_the_package(tmp_path, capsys):
  (tmp_path / "idx").mkdir()
  write_gzip(tmp_path / "idx" / "train-images-idx3-ubyte.gz", b"")
  status = prepare_data.main(["fashion_mnist", "--source", str(tmp_path / "idx"),
                              "--data_dir", str(tmp_path / "tfds")])
  assert status == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1
  assert "dataset-fashion-mnist" in err and "--source" in err and str(tmp_path / "idx") in err
  assert all(name in err for name in fashion_mnist.FILE_NAMES)
  assert not (tmp_path / "tfds").exists()


def test_default_source_is_debians_directory():
  args = prepare_data._argument_parser().parse_args(["fashion_mnist", "--data_dir", "x"])
  assert args.source == "/usr/share/datasets/fashion-mnist"


def _truncate(path):
  content = path.read_bytes()
  path.write_bytes(content[:len(content) // 2])


def _not_gzip(path):
  path.write_bytes(b"<html>Not Found</html>")


def _wrong_magic(path):
  write_gzip(path, idx_bytes(np.zeros(3, np.uint8)))  # a labels file where images belong


def _short_payload(path):
  payload = gzip.decompress(path.read_bytes())
  write_gzip(path, payload[:-28])  # a complete gzip stream of a truncated idx file


def _fewer_images_than_labels(path):
  write_gzip(path, idx_bytes(np.zeros((11, 28, 28), np.uint8)))


@pytest.mark.parametrize("corrupt, message", [
    (_truncate, "not a readable gzip file"),
    (_not_gzip, "not a readable gzip file"),
    (_wrong_magic, "idx magic 0x00000801, expected 0x00000803"),
    (_short_payload, "announces 12 items"),
    (_fewer_images_than_labels, "holds 11 images but"),
])
def test_malformed_file_exit_2_and_nothing_written(tmp_path, capsys, corrupt, message):
  write_fake_fashion_mnist(tmp_path / "idx", rng=np.random.default_rng(1))
  images_file = tmp_path / "idx" / "train-images-idx3-ubyte.gz"
  corrupt(images_file)
  data_dir = tmp_path / "tfds"
  status = prepare_data.main(["fashion_mnist", "--source", str(tmp_path / "idx"),
                              "--data_dir", str(data_dir)])
  assert status == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and message in err and str(images_file) in err
  assert not data_dir.exists()


def test_label_out_of_range_is_refused(tmp_path):
  write_fake_fashion_mnist(tmp_path, rng=np.random.default_rng(2))
  write_gzip(tmp_path / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.full(5, 10, np.uint8)))
  with pytest.raises(fashion_mnist.IdxFormatError, match="label 10, outside the 10"):
    fashion_mnist.read_fashion_mnist(tmp_path)


def test_config_variants_validate():
  cpu = fashion_mnist_config.get_config()
  spec = config_validation.validate(cpu)
  assert spec.num_tasks == 5 and set(spec.sizes) == {2}
  assert (cpu.method, cpu.model.name, cpu.data.dataset) == ("rfd", "resnet32", "fashion_mnist")
  assert (cpu.data.image_size, cpu.data.train_per_class) == (16, 200)
  assert (cpu.data.crop_padding, cpu.data.crop_fill, cpu.data.flip) == (2, "black", False)
  full = fashion_mnist_config.get_config("full")
  config_validation.validate(full)
  assert (full.data.image_size, full.data.train_per_class, full.data.batch_size) == (32, 0, 128)
  assert (full.optim.epochs, full.optim.ft_epochs, full.inversion.iterations) == (200, 40, 5000)
  assert (full.data.crop_padding, full.data.crop_fill, full.data.flip) == (4, "black", False)
  with pytest.raises(ValueError, match="'tpu'"):
    fashion_mnist_config.get_config("tpu")


@pytest.mark.parametrize("dataset, value, message", [
    ("fashion_mnist", -1, "train_per_class=-1 must be an integer >= 0"),
    ("tiny_imagenet", 10, "not supported for the folder dataset tiny_imagenet"),
])
def test_train_per_class_is_validated(dataset, value, message):
  config = fashion_mnist_config.get_config()
  config.data.dataset, config.data.train_per_class = dataset, value
  with pytest.raises(errors.ConfigError, match=message):
    config_validation.validate(config)
