r"""Writes a fake CIFAR-100 (random 32×32×3 uint8 images, balanced labels) as a prepared TFDS
array_record dataset, for end-to-end speed runs where the real archive is not at hand.

  python -m bench.fake_cifar100 --data_dir DIR [--train_per_class 100] [--test_per_class 20]

Uses the project's own writer (rfd_jax.data.prepare.cifar.write), so `--config.data.data_dir=DIR`
reads it exactly as a dataset prepared from the official archive. 100 per class and 2 tasks of
50 classes give 5,000 training images per task, as in CIFAR-100 10 × 10. Nothing is learnable:
accuracies are chance; only the speed means something.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from rfd_jax.data.prepare import cifar

NUM_CLASSES, NUM_COARSE = 100, 20


def fake_archive(*, train_per_class: int, test_per_class: int, seed: int = 0) -> cifar.CifarArchive:
  """A CifarArchive of random images, each split holding `*_per_class` images of every class."""
  rng = np.random.default_rng(seed)
  splits = {}
  for split, per_class in (("train", train_per_class), ("test", test_per_class)):
    labels = rng.permutation(np.repeat(np.arange(NUM_CLASSES), per_class))
    images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
    splits[split] = cifar.CifarSplit(
        images=images, labels={"label": labels, "coarse_label": labels % NUM_COARSE})
  return cifar.CifarArchive(
      splits=splits,
      label_names={"label": [f"class_{i:02d}" for i in range(NUM_CLASSES)],
                   "coarse_label": [f"superclass_{i:02d}" for i in range(NUM_COARSE)]})


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", required=True, help="TFDS data directory to write into")
  parser.add_argument("--train_per_class", type=int, default=100)
  parser.add_argument("--test_per_class", type=int, default=20)
  args = parser.parse_args()
  start = time.perf_counter()
  archive = fake_archive(train_per_class=args.train_per_class, test_per_class=args.test_per_class)
  target = cifar.write(archive, dataset_name="cifar100", data_dir=args.data_dir, overwrite=True)
  print(f"fake cifar100: {NUM_CLASSES * args.train_per_class} train / "
        f"{NUM_CLASSES * args.test_per_class} test images in {target} "
        f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
  main()
