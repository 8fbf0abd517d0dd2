#!/usr/bin/env bash
# One-call device benchmark (bench/RESULTS.md, "GPU (bench/device.sh)"), in under 8 minutes on a
# GPU machine with no network whose python already has jax (CUDA), flax, optax, orbax-checkpoint,
# chex and torch:
#   1. installs the wheels carried in bench/wheels (bench/fetch_wheels.sh: ml-collections,
#      tensorflow-datasets and the rest the project needs beyond that image) into $SITE with
#      --no-deps, so the image's jax and torch stay untouched; skipped when they already import;
#   2. runs `python -m bench.device` (bench/device.py): versions and devices; JAX vs
#      bench/torch_reference.py images/s for the RFD step and the inversion iteration (f32, bf16);
#      a 2-task CIFAR-100-shaped RFD run end to end on generated data; peak device memory; the
#      projected time of configs/cifar100.py's 10-task schedule.
# Usage (from the repository root):
#   bench/device.sh              the GPU run
#   bench/device.sh --cpu-tiny   the same stages, tiny shapes, on CPU (tests/device_bench_test.py)
# Other arguments go to bench/device.py (--budget_s, --stages). Env: PYTHON (default python3),
# SITE (default /tmp/rfd_jax_site), OUT (if set: device.txt, the whole output, and bench/device.py's
# files are written there).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SITE=${SITE:-/tmp/rfd_jax_site}
export PYTHONUNBUFFERED=1
log=/dev/null
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT" && log="$OUT/device.txt"
fi

{
  echo "# device.sh $(date -u +%FT%TZ) on $(hostname), $(nproc) CPUs," \
    "python: $(command -v "$PYTHON")"
  pythonpath=$PWD
  if ! "$PYTHON" -c "import ml_collections, tensorflow_datasets, tensorboardX, array_record" \
      2>/dev/null; then
    if ls bench/wheels/*.whl >/dev/null 2>&1; then
      echo "# installing $(ls bench/wheels/*.whl | wc -l) carried wheels into $SITE (--no-deps)"
      "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --disable-pip-version-check --target "$SITE" bench/wheels/*.whl \
        || echo "# pip install of bench/wheels failed"
      pythonpath=$SITE:$pythonpath
    else
      echo "# missing packages and no bench/wheels/*.whl" \
        "(run bench/fetch_wheels.sh here, carry bench/wheels)"
    fi
  fi
  export PYTHONPATH=$pythonpath${PYTHONPATH:+:$PYTHONPATH}
  "$PYTHON" -m bench.device "$@"
  status=$?
  echo "# device.sh done in ${SECONDS} s (exit status $status)"
  exit $status
} 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
