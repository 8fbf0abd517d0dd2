"""Tests for rfd_jax.prepare_data: tiny fake CIFAR archives -> TFDS array_record -> load_split."""

from __future__ import annotations

import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from rfd_jax import prepare_data
from rfd_jax.data import tfds_source
from rfd_jax.data.prepare import cifar

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]


def _add_pickle(archive: tarfile.TarFile, member_name: str, content: object, *,
                protocol: int) -> None:
  payload = pickle.dumps(content, protocol=protocol)
  info = tarfile.TarInfo(member_name)
  info.size = len(payload)
  archive.addfile(info, io.BytesIO(payload))


def _rows_to_images_by_definition(rows: np.ndarray) -> np.ndarray:
  """image[n, y, x, c] = rows[n, c * 1024 + y * 32 + x]: R plane, then G, then B, row-major."""
  images = np.empty((len(rows), 32, 32, 3), dtype=np.uint8)
  for channel in range(3):
    for y in range(32):
      start = channel * 1024 + y * 32
      images[:, y, :, channel] = rows[:, start:start + 32]
  return images


def _write_fake_cifar10(path, *, rng: np.random.Generator,
                        batch_sizes=(3, 2, 4, 1, 2), test_size=3) -> dict[str, tuple]:
  """Writes an archive laid out like cifar-10-python.tar.gz; returns split -> (images, labels).

  Keys are bytes and the protocol is 2, as in the official (Python 2) pickles.
  """
  expected = {}
  with tarfile.open(path, "w:gz") as archive:
    split_rows = {"train": [], "test": []}
    split_labels = {"train": [], "test": []}
    members = [(f"data_batch_{i + 1}", "train", size) for i, size in enumerate(batch_sizes)]
    members.append(("test_batch", "test", test_size))
    for member_name, split, size in members:
      rows = rng.integers(0, 256, (size, 3072), dtype=np.uint8)
      labels = rng.integers(0, 10, size).tolist()
      _add_pickle(archive, f"cifar-10-batches-py/{member_name}",
                  {b"batch_label": member_name.encode(), b"labels": labels, b"data": rows,
                   b"filenames": [b"x.png"] * size}, protocol=2)
      split_rows[split].append(rows)
      split_labels[split].extend(labels)
    _add_pickle(archive, "cifar-10-batches-py/batches.meta",
                {b"num_cases_per_batch": 10000, b"num_vis": 3072,
                 b"label_names": [name.encode() for name in CIFAR10_NAMES]}, protocol=2)
  for split in split_rows:
    expected[split] = (_rows_to_images_by_definition(np.concatenate(split_rows[split])),
                       np.asarray(split_labels[split], dtype=np.int64))
  return expected


def _write_fake_cifar100(path, *, rng: np.random.Generator,
                         sizes=(("train", 5), ("test", 4))) -> dict[str, tuple]:
  """Writes an archive laid out like cifar-100-python.tar.gz (str keys, current protocol).

  Returns split -> (images, fine labels, coarse labels).
  """
  expected = {}
  with tarfile.open(path, "w:gz") as archive:
    for split, size in sizes:
      rows = rng.integers(0, 256, (size, 3072), dtype=np.uint8)
      fine = rng.integers(0, 100, size)
      coarse = rng.integers(0, 20, size)
      _add_pickle(archive, f"cifar-100-python/{split}",
                  {"filenames": ["x.png"] * size, "batch_label": split, "data": rows,
                   "fine_labels": fine.tolist(), "coarse_labels": coarse.tolist()},
                  protocol=pickle.HIGHEST_PROTOCOL)
      expected[split] = (_rows_to_images_by_definition(rows), fine, coarse)
    _add_pickle(archive, "cifar-100-python/meta",
                {"fine_label_names": [f"fine{i}" for i in range(100)],
                 "coarse_label_names": [f"coarse{i}" for i in range(20)]},
                protocol=pickle.HIGHEST_PROTOCOL)
  return expected


def _record_indices(name: str, split: str, data_dir) -> np.ndarray:
  """Original row index of each stored record, from its id ("train_00007" -> 7)."""
  source = tfds.data_source(name, split=split, data_dir=os.fspath(data_dir), download=False,
                            try_gcs=False)
  return np.array([int(source[i]["id"].decode().rsplit("_", 1)[1]) for i in range(len(source))])


def test_rows_to_hwc_images_matches_the_plane_layout():
  rows = np.arange(2 * 3072, dtype=np.int64).reshape(2, 3072) % 251
  np.testing.assert_array_equal(cifar.rows_to_hwc_images(rows),
                                _rows_to_images_by_definition(rows.astype(np.uint8)))


def test_cifar10_round_trip(tmp_path, capsys):
  archive_path = tmp_path / "cifar-10-python.tar.gz"
  expected = _write_fake_cifar10(archive_path, rng=np.random.default_rng(0))
  data_dir = tmp_path / "tfds"

  status = prepare_data.main(["cifar10", "--archive", str(archive_path),
                              "--data_dir", str(data_dir)])

  assert status == 0
  dataset_dir = data_dir / "cifar10" / str(tfds.builder_cls("cifar10").VERSION)
  out = capsys.readouterr().out
  assert str(dataset_dir) in out
  # it says what it does (converting a local archive), not tfds's "Downloading and preparing"
  assert "nothing is downloaded" in out and "ownload" not in out.replace("nothing is downloaded", "")
  assert list(dataset_dir.glob("cifar10-train.array_record-*"))
  for split, (images, labels) in expected.items():
    loaded_images, loaded_labels = tfds_source.load_split("cifar10", split, str(data_dir))
    order = _record_indices("cifar10", split, data_dir)
    assert sorted(order) == list(range(len(labels)))
    np.testing.assert_array_equal(loaded_images, images[order])
    np.testing.assert_array_equal(loaded_labels, labels[order])
    assert loaded_images.dtype == np.uint8 and loaded_labels.dtype == np.int64

  info = tfds.builder("cifar10", data_dir=str(data_dir)).info
  assert info.features["image"].shape == (32, 32, 3)
  assert info.features["image"].np_dtype == np.uint8
  assert info.features["label"].names == CIFAR10_NAMES
  assert set(info.features.keys()) == {"id", "image", "label"}
  assert {name: split.num_examples for name, split in info.splits.items()} == {
      "train": 12, "test": 3}
  assert info.file_format.value == "array_record"
  assert info.module_name == tfds.builder_cls("cifar10").__module__


def test_cifar100_round_trip(tmp_path):
  archive_path = tmp_path / "cifar-100-python.tar.gz"
  expected = _write_fake_cifar100(archive_path, rng=np.random.default_rng(1))
  data_dir = tmp_path / "tfds"

  assert prepare_data.main(["cifar100", "--archive", str(archive_path),
                            "--data_dir", str(data_dir)]) == 0

  for split, (images, fine, coarse) in expected.items():
    loaded_images, loaded_labels = tfds_source.load_split("cifar100", split, data_dir)
    order = _record_indices("cifar100", split, data_dir)
    np.testing.assert_array_equal(loaded_images, images[order])
    np.testing.assert_array_equal(loaded_labels, fine[order])
    source = tfds.data_source("cifar100", split=split, data_dir=str(data_dir), download=False,
                              try_gcs=False)
    np.testing.assert_array_equal([source[i]["coarse_label"] for i in range(len(source))],
                                  coarse[order])
  features = tfds.builder("cifar100", data_dir=str(data_dir)).info.features
  assert features["label"].num_classes == 100
  assert features["coarse_label"].num_classes == 20
  assert features["coarse_label"].names[3] == "coarse3"


def test_existing_dataset_needs_overwrite(tmp_path, capsys):
  archive_path = tmp_path / "cifar-10-python.tar.gz"
  _write_fake_cifar10(archive_path, rng=np.random.default_rng(2), batch_sizes=(1,) * 5,
                      test_size=1)
  args = ["cifar10", "--archive", str(archive_path), "--data_dir", str(tmp_path / "tfds")]
  assert prepare_data.main(args) == 0
  capsys.readouterr()

  assert prepare_data.main(args) == 2
  assert "already exists" in capsys.readouterr().err

  new_expected = _write_fake_cifar10(archive_path, rng=np.random.default_rng(3),
                                     batch_sizes=(2,) * 5, test_size=2)
  assert prepare_data.main([*args, "--overwrite"]) == 0
  _, labels = tfds_source.load_split("cifar10", "train", tmp_path / "tfds")
  assert len(labels) == len(new_expected["train"][1]) == 10


def test_missing_archive_is_reported(tmp_path, capsys):
  status = prepare_data.main(["cifar10", "--archive", str(tmp_path / "nope.tar.gz"),
                              "--data_dir", str(tmp_path / "tfds")])
  assert status == 2
  err = capsys.readouterr().err
  assert "nope.tar.gz" in err and "cifar-10-python.tar.gz" in err
  assert not (tmp_path / "tfds" / "cifar10").exists()


def test_wrong_archive_is_reported(tmp_path, capsys):
  archive_path = tmp_path / "cifar-100-python.tar.gz"
  _write_fake_cifar100(archive_path, rng=np.random.default_rng(4))
  status = prepare_data.main(["cifar10", "--archive", str(archive_path),
                              "--data_dir", str(tmp_path / "tfds")])
  assert status == 2
  err = capsys.readouterr().err
  assert "data_batch_1" in err and "cifar-10-python.tar.gz" in err

  not_a_tar = tmp_path / "cifar-10-python.tar.gz"
  not_a_tar.write_bytes(b"<html>not an archive</html>")
  assert prepare_data.main(["cifar10", "--archive", str(not_a_tar),
                            "--data_dir", str(tmp_path / "tfds")]) == 2
  assert "not a readable tar archive" in capsys.readouterr().err


def test_pickles_with_foreign_objects_are_refused(tmp_path):
  archive_path = tmp_path / "cifar-10-python.tar.gz"
  with tarfile.open(archive_path, "w:gz") as archive:
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
      _add_pickle(archive, f"cifar-10-batches-py/{name}", {"data": os.getcwd}, protocol=2)
  with pytest.raises(ValueError, match="posix.getcwd|os.getcwd|unexpected object"):
    cifar.read_cifar_archive(archive_path, dataset_name="cifar10")


def test_label_out_of_range_is_refused(tmp_path):
  archive_path = tmp_path / "cifar-10-python.tar.gz"
  with tarfile.open(archive_path, "w:gz") as archive:
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
      _add_pickle(archive, f"cifar-10-batches-py/{name}",
                  {"data": np.zeros((1, 3072), np.uint8), "labels": [10]}, protocol=2)
    _add_pickle(archive, "cifar-10-batches-py/batches.meta", {"label_names": CIFAR10_NAMES},
                protocol=2)
  with pytest.raises(ValueError, match="outside the 10 classes"):
    cifar.read_cifar_archive(archive_path, dataset_name="cifar10")
