"""Write parsed examples as a registered TFDS dataset in array_record format, without TensorFlow.

The output is `DATA_DIR/<name>/<version>/` (version = the one of tfds's registered builder, e.g.
3.0.2 for cifar10) holding `dataset_info.json`, `features.json`, label-name files and
`<name>-<split>.array_record-*` shards, exactly what `tfds.data_source(name, data_dir=DATA_DIR,
download=False)` reads.

How: the registered tfds builder class (`tfds.builder_cls(name)`) is subclassed only to replace its
`_split_generators`, which normally downloads the source files, by one that returns the examples the
caller parsed. Everything else -- features, version, split names, the key-hash shuffling of the
records, the writing of shards and metadata -- is tfds's own code, so the result matches a regular
tfds preparation when the caller uses the builder's example keys. TensorFlow is only needed by tfds
to PNG-encode numpy images, so callers hand in PNG bytes from `encode_png` (Pillow) instead.

The dataset is written into a staging directory inside DATA_DIR and renamed into place at the end,
so a failure never leaves a partial dataset, and `overwrite` replaces the old one only once the new
one is complete.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

# (key, example): the key is what tfds hashes to order the records (the builder's own keys).
Example = tuple[Any, dict[str, Any]]


def encode_png(image: np.ndarray) -> bytes:
  """Losslessly PNG-encodes one uint8 image of shape (H, W), (H, W, 1) or (H, W, 3)."""
  image = np.asarray(image, dtype=np.uint8)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]  # Pillow writes single-channel images from 2-D arrays (mode "L").
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def prepared_dir(dataset_name: str, *, data_dir: epath.PathLike) -> epath.Path:
  """Returns `<data_dir>/<dataset_name>/<version of tfds's registered builder>`."""
  version = tfds.builder_cls(dataset_name).VERSION
  return epath.Path(data_dir).expanduser() / dataset_name / str(version)


def check_writable(dataset_name: str, *, data_dir: epath.PathLike, overwrite: bool) -> None:
  """Raises FileExistsError if the dataset is already prepared under data_dir and not overwrite."""
  target_dir = prepared_dir(dataset_name, data_dir=data_dir)
  if target_dir.exists() and not overwrite:
    raise FileExistsError(
        f"{target_dir} already exists. Pass --overwrite to replace it, or choose another "
        "--data_dir.")


def _builder_class_for(dataset_name: str, split_examples: Mapping[str, Iterable[Example]],
                       label_names: Mapping[str, Sequence[str]]) -> type:
  """Subclass of tfds's registered builder whose examples are `split_examples`, not a download."""
  registered_cls = tfds.builder_cls(dataset_name)

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    for feature, names in label_names.items():
      self.info.features[feature].names = list(names)
    return {split: iter(examples) for split, examples in split_examples.items()}

  return type(
      registered_cls.__name__,
      (registered_cls,),
      {
          "name": dataset_name,
          # dataset_info.json records the builder's module; keep the one of the real builder.
          "__module__": registered_cls.__module__,
          # tfds looks for URL checksum files next to the builder's code (through
          # importlib_resources, which may be absent); nothing is downloaded, so there are none.
          "code_path": None,
          "_split_generators": _split_generators,
          # tfds prints "Downloading and preparing dataset ..." and "... downloaded and prepared"
          # around download_and_prepare; nothing is downloaded here (prepare_data says what it
          # converts), so those two lines are left out.
          "_log_download_bytes": lambda self: None,
          "_log_download_done": lambda self: None,
      },
      skip_registration=True,
  )


def write_tfds_dataset(split_examples: Mapping[str, Iterable[Example]], *, dataset_name: str,
                       data_dir: epath.PathLike,
                       label_names: Mapping[str, Sequence[str]] | None = None,
                       overwrite: bool = False) -> epath.Path:
  """Writes the examples as the TFDS dataset `dataset_name` in array_record format under data_dir.

  Args:
    split_examples: split name -> (key, example) pairs; an example maps every feature of the
      registered builder to its value (images as PNG bytes from `encode_png`).
    dataset_name: a dataset registered in tfds, e.g. "cifar10" or "fashion_mnist".
    data_dir: the TFDS data directory (created if needed).
    label_names: ClassLabel feature -> class names, for builders that read them from the source.
    overwrite: replace a dataset of the same version already prepared there.

  Returns:
    The dataset directory `<data_dir>/<dataset_name>/<version>`.

  Raises:
    FileExistsError: the dataset directory already exists and `overwrite` is False.
  """
  check_writable(dataset_name, data_dir=data_dir, overwrite=overwrite)
  data_dir = epath.Path(data_dir).expanduser()
  target_dir = prepared_dir(dataset_name, data_dir=data_dir)
  created_data_dir = not data_dir.exists()
  data_dir.mkdir(parents=True, exist_ok=True)
  # The staging dir is inside data_dir so that the final rename stays on one file system.
  staging = epath.Path(tempfile.mkdtemp(prefix=f".{dataset_name}-incomplete-", dir=data_dir))
  try:
    builder = _builder_class_for(dataset_name, split_examples, label_names or {})(
        data_dir=os.fspath(staging), file_format="array_record")
    download_config = tfds.download.DownloadConfig(try_download_gcs=False)
    with tempfile.TemporaryDirectory(prefix="rfd_jax_prepare_data_") as unused_download_dir:
      builder.download_and_prepare(download_dir=unused_download_dir,
                                   download_config=download_config)
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    previous = staging / "previous"
    if target_dir.exists():
      target_dir.rename(previous)
    try:
      prepared_dir(dataset_name, data_dir=staging).rename(target_dir)
    except BaseException:
      if previous.exists():
        previous.rename(target_dir)
      raise
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    if created_data_dir and not any(data_dir.iterdir()):
      data_dir.rmdir()
    raise
  shutil.rmtree(staging, ignore_errors=True)  # the replaced dataset, if any
  logging.info("Wrote %s", target_dir)
  return target_dir
