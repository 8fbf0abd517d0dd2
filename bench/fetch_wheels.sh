#!/usr/bin/env bash
# Downloads into bench/wheels/ (git-ignored; the device tool carries it: carry: ["bench/wheels"])
# the wheels of what the project needs beyond the GPU image's packages, for its Python 3.12 on
# x86-64 Linux, so that bench/device.sh can install them there without network.
#
# The image (/work/.library/device/KINDS.md) already has jax, jaxlib, flax, optax,
# orbax-checkpoint, chex, numpy, absl-py, etils, matplotlib, pillow, pyyaml, scikit-learn, protobuf,
# pyarrow, psutil, requests, tqdm, wrapt, attrs, typing-extensions and torch. Missing, and fetched
# here with --no-deps (so no second jax comes along): ml-collections, tensorflow-datasets,
# array-record and tensorboardX (the versions of requirements.txt), and what tensorflow-datasets
# imports from them: dm-tree, immutabledict, promise, simple-parsing (+ docstring-parser),
# tensorflow-metadata (+ googleapis-common-protos), termcolor, toml (the versions of the project's
# virtualenv). promise has no wheel on PyPI (sdist only); it is pure Python, so it is built into a
# py3 wheel here.
#
# Usage (from the repository root, with network): bench/fetch_wheels.sh   Env: PYTHON (python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEST=bench/wheels

WHEELS=(
  ml-collections==1.1.0
  tensorflow-datasets==4.9.10
  array-record==0.8.6
  tensorboardX==2.6.5
  dm-tree==0.1.10
  immutabledict==4.3.1
  simple-parsing==0.1.9
  docstring-parser==0.18.0
  tensorflow-metadata==1.21.0
  googleapis-common-protos==1.76.0
  termcolor==3.3.0
  toml==0.10.2
)
BUILT_HERE=(promise==2.3)

rm -rf "$DEST"
mkdir -p "$DEST"
"$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$DEST" "${WHEELS[@]}"
"$PYTHON" -m pip wheel -q --disable-pip-version-check --no-deps -w "$DEST" "${BUILT_HERE[@]}"

ls -l "$DEST"
echo "$(ls "$DEST"/*.whl | wc -l) wheels, $(du -sh "$DEST" | cut -f1) in $DEST"
