"""Parse the four Fashion-MNIST idx files and write them as TFDS's fashion_mnist dataset.

The files are Zalando's originals (https://github.com/zalandoresearch/fashion-mnist), as Debian's
`dataset-fashion-mnist` package installs them in /usr/share/datasets/fashion-mnist/:
  train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz   60,000 examples
  t10k-images-idx3-ubyte.gz,  t10k-labels-idx1-ubyte.gz    10,000 examples ("test" split)
Nothing is downloaded here. The examples get the keys of tfds's own MNIST builder (key = index in
the file), so the records come out in the order of a regular tfds preparation; the features
(image (28, 28, 1) uint8, label with the 10 class names) are those of tfds's FashionMNIST builder.

idx format (big-endian): 2 zero bytes, a type byte (0x08: unsigned bytes), the number of
dimensions, then one uint32 per dimension, then the data row-major. Images: magic 0x00000803 and
dimensions (N, 28, 28); labels: magic 0x00000801 and (N,).
"""

from __future__ import annotations

import dataclasses
import gzip
import struct
import zlib
from collections.abc import Iterator, Mapping

import numpy as np
from etils import epath

from rfd_jax.data.prepare import tfds_writer

DATASET_NAME = "fashion_mnist"
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEFAULT_SOURCE = "/usr/share/datasets/fashion-mnist"
# split -> (images file, labels file); tfds names the t10k files' split "test".
SPLIT_FILES: Mapping[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FILE_NAMES = tuple(name for files in SPLIT_FILES.values() for name in files)
OFFICIAL_COUNTS = {"train": 60_000, "test": 10_000}
IMAGE_SIZE = 28
NUM_CLASSES = 10
_UNSIGNED_BYTE = 0x08


class IdxFormatError(ValueError):
  """An idx file that is not gzip, has the wrong magic, or holds a different count than announced."""


@dataclasses.dataclass(frozen=True)
class FashionSplit:
  """One split, in file order.

  Attributes:
    images: uint8 (N, 28, 28), white clothing on black.
    labels: int64 (N,), class ids 0..9.
  """

  images: np.ndarray
  labels: np.ndarray


def missing_files_message(source: epath.PathLike, missing: list[str]) -> str:
  """The one-line explanation of where the files come from, for files missing from source."""
  four = "these four files" if len(missing) == len(FILE_NAMES) else (
      f"the four files {', '.join(FILE_NAMES)}")
  return (f"Fashion-MNIST files missing from {source}: {', '.join(missing)}. Install them with "
          f"`apt-get install {DEBIAN_PACKAGE}` (into {DEFAULT_SOURCE}), or put {four} (from "
          "https://github.com/zalandoresearch/fashion-mnist) in a directory and pass it with "
          "--source.")


def _read_gzip(path: epath.Path) -> bytes:
  try:
    with gzip.open(path, "rb") as file:
      return file.read()
  except (OSError, EOFError, zlib.error) as error:  # BadGzipFile is an OSError
    raise IdxFormatError(f"{path} is not a readable gzip file ({error}); the file is "
                         "truncated or corrupted: reinstall or re-download it.") from error


def read_idx(path: epath.PathLike, *, shape_after_count: tuple[int, ...]) -> np.ndarray:
  """Reads a gzip'd idx file of unsigned bytes into a uint8 array (N, *shape_after_count).

  Raises:
    IdxFormatError: not gzip, wrong magic, dimensions other than (N, *shape_after_count), or a
      payload that is not exactly the announced N rows (truncated file).
  """
  path = epath.Path(path)
  content = _read_gzip(path)
  ndim = 1 + len(shape_after_count)
  expected_magic = (_UNSIGNED_BYTE << 8) | ndim
  header_size = 4 + 4 * ndim
  magic = struct.unpack(">I", content[:4])[0] if len(content) >= 4 else None
  if magic is not None and magic != expected_magic:
    raise IdxFormatError(f"{path} has idx magic 0x{magic:08x}, expected 0x{expected_magic:08x} "
                         f"(unsigned bytes, {ndim} dimension(s)): not the right idx file.")
  if len(content) < header_size:
    raise IdxFormatError(f"{path} holds {len(content)} bytes, fewer than an idx header "
                         f"({header_size} bytes): the file is truncated.")
  dims = struct.unpack(f">{ndim}I", content[4:header_size])
  count, shape = dims[0], tuple(dims[1:])
  if shape != shape_after_count:
    raise IdxFormatError(f"{path} holds items of shape {shape}, expected {shape_after_count}.")
  row_size = int(np.prod(shape_after_count, dtype=np.int64))
  payload = len(content) - header_size
  if payload != count * row_size:
    raise IdxFormatError(f"{path} announces {count} items ({count * row_size} bytes) but holds "
                         f"{payload} bytes of data: the file is truncated or corrupted.")
  data = np.frombuffer(content, dtype=np.uint8, offset=header_size)
  return data.reshape(count, *shape_after_count)


def read_split(source: epath.PathLike, split: str) -> FashionSplit:
  """Reads one split's image and label files from the directory `source`.

  Raises:
    IdxFormatError: a malformed file, image/label count mismatch or a label outside 0..9.
  """
  images_name, labels_name = SPLIT_FILES[split]
  source = epath.Path(source)
  images = read_idx(source / images_name, shape_after_count=(IMAGE_SIZE, IMAGE_SIZE))
  labels = read_idx(source / labels_name, shape_after_count=()).astype(np.int64)
  if len(images) != len(labels):
    raise IdxFormatError(f"{source / images_name} holds {len(images)} images but "
                         f"{source / labels_name} {len(labels)} labels: a file is truncated or "
                         "from another dataset.")
  if labels.size and labels.max() >= NUM_CLASSES:
    raise IdxFormatError(f"{source / labels_name} has label {labels.max()}, outside the "
                         f"{NUM_CLASSES} Fashion-MNIST classes.")
  return FashionSplit(images=images, labels=labels)


def read_fashion_mnist(source: epath.PathLike = DEFAULT_SOURCE) -> dict[str, FashionSplit]:
  """Reads and checks all four files (nothing is written); returns split -> its examples.

  Counts come from the files, so smaller files in the same format work too.

  Raises:
    FileNotFoundError: any of the four files is missing (the message says how to get them).
    IdxFormatError: a file is malformed (see `read_split`).
  """
  source = epath.Path(source).expanduser()
  missing = [name for name in FILE_NAMES if not (source / name).is_file()]
  if missing:
    raise FileNotFoundError(missing_files_message(source, missing))
  return {split: read_split(source, split) for split in SPLIT_FILES}


def _iter_examples(split: FashionSplit) -> Iterator[tfds_writer.Example]:
  """Yields (index in file, example), the keys of tfds's MNIST._generate_examples."""
  for index, (image, label) in enumerate(zip(split.images, split.labels)):
    yield index, {"image": tfds_writer.encode_png(image), "label": int(label)}


def write(splits: Mapping[str, FashionSplit], *, data_dir: epath.PathLike,
          overwrite: bool = False) -> epath.Path:
  """Writes the parsed splits as TFDS's fashion_mnist (array_record) under data_dir.

  Returns:
    The dataset directory `<data_dir>/fashion_mnist/<version>`.

  Raises:
    FileExistsError: already prepared there and `overwrite` is False.
  """
  split_examples = {split: _iter_examples(split_data) for split, split_data in splits.items()}
  return tfds_writer.write_tfds_dataset(split_examples, dataset_name=DATASET_NAME,
                                        data_dir=data_dir, overwrite=overwrite)
