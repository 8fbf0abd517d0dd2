"""Decoding image files as RFD's `cl_lite` does, eagerly on a thread pool or lazily (`LazyImages`).

Each image is `PIL.Image.open(path).convert("RGB")`, then torchvision's `Resize(r)` (bilinear,
shorter side to r, longer side `int(r * long / short)`) and `CenterCrop(s)` (offsets
`int(round((h - s) / 2))`), giving uint8 (s, s, 3) (spec §1.2; `resize_size_for` gives r).

`decode_all` decodes a whole split into memory (Tiny-ImageNet). The ImageNet-sized sets cannot be
held in memory (ImageNet-100 is 19 GB at 224 px), so their images are `LazyImages`: an array-like
that decodes the rows it is indexed with on a thread pool (Pillow releases the GIL while decoding
and resizing) and keeps recently decoded rows in an LRU cache of `config.data.cache_gb` GB per
split, which holds a whole ImageNet-100 task (about 13k images, 2 GB). JAX dispatches train steps
asynchronously, so decoding the next batch overlaps the device work on the current one;
`prefetch_rows` schedules decodes further ahead.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence

from absl import logging
import numpy as np

DEFAULT_CACHE_GB = 4.0


def resize_size_for(dataset: str, image_size: int) -> int:
  """torchvision Resize target (shorter side) for a center crop of `image_size`."""
  if dataset == "tiny_imagenet":
    return image_size
  return int(round(image_size * 256 / 224))  # Resize(256) + CenterCrop(224), scaled


def load_image(path: str, *, resize: int, crop: int) -> np.ndarray:
  """Decodes one image as torchvision's Resize(resize) + CenterCrop(crop) on a PIL RGB image.

  Returns uint8 (crop, crop, 3).
  Raises FileNotFoundError (naming the path) for a missing file.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as img:
    img = img.convert("RGB")
  width, height = img.size
  short, long = (width, height) if width <= height else (height, width)
  if short != resize:
    new_short, new_long = resize, int(resize * long / short)
    size = (new_short, new_long) if width <= height else (new_long, new_short)
    img = img.resize(size, Image.BILINEAR)
    width, height = img.size
  if crop > min(width, height):
    raise ValueError(f"{path}: crop {crop} is larger than the resized image {width}×{height}")
  top, left = int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))
  img = img.crop((left, top, left + crop, top + crop))
  return np.asarray(img, dtype=np.uint8)


def resolve_num_threads(num_threads: int) -> int:
  """`num_threads`, or for 0 one thread per core (at most 32)."""
  return num_threads if num_threads > 0 else min(32, os.cpu_count() or 1)


def decode_all(paths: Sequence[str], *, resize: int, crop: int, num_threads: int = 0,
               what: str = "images") -> np.ndarray:
  """Decodes every path on a thread pool into one uint8 (N, crop, crop, 3) array, in order."""
  out = np.empty((len(paths), crop, crop, 3), np.uint8)

  def decode_into(i):
    out[i] = load_image(paths[i], resize=resize, crop=crop)  # no decoded copy waits in a future

  with concurrent.futures.ThreadPoolExecutor(resolve_num_threads(num_threads)) as pool:
    for done, _ in enumerate(pool.map(decode_into, range(len(paths))), start=1):
      if done % 20000 == 0:
        logging.info("decoded %d/%d %s", done, len(paths), what)
  return out


class LazyImages:
  """uint8 (N, S, S, 3) images decoded from files when indexed; an ndarray stand-in.

  Supports what the training loop uses: `len`, `.shape`, `.dtype`, `.ndim`, and `x[key]` for an int
  (→ (S, S, 3)), a slice, an int index array of any shape (→ key.shape + (S, S, 3)) or a boolean
  mask (N,). Rows are decoded on a thread pool; the same index always gives the same pixels.
  `np.asarray(x)` decodes everything.
  """

  def __init__(self, paths: Sequence[str], *, resize: int, crop: int, num_threads: int = 0,
               cache_bytes: int = int(DEFAULT_CACHE_GB * 2**30), name: str = "images"):
    self._paths = list(paths)
    self._resize, self._crop, self._name = resize, crop, name
    self.shape = (len(self._paths), crop, crop, 3)
    self.dtype = np.dtype(np.uint8)
    self.ndim = 4
    self._capacity = max(int(cache_bytes) // (crop * crop * 3), 0)
    self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
    self._pending: dict[int, concurrent.futures.Future] = {}
    self._lock = threading.RLock()  # a done-callback may run inside _submit
    self._pool = concurrent.futures.ThreadPoolExecutor(resolve_num_threads(num_threads),
                                                       thread_name_prefix=f"decode-{name}")

  def __len__(self) -> int:
    return self.shape[0]

  def __repr__(self) -> str:
    return (f"LazyImages({self._name}, shape={self.shape}, cached={len(self._cache)}/"
            f"{self._capacity})")

  @property
  def paths(self) -> list[str]:
    return list(self._paths)

  def _decode(self, index: int) -> np.ndarray:
    return load_image(self._paths[index], resize=self._resize, crop=self._crop)

  def _indices(self, key) -> np.ndarray:
    if isinstance(key, slice):
      return np.arange(len(self))[key]
    key = np.asarray(key)
    if key.dtype == bool:
      if key.shape != (len(self),):
        raise IndexError(f"boolean index of shape {key.shape} for {len(self)} rows")
      return np.flatnonzero(key)
    if not np.issubdtype(key.dtype, np.integer):
      raise IndexError(f"LazyImages rows are indexed by ints, slices or masks, not {key.dtype}")
    if key.size and (key.min() < -len(self) or key.max() >= len(self)):
      raise IndexError(f"index out of range for {len(self)} rows")
    return np.where(key < 0, key + len(self), key)

  def _submit(self, indices: Iterable[int]) -> dict[int, np.ndarray | concurrent.futures.Future]:
    """Cached rows, pending decodes and new decodes for `indices`; call with the lock held."""
    rows = {}
    for i in indices:
      i = int(i)
      if i in rows:
        continue
      if i in self._cache:
        self._cache.move_to_end(i)
        rows[i] = self._cache[i]
      elif i in self._pending:
        rows[i] = self._pending[i]
      else:
        future = self._pool.submit(self._decode, i)
        rows[i] = self._pending[i] = future
        future.add_done_callback(lambda f, i=i: self._store(i, f))
    return rows

  def _store(self, index: int, future: concurrent.futures.Future) -> None:
    """Moves a finished decode from the pending set into the LRU cache."""
    with self._lock:
      self._pending.pop(index, None)
      if self._capacity and not future.cancelled() and future.exception() is None:
        self._cache[index] = future.result()
        self._cache.move_to_end(index)
        while len(self._cache) > self._capacity:
          self._cache.popitem(last=False)

  def prefetch(self, key) -> None:
    """Starts decoding the rows of `key` in the background; a later `x[key]` picks them up."""
    with self._lock:
      self._submit(np.unique(self._indices(key)))

  def __getitem__(self, key) -> np.ndarray:
    if isinstance(key, (int, np.integer)):
      return self[np.asarray([key])][0]
    if isinstance(key, tuple):
      raise IndexError("LazyImages supports row indexing only (x[rows]); index the result further")
    indices = self._indices(key)
    flat = indices.reshape(-1)
    with self._lock:
      rows = self._submit(flat)
    decoded = {i: row.result() if isinstance(row, concurrent.futures.Future) else row
               for i, row in rows.items()}
    out = np.empty((len(flat), *self.shape[1:]), np.uint8)
    for k, i in enumerate(flat):
      out[k] = decoded[int(i)]
    return out.reshape(*indices.shape, *self.shape[1:])

  def __array__(self, dtype=None, copy=None):
    del copy  # always a fresh array
    if len(self) * np.prod(self.shape[1:]) > 2**30:
      logging.warning("decoding all %d %s into memory", len(self), self._name)
    out = self[np.arange(len(self))]
    return out if dtype is None else out.astype(dtype)

  def close(self) -> None:
    self._pool.shutdown(wait=False, cancel_futures=True)


def decode_ahead(images, rows_of: Callable[[int], np.ndarray], step: int, num_steps: int, *,
                 depth: int) -> None:
  """Before step `step` of `num_steps` (an epoch) uses its rows: starts decoding those of the next
  `depth` steps in the background (at step 0 all of them; later only step + depth, the others
  being under way already). `rows_of(i)`: the row indices of step i. No-op for in-memory arrays."""
  if not isinstance(images, LazyImages) or depth < 1:
    return
  for i in (range(1, depth + 1) if step == 0 else (step + depth,)):
    if i < num_steps:
      images.prefetch(rows_of(i))


def prefetch_rows(images, index_batches: Iterable[np.ndarray], *, depth: int = 2
                  ) -> Iterator[np.ndarray]:
  """Yields `images[idx]` for each idx, with the next `depth` batches decoding in the background.

  Works for numpy arrays (plain indexing) and `LazyImages` (decode ahead on its thread pool).
  """
  pending: collections.deque[np.ndarray] = collections.deque()
  batches = iter(index_batches)
  lazy = isinstance(images, LazyImages)
  for idx in batches:
    pending.append(idx)
    if lazy:
      images.prefetch(idx)
    if len(pending) > depth:
      yield images[pending.popleft()]
  while pending:
    yield images[pending.popleft()]
