"""Read a prepared TFDS split (CIFAR-10/100, Fashion-MNIST) into numpy arrays, without TensorFlow.

The data must have been prepared in TFDS's array_record format, under
`<data_dir>/<name>/<version>/` (e.g. `~/tensorflow_datasets/cifar10/3.0.2/`), either by
`python -m rfd_jax.prepare_data` or by tfds with `file_format="array_record"`. Reading goes through
`tfds.data_source` (random-access array_record reading, which needs no TensorFlow); it never
downloads: the prepared files are checked first and a missing dataset fails at once with the
command that creates it.
"""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

SUPPORTED_DATASETS = ("cifar10", "cifar100", "fashion_mnist")
IMAGE_SHAPES = {"cifar10": (32, 32, 3), "cifar100": (32, 32, 3), "fashion_mnist": (28, 28, 1)}
CIFAR_DOWNLOAD_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
ARCHIVE_NAMES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"  # Debian; installs the four idx files
DATASET_INFO_FILENAME = "dataset_info.json"

# Records fetched per `__getitems__` call: large enough to amortise the per-call overhead, small
# enough that the encoded and decoded batch stay a few tens of MB.
_READ_BATCH_SIZE = 4096


class PreparedDataNotFoundError(FileNotFoundError):
  """The TFDS array_record files of a dataset split are not where they were looked for."""


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> epath.Path:
  """Returns `data_dir`, or TFDS's default ($TFDS_DATA_DIR, else ~/tensorflow_datasets) if None."""
  if data_dir is None:
    data_dir = tfds.core.constants.get_default_data_dir()
  return epath.Path(data_dir).expanduser()


def prepared_dataset_dir(name: str, *, data_dir: str | os.PathLike[str] | None) -> epath.Path:
  """Returns `<data_dir>/<name>/<version>`, the version being that of tfds's registered builder."""
  version = tfds.builder_cls(name).VERSION
  return resolve_data_dir(data_dir) / name / str(version)


def base_split_names(split: str) -> list[str]:
  """Returns the split names a TFDS split expression reads: "train[:10%]+test" -> [train, test]."""
  return [part.split("[", 1)[0].strip() for part in split.split("+")]


def check_prepared(name: str, split: str, *, data_dir: str | os.PathLike[str] | None) -> epath.Path:
  """Checks that `split` of `name` is prepared as array_record under `data_dir`; returns its dir.

  Only the file system is inspected (no tfds builder instance, no network), so a missing dataset is
  reported at once instead of tfds attempting a download or failing with an unrelated message.

  Raises:
    ValueError: `name` is not supported, or `split` is not one of the prepared splits.
    PreparedDataNotFoundError: dataset_info.json or the split's array_record shards are missing
      (the message says where it looked and how to create them, and notes tfrecord-only data).
  """
  if name not in SUPPORTED_DATASETS:
    raise ValueError(f"unsupported dataset {name!r}; expected one of {SUPPORTED_DATASETS}")
  root = resolve_data_dir(data_dir)
  dataset_dir = prepared_dataset_dir(name, data_dir=root)
  splits = base_split_names(split)

  missing = []
  if not (dataset_dir / DATASET_INFO_FILENAME).is_file():
    missing.append(str(dataset_dir / DATASET_INFO_FILENAME))
  else:
    info = json.loads((dataset_dir / DATASET_INFO_FILENAME).read_text())
    prepared_splits = [split_info["name"] for split_info in info.get("splits", [])]
    unknown = [s for s in splits if s not in prepared_splits]
    if unknown:
      raise ValueError(f"{name} has no split {unknown} in {dataset_dir}; prepared splits: "
                       f"{prepared_splits}")
  tfrecord_only = []
  for split_name in splits:
    if not list(dataset_dir.glob(f"{name}-{split_name}.array_record-*")):
      missing.append(str(dataset_dir / f"{name}-{split_name}.array_record-*"))
      if list(dataset_dir.glob(f"{name}-{split_name}.tfrecord-*")):
        tfrecord_only.append(split_name)
  if not missing:
    return dataset_dir

  lines = [
      f"Prepared TFDS data for {name!r} (split {split!r}) not found. Looked in data_dir={root} "
      f"for: {', '.join(missing)}."]
  if tfrecord_only:
    lines.append(
        f"Split(s) {tfrecord_only} exist there only in tfrecord format (prepared by TensorFlow's "
        "tfds); this project reads them without TensorFlow and needs the array_record format: "
        "convert into another data_dir, or add --overwrite to the command below.")
  other_versions = sorted(p.name for p in dataset_dir.parent.glob("*") if p != dataset_dir
                          and p.is_dir()) if dataset_dir.parent.is_dir() else []
  if other_versions:
    lines.append(f"Other versions found next to it: {other_versions} (this tfds expects "
                 f"{dataset_dir.name}).")
  lines.append(_how_to_prepare(name, root))
  raise PreparedDataNotFoundError("\n".join(lines))


def _how_to_prepare(name: str, root: epath.Path) -> str:
  if name == "fashion_mnist":
    return (f"Fix: `apt-get install {FASHION_MNIST_PACKAGE}` (or put the four idx files in a "
            "directory and add --source DIR), then run\n"
            f"  python -m rfd_jax.prepare_data fashion_mnist --data_dir {root}\n"
            f"and pass --config.data.data_dir={root}.")
  return (f"Fix: download {ARCHIVE_NAMES[name]} (python version) from {CIFAR_DOWNLOAD_PAGE}, then "
          f"run\n  python -m rfd_jax.prepare_data {name} --archive /path/to/{ARCHIVE_NAMES[name]} "
          f"--data_dir {root}\n"
          f"and pass --config.data.data_dir={root}.")


def load_split(name: str, split: str,
               data_dir: str | os.PathLike[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Reads a whole prepared split into memory.

  Args:
    name: "cifar10", "cifar100" or "fashion_mnist".
    split: a TFDS split, e.g. "train", "test" or "train[:10%]".
    data_dir: TFDS data directory; None means TFDS's default ($TFDS_DATA_DIR, else
      ~/tensorflow_datasets).

  Returns:
    images: uint8 array (N, H, W, C) in the prepared record order: (N, 32, 32, 3) RGB for CIFAR,
      (N, 28, 28, 1) grey for fashion_mnist.
    labels: int64 array (N,); for cifar100 the fine `label` feature (0..99).

  Raises:
    PreparedDataNotFoundError: the split is not prepared in array_record format under data_dir.
    ValueError: unsupported dataset or unknown split.
  """
  dataset_dir = check_prepared(name, split, data_dir=data_dir)
  root = resolve_data_dir(data_dir)
  source = tfds.data_source(name, split=split, data_dir=os.fspath(root), download=False,
                            try_gcs=False)
  num_examples = len(source)
  logging.info("Reading %d %s/%s examples from %s", num_examples, name, split, dataset_dir)
  images, labels = None, np.empty((num_examples,), dtype=np.int64)
  for start in range(0, num_examples, _READ_BATCH_SIZE):
    indices = list(range(start, min(start + _READ_BATCH_SIZE, num_examples)))
    for offset, example in enumerate(source.__getitems__(indices)):
      image = np.asarray(example["image"], dtype=np.uint8)
      if images is None:
        images = np.empty((num_examples, *image.shape), dtype=np.uint8)
      images[start + offset] = image
      labels[start + offset] = example["label"]
  if images is None:
    images = np.empty((0, *IMAGE_SHAPES[name]), dtype=np.uint8)
  return images, labels
