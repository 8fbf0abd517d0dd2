#!/usr/bin/env bash
# The compile-check tests (tests/aot_compile_test.py) in a virtualenv of their own: the TPU compiler
# (libtpu) and the CUDA plugin change plain CPU runs when installed next to the CPU jax
# (docs/accelerator_compile.md), so they never go into the venv the rest of the suite runs in.
# Usage: bash tests/compile_tests.sh   (reuses .venv-compile/ in the repository root; ~400 MB of wheels)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${COMPILE_VENV:-.venv-compile}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi
"$venv/bin/python" -m pip install -q -r requirements.txt -r requirements-tpu-compile.txt \
  -r requirements-gpu-compile.txt -e .
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/aot_compile_test.py "$@"
