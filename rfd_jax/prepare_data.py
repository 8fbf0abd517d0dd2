"""Convert dataset files you have into TFDS array_record datasets, without TensorFlow or network.

Usage:
  python -m rfd_jax.prepare_data cifar10  --archive /path/to/cifar-10-python.tar.gz  --data_dir DIR
  python -m rfd_jax.prepare_data cifar100 --archive /path/to/cifar-100-python.tar.gz --data_dir DIR
  python -m rfd_jax.prepare_data fashion_mnist [--source DIR_OF_IDX_FILES] --data_dir DIR

CIFAR: the "python version" archives from https://www.cs.toronto.edu/~kriz/cifar.html.
Fashion-MNIST: the four idx files, by default from Debian's `dataset-fashion-mnist` package
(/usr/share/datasets/fashion-mnist).

The output, `DIR/<name>/<version>/`, is what `tfds.data_source(name, data_dir=DIR)` and
`--config.data.data_dir=DIR` read (see rfd_jax/data/prepare/tfds_writer.py). All files are parsed
and checked before anything is written, and the dataset is renamed into place only once complete.

Exit status: 0 done; 2 bad arguments, missing or malformed input, or an existing dataset without
--overwrite (one `error:` line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from etils import epath

from rfd_jax.data.prepare import cifar, fashion_mnist, tfds_writer


def _argument_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m rfd_jax.prepare_data",
      description="Convert dataset files you have into a TFDS array_record dataset readable "
                  "without TensorFlow (nothing is downloaded).")
  datasets = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
  for name, archive_name in (("cifar10", "cifar-10-python.tar.gz"),
                             ("cifar100", "cifar-100-python.tar.gz")):
    sub = datasets.add_parser(
        name, help=f"from {archive_name} (python version, {cifar.CIFAR_DOWNLOAD_PAGE})")
    sub.add_argument("--archive", required=True, help=f"path of {archive_name}")
  sub = datasets.add_parser(
      fashion_mnist.DATASET_NAME,
      help=f"from the four idx files (Debian package {fashion_mnist.DEBIAN_PACKAGE})")
  sub.add_argument("--source", default=fashion_mnist.DEFAULT_SOURCE,
                   help=f"directory holding {', '.join(fashion_mnist.FILE_NAMES)} "
                        "(default: %(default)s)")
  for sub in datasets.choices.values():
    sub.add_argument("--data_dir", required=True,
                     help="TFDS data directory to write into (then use "
                          "--config.data.data_dir=<this dir>)")
    sub.add_argument("--overwrite", action="store_true",
                     help="replace an already prepared dataset of the same version")
  return parser


def _prepare_cifar(args) -> epath.Path:
  print(f"Reading {args.archive} ...", flush=True)
  archive = cifar.read_cifar_archive(args.archive, dataset_name=args.dataset)
  for split, split_data in archive.splits.items():
    print(f"  {split}: {len(split_data.images)} images", flush=True)
  print(f"Converting them into the TFDS dataset {args.dataset} (array_record) under "
        f"{args.data_dir}; nothing is downloaded ...", flush=True)
  return cifar.write(archive, dataset_name=args.dataset, data_dir=args.data_dir,
                     overwrite=args.overwrite)


def _prepare_fashion_mnist(args) -> epath.Path:
  print(f"Reading the Fashion-MNIST idx files in {args.source} ...", flush=True)
  splits = fashion_mnist.read_fashion_mnist(args.source)
  for split, split_data in splits.items():
    official = fashion_mnist.OFFICIAL_COUNTS[split]
    note = "" if len(split_data.labels) == official else f" (the official files have {official})"
    print(f"  {split}: {len(split_data.labels)} images{note}", flush=True)
  print(f"Converting them into the TFDS dataset fashion_mnist (array_record) under "
        f"{args.data_dir}; nothing is downloaded ...", flush=True)
  return fashion_mnist.write(splits, data_dir=args.data_dir, overwrite=args.overwrite)


def main(argv: Sequence[str] | None = None) -> int:
  """Command-line entry point; returns the process exit status (0 on success, 2 on error)."""
  args = _argument_parser().parse_args(argv)
  prepare = _prepare_fashion_mnist if args.dataset == fashion_mnist.DATASET_NAME else _prepare_cifar
  try:
    # Checked first: an existing dataset is refused before minutes of parsing.
    tfds_writer.check_writable(args.dataset, data_dir=args.data_dir, overwrite=args.overwrite)
    target_dir = prepare(args)
  except (FileNotFoundError, FileExistsError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print(f"Done: {args.dataset} prepared at {target_dir}", flush=True)
  print(f"Use it with --config.data.data_dir={epath.Path(args.data_dir).expanduser()}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
