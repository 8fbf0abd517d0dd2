"""Test helpers: tiny gzip'd Fashion-MNIST idx files, written from the format's definition, and a
guard that turns any network access (a tfds download attempt hangs here) into a failure."""

from __future__ import annotations

import contextlib
import gzip
import socket
import struct

import numpy as np
import pytest

from rfd_jax.data.prepare import fashion_mnist


def idx_bytes(data: np.ndarray) -> bytes:
  """uint8 array -> idx: 0, 0, 0x08 (unsigned byte), ndim, one big-endian uint32 per dim, data."""
  header = bytes([0, 0, 0x08, data.ndim]) + struct.pack(f">{data.ndim}I", *data.shape)
  return header + np.ascontiguousarray(data, dtype=np.uint8).tobytes()


def write_gzip(path, payload: bytes) -> None:
  with gzip.open(path, "wb") as file:
    file.write(payload)


def write_fake_fashion_mnist(directory, *, rng: np.random.Generator,
                             sizes=(("train", 12), ("test", 5))) -> dict[str, tuple]:
  """Writes the four files with random 28x28 images; returns split -> (images, labels) in file order.

  Train labels cycle through the 10 classes (every class present, file order known).
  """
  directory.mkdir(parents=True, exist_ok=True)
  expected = {}
  for split, size in sizes:
    images = rng.integers(0, 256, (size, 28, 28), dtype=np.uint8)
    labels = (np.arange(size) % 10).astype(np.uint8) if split == "train" else (
        rng.integers(0, 10, size).astype(np.uint8))
    images_name, labels_name = fashion_mnist.SPLIT_FILES[split]
    write_gzip(directory / images_name, idx_bytes(images))
    write_gzip(directory / labels_name, idx_bytes(labels))
    expected[split] = (images, labels.astype(np.int64))
  return expected


@contextlib.contextmanager
def no_network():
  """Makes any connection attempt raise instead of hanging."""

  def refuse(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args}")

  with pytest.MonkeyPatch.context() as patch:
    for owner, name in ((socket.socket, "connect"), (socket, "create_connection"),
                        (socket, "getaddrinfo")):
      patch.setattr(owner, name, refuse)
    yield
