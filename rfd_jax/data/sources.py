"""load_dataset: a dataset by name from its source (scikit-learn digits, prepared TFDS data, image
folders), in host memory."""

from __future__ import annotations

import dataclasses

import numpy as np

from rfd_jax.data import datasets


def load_dataset(data_config) -> datasets.Dataset:
  """Loads `data_config.dataset` into host memory (the ImageNet-sized sets lazily).

  Raises:
    ValueError: unknown dataset, or train_per_class for a folder dataset.
    FileNotFoundError: prepared TFDS data or image files missing; the message says what to put
      where.
  """
  info = datasets.dataset_info(data_config.dataset)
  per_class = data_config.get("train_per_class", 0)
  # tfds and PIL are heavy: imported when used.
  # pylint: disable=g-import-not-at-top
  if data_config.dataset == "digits":
    from rfd_jax.data import sklearn_digits
    data = sklearn_digits.load_digits(data_config.image_size)
    return datasets.keep_first_per_class(data, per_class) if per_class else data
  from rfd_jax.data import image_folders
  if data_config.dataset in image_folders.FOLDER_DATASETS:
    if per_class:
      raise ValueError(f"config.data.train_per_class={per_class} is not supported for the folder "
                       f"dataset {data_config.dataset}; use 0.")
    return image_folders.load(data_config)
  from rfd_jax.data import tfds_source
  data_dir = data_config.data_dir or None
  tr_x, tr_y = tfds_source.load_split(data_config.dataset, "train", data_dir)
  te_x, te_y = tfds_source.load_split(data_config.dataset, "test", data_dir)
  data = datasets.Dataset(data_config.dataset, tr_x, tr_y, te_x, te_y,
                 np.asarray(info.mean, np.float32), np.asarray(info.std, np.float32))
  if per_class:
    data = datasets.keep_first_per_class(data, per_class)
  if tr_x.shape[-1] == 1:  # fashion_mnist: grey, handled like digits (after subsetting: cheaper)
    data = dataclasses.replace(
        data, train_images=datasets.grey_to_rgb(data.train_images[..., 0], data_config.image_size),
        test_images=datasets.grey_to_rgb(data.test_images[..., 0], data_config.image_size))
  return data
