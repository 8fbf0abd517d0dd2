"""Parse an official CIFAR-10/100 python archive and write it as TFDS's cifar10 / cifar100.

The archives are the "CIFAR-10/100 python version" files from
https://www.cs.toronto.edu/~kriz/cifar.html, downloaded by the user; nothing is downloaded here.
The examples get the keys and ids of tfds's own Cifar10 builder (key = row index, id =
"<split>_<index>"), so the records come out in the order of a regular tfds preparation.

Archive layout (python pickles, each a dict):
  cifar-10-batches-py/{data_batch_1..5, test_batch}: data (N, 3072) uint8, labels list[int];
  cifar-10-batches-py/batches.meta: label_names;
  cifar-100-python/{train, test}: data, fine_labels, coarse_labels;
  cifar-100-python/meta: fine_label_names, coarse_label_names.
Each 3072-byte row is 3 planes of 32x32 (red, then green, then blue), row-major.
"""

from __future__ import annotations

import dataclasses
import pickle
import tarfile
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from etils import epath

from rfd_jax.data.prepare import tfds_writer

IMAGE_SIZE = 32
NUM_CHANNELS = 3
ROW_LENGTH = NUM_CHANNELS * IMAGE_SIZE * IMAGE_SIZE
CIFAR_DOWNLOAD_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"


@dataclasses.dataclass(frozen=True)
class ArchiveLayout:
  """Where a CIFAR python archive keeps each split and which pickle keys map to which feature.

  Attributes:
    archive_name: file name of the official archive.
    split_members: split name -> archive member base names, in the order their rows are numbered.
    label_keys: tfds feature name -> key of the label list in the split pickles.
    meta_member: archive member base name of the label-name pickle.
    label_name_keys: tfds feature name -> key of the label-name list in the meta pickle.
  """

  archive_name: str
  split_members: Mapping[str, tuple[str, ...]]
  label_keys: Mapping[str, str]
  meta_member: str
  label_name_keys: Mapping[str, str]


ARCHIVE_LAYOUTS: Mapping[str, ArchiveLayout] = {
    "cifar10": ArchiveLayout(
        archive_name="cifar-10-python.tar.gz",
        split_members={
            "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
            "test": ("test_batch",),
        },
        label_keys={"label": "labels"},
        meta_member="batches.meta",
        label_name_keys={"label": "label_names"},
    ),
    "cifar100": ArchiveLayout(
        archive_name="cifar-100-python.tar.gz",
        split_members={"train": ("train",), "test": ("test",)},
        label_keys={"label": "fine_labels", "coarse_label": "coarse_labels"},
        meta_member="meta",
        label_name_keys={"label": "fine_label_names", "coarse_label": "coarse_label_names"},
    ),
}

# The official pickles hold only builtins and numpy arrays; refusing every other global keeps a
# wrong or tampered file from running code at unpickling time.
_ALLOWED_PICKLE_GLOBALS = frozenset({
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # Pickle protocol 5 (not used by the official files).
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
})


@dataclasses.dataclass(frozen=True)
class CifarSplit:
  """One split parsed from the archive.

  Attributes:
    images: uint8 array of shape (N, 32, 32, 3), HWC, RGB.
    labels: tfds feature name ("label", and "coarse_label" for cifar100) -> int64 array (N,).
  """

  images: np.ndarray
  labels: Mapping[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class CifarArchive:
  """Everything the converter needs from an archive.

  Attributes:
    splits: split name ("train", "test") -> its examples.
    label_names: tfds feature name -> class names indexed by label id.
  """

  splits: Mapping[str, CifarSplit]
  label_names: Mapping[str, list[str]]


class _CifarUnpickler(pickle.Unpickler):
  """Unpickler that only reconstructs the numpy arrays the official CIFAR pickles contain."""

  def find_class(self, module: str, name: str):
    if (module, name) not in _ALLOWED_PICKLE_GLOBALS:
      raise pickle.UnpicklingError(
          f"unexpected object {module}.{name} in the pickle; official CIFAR pickles hold only "
          "lists, strings and numpy arrays")
    if module.startswith("numpy.core.") and int(np.__version__.split(".")[0]) >= 2:
      module = "numpy._core." + module[len("numpy.core."):]  # Avoids the numpy.core shim's warning.
    return super().find_class(module, name)


def rows_to_hwc_images(rows: np.ndarray) -> np.ndarray:
  """Turns CIFAR pickle rows (N, 3072) -- R, G, B planes of 32x32 -- into (N, 32, 32, 3) uint8."""
  rows = np.asarray(rows, dtype=np.uint8)
  return rows.reshape(-1, NUM_CHANNELS, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)


def _unpickle_member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> dict[str, object]:
  """Loads one pickled dict from the archive, with str keys (the official files use bytes keys)."""
  file = archive.extractfile(member)
  if file is None:
    raise ValueError(f"archive member {member.name!r} is not a regular file")
  with file:
    try:
      # encoding="bytes" is how the Python-2 pickles of the official archives must be read.
      content = _CifarUnpickler(file, encoding="bytes").load()
    except Exception as error:
      raise ValueError(
          f"archive member {member.name!r} is not a readable CIFAR pickle: {error}") from error
  if not isinstance(content, dict):
    raise ValueError(f"archive member {member.name!r} holds a {type(content).__name__}, not a dict")
  return {key.decode("latin1") if isinstance(key, bytes) else key: value
          for key, value in content.items()}


def _require_key(content: Mapping[str, object], key: str, *, member_name: str) -> object:
  if key not in content:
    raise ValueError(
        f"archive member {member_name!r} has no {key!r} entry (keys: {sorted(content)}); is this "
        "the right archive for this dataset?")
  return content[key]


def _parse_split(archive: tarfile.TarFile, members: Sequence[tarfile.TarInfo], *,
                 label_keys: Mapping[str, str]) -> CifarSplit:
  """Concatenates the images and labels of the given split members, in member order."""
  images, labels = [], {feature: [] for feature in label_keys}
  for member in members:
    content = _unpickle_member(archive, member)
    rows = np.asarray(_require_key(content, "data", member_name=member.name))
    if rows.ndim != 2 or rows.shape[1] != ROW_LENGTH:
      raise ValueError(
          f"archive member {member.name!r}: 'data' has shape {rows.shape}, expected "
          f"(num_images, {ROW_LENGTH})")
    for feature, key in label_keys.items():
      member_labels = np.asarray(_require_key(content, key, member_name=member.name),
                                 dtype=np.int64)
      if member_labels.shape != (rows.shape[0],):
        raise ValueError(
            f"archive member {member.name!r}: {key!r} has {member_labels.size} labels for "
            f"{rows.shape[0]} images")
      labels[feature].append(member_labels)
    images.append(rows_to_hwc_images(rows))
  return CifarSplit(
      images=np.concatenate(images),
      labels={feature: np.concatenate(parts) for feature, parts in labels.items()})


def read_cifar_archive(archive_path: epath.PathLike, *, dataset_name: str) -> CifarArchive:
  """Parses an official CIFAR python archive (.tar.gz) into arrays and label names.

  Image and label counts come from the files themselves, so truncated archives work too.

  Args:
    archive_path: path of cifar-10-python.tar.gz or cifar-100-python.tar.gz.
    dataset_name: "cifar10" or "cifar100".

  Returns:
    The parsed splits (images (N, 32, 32, 3) uint8 HWC, labels (N,) int64) and label names.

  Raises:
    FileNotFoundError: the archive does not exist.
    ValueError: unknown dataset, not a tar archive, members or pickle entries missing or malformed,
      labels out of range.
  """
  layout = _layout(dataset_name)
  archive_path = epath.Path(archive_path).expanduser()
  if not archive_path.is_file():
    raise FileNotFoundError(
        f"CIFAR archive not found: {archive_path}. Download {layout.archive_name} (the python "
        f"version) from {CIFAR_DOWNLOAD_PAGE} and pass its path with --archive.")
  try:
    archive = tarfile.open(archive_path, mode="r:*")
  except tarfile.TarError as error:
    raise ValueError(
        f"{archive_path} is not a readable tar archive ({error}); expected {layout.archive_name} "
        f"(python version) from {CIFAR_DOWNLOAD_PAGE}") from error
  with archive:
    members_by_basename: dict[str, list[tarfile.TarInfo]] = {}
    for member in archive.getmembers():
      if member.isfile():
        members_by_basename.setdefault(member.name.rsplit("/", 1)[-1], []).append(member)
    wanted = [name for names in layout.split_members.values() for name in names]
    wanted.append(layout.meta_member)
    missing = [name for name in wanted if name not in members_by_basename]
    if missing:
      raise ValueError(
          f"{archive_path} does not look like {layout.archive_name}: missing members {missing} "
          f"(found: {sorted(members_by_basename)[:12]}). For {dataset_name}, use the python "
          f"version of the archive from {CIFAR_DOWNLOAD_PAGE}.")
    duplicated = [name for name in wanted if len(members_by_basename[name]) > 1]
    if duplicated:
      raise ValueError(f"{archive_path} holds several members named {duplicated}")

    meta = _unpickle_member(archive, members_by_basename[layout.meta_member][0])
    label_names = {}
    for feature, key in layout.label_name_keys.items():
      names = _require_key(meta, key, member_name=layout.meta_member)
      label_names[feature] = [
          name.decode("utf-8") if isinstance(name, bytes) else str(name) for name in names]

    splits = {
        split: _parse_split(archive, [members_by_basename[name][0] for name in member_names],
                            label_keys=layout.label_keys)
        for split, member_names in layout.split_members.items()
    }
  for split, split_data in splits.items():
    for feature, labels in split_data.labels.items():
      num_classes = len(label_names[feature])
      if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{split} {feature} values span [{labels.min()}, {labels.max()}], outside the "
            f"{num_classes} classes named in {layout.meta_member}")
  return CifarArchive(splits=splits, label_names=label_names)


def _iter_examples(split: CifarSplit, *,
                   id_prefix: str) -> Iterator[tuple[int, dict[str, object]]]:
  """Yields (key, example) as tfds's Cifar10._generate_examples: key = row index, id = prefix+index.

  Using the same keys as tfds makes the writer's key-hash shuffle give the same record order.
  """
  for index, image in enumerate(split.images):
    example = {"id": f"{id_prefix}{index:05d}", "image": tfds_writer.encode_png(image)}
    example.update({feature: int(labels[index]) for feature, labels in split.labels.items()})
    yield index, example


def write(archive: CifarArchive, *, dataset_name: str, data_dir: epath.PathLike,
          overwrite: bool = False) -> epath.Path:
  """Writes a parsed archive as TFDS's `dataset_name` (array_record) under data_dir; returns its dir.

  Raises:
    FileExistsError: already prepared there and `overwrite` is False.
  """
  _layout(dataset_name)
  split_examples = {split: _iter_examples(split_data, id_prefix=f"{split}_")
                    for split, split_data in archive.splits.items()}
  return tfds_writer.write_tfds_dataset(split_examples, dataset_name=dataset_name,
                                        data_dir=data_dir, label_names=archive.label_names,
                                        overwrite=overwrite)


def _layout(dataset_name: str) -> ArchiveLayout:
  if dataset_name not in ARCHIVE_LAYOUTS:
    raise ValueError(f"unsupported dataset {dataset_name!r}; expected one of "
                     f"{sorted(ARCHIVE_LAYOUTS)}")
  return ARCHIVE_LAYOUTS[dataset_name]
