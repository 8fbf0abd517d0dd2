"""Test helpers: a fake prepared TFDS CIFAR directory read through `tfds.testing.mock_data`."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import tensorflow_datasets as tfds

from rfd_jax.data import tfds_source


def write_placeholder_prepared_dir(data_dir, name: str, *, file_format: str = "array_record"):
  """Creates the files `check_prepared` looks for (no real records: tfds is mocked when read)."""
  dataset_dir = tfds_source.prepared_dataset_dir(name, data_dir=data_dir)
  dataset_dir.mkdir(parents=True)
  (dataset_dir / "dataset_info.json").write_text(
      json.dumps({"name": name, "splits": [{"name": "train"}, {"name": "test"}]}))
  for split in ("train", "test"):
    (dataset_dir / f"{name}-{split}.{file_format}-00000-of-00001").touch()
  return dataset_dir


def fake_image(index: int) -> np.ndarray:
  return np.random.default_rng(index).integers(0, 256, (32, 32, 3), dtype=np.uint8)


class FakeExamples:
  """Data source returned by the mocked `as_data_source`: deterministic examples per index.

  Supplied through `mock_data(as_data_source_fn=...)` because the default mock of tfds 4.9.10 sets
  `__getitems__` without binding `self` (batched reads raise TypeError), and fixed values let the
  tests check contents, not only shapes. Label of example i: (7 i) mod num_classes.
  """

  def __init__(self, *, num_examples: int, num_classes: int):
    self._num_examples = num_examples
    self._num_classes = num_classes

  def __len__(self) -> int:
    return self._num_examples

  def __getitem__(self, index: int) -> dict[str, object]:
    if not 0 <= index < self._num_examples:
      raise IndexError(index)
    return {"id": f"train_{index:05d}".encode(),
            "image": fake_image(index),
            "label": (7 * index) % self._num_classes,
            "coarse_label": index % 20}

  def __getitems__(self, indices):
    return [self[index] for index in indices]


@contextlib.contextmanager
def mock_cifar(num_examples: int, seen_builders: list | None = None):
  """Within the context, `tfds.data_source` on cifar10/cifar100 yields FakeExamples."""

  def fake_as_data_source(builder, split, **kwargs):
    del kwargs
    if seen_builders is not None:
      seen_builders.append((builder.name, split))
    return FakeExamples(num_examples=num_examples,
                        num_classes=builder.info.features["label"].num_classes)

  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                              as_data_source_fn=fake_as_data_source):
    yield
