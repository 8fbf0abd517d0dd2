r"""Decode throughput of the lazy ImageNet pipeline (image_decode.LazyImages) on synthetic JPEGs.

  python -m bench.folder_decode [--num_images=512] [--threads=0] [--batch_size=64]

Writes `num_images` ImageNet-sized JPEGs (500×375, quality 90, random smooth content) to a temp dir,
then times Resize(256) + CenterCrop(224) decoding of shuffled batches: cold (every image decoded)
and warm (served from the LRU cache). Prints images/s for each.

--step_ms S (> 0) then runs the training loop's host-fed path on fresh (cold) images: per step, the
look-ahead the loop does (image_decode.decode_ahead, depth --depth, the loop's PREFETCH_STEPS) and
`images[rows]`, then a simulated device step of S ms (a sleep, during which decoding goes on);
and the same with no look-ahead. Prints the mean time per step the step waited for its batch
(`stall_ms`): 0 means decoding never held the step up.
"""

import tempfile
import time

from absl import app, flags
import numpy as np
from PIL import Image

from rfd_jax.data import image_decode

_NUM = flags.DEFINE_integer("num_images", 512, "synthetic images to write and decode")
_THREADS = flags.DEFINE_integer("threads", 0, "decode threads (0: one per core, at most 32)")
_BATCH = flags.DEFINE_integer("batch_size", 64, "images per batch")
_STEP_MS = flags.DEFINE_float("step_ms", 0.0, "simulated device step (ms); 0: skip the loop test")
_DEPTH = flags.DEFINE_integer("depth", 4, "look-ahead of the loop test (train.PREFETCH_STEPS)")


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory() as tmp:
    paths = []
    for i in range(_NUM.value):
      small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)  # upsampled: JPEG-like content
      path = f"{tmp}/{i}.JPEG"
      Image.fromarray(small).resize((500, 375), Image.BICUBIC).save(path, quality=90)
      paths.append(path)
    images = image_decode.LazyImages(paths, resize=256, crop=224, num_threads=_THREADS.value)
    batches = np.random.default_rng(1).permutation(len(paths))
    batches = batches[:len(paths) // _BATCH.value * _BATCH.value].reshape(-1, _BATCH.value)
    for label in ("cold", "warm"):
      start = time.perf_counter()
      for _ in image_decode.prefetch_rows(images, batches):
        pass
      seconds = time.perf_counter() - start
      print(f"{label}: {batches.size / seconds:8.0f} images/s  ({batches.size} images, "
            f"{_THREADS.value or 'auto'} threads, batch {_BATCH.value})")
    images.close()
    if _STEP_MS.value > 0:
      for depth in (_DEPTH.value, 0):
        # a fresh reader (empty cache), as in a run's first epoch
        fresh = image_decode.LazyImages(paths, resize=256, crop=224, num_threads=_THREADS.value)
        waited = 0.0
        for step in range(len(batches)):
          image_decode.decode_ahead(fresh, lambda i: batches[i], step, len(batches), depth=depth)
          start = time.perf_counter()
          fresh[batches[step]]
          waited += time.perf_counter() - start
          time.sleep(_STEP_MS.value / 1e3)
        fresh.close()
        print(f"loop depth={depth} step_ms={_STEP_MS.value:g}: stall_ms={waited / len(batches) * 1e3:.1f} "
              f"per step ({len(batches)} steps of {_BATCH.value} images)")


if __name__ == "__main__":
  app.run(main)
