#!/usr/bin/env bash
# JAX vs PyTorch on this machine, each workload back to back in one invocation:
#   rfd_step        the RFD main-phase train step (bench/step.py vs bench/torch_reference.py)
#   inversion_iter  one model-inversion iteration (bench/inversion.py vs bench/torch_reference.py)
# Prints a config/versions header, then exactly one line per workload:
#   <workload> jax=<img/s> torch=<img/s> ratio=<jax/torch>
# The full outputs of each run go to $LOG_DIR (default: a fresh temp dir).
#
# Usage (from the repository root):
#   TORCH_PYTHON=/path/to/torch/venv/bin/python bench/compare.sh
# Env: IMAGE_SIZE (32), BATCH (128), STEPS (10), WORKLOADS ("rfd_step inversion_iter"),
#   JAX_PYTHON (.venv/bin/python), TORCH_PYTHON (python),
#   JAX_ARGS (extra flags for the JAX benches; default "--dtype bfloat16"),
#   JAX_XLA_FLAGS (XLA_FLAGS for the JAX runs only; default
#   "--xla_cpu_experimental_ynn_fusion_type=", see bench/RESULTS.md),
#   TORCH_ARGS (extra flags for torch_reference.py).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE_SIZE=${IMAGE_SIZE:-32}
BATCH=${BATCH:-128}
STEPS=${STEPS:-10}
WORKLOADS=${WORKLOADS:-"rfd_step inversion_iter"}
JAX_PYTHON=${JAX_PYTHON:-.venv/bin/python}
TORCH_PYTHON=${TORCH_PYTHON:-python}
JAX_ARGS=${JAX_ARGS---dtype bfloat16}
JAX_XLA_FLAGS=${JAX_XLA_FLAGS---xla_cpu_experimental_ynn_fusion_type=}
TORCH_ARGS=${TORCH_ARGS:-}
LOG_DIR=${LOG_DIR:-$(mktemp -d)}
mkdir -p "$LOG_DIR"

common=(--image_size "$IMAGE_SIZE" --batch_size "$BATCH" --steps "$STEPS")
images_per_s() { sed -n 's/.* \([0-9.]*\) images\/s.*/\1/p' "$1" | tail -1; }

echo "# $(date -u +%FT%TZ)  $(nproc) CPUs  $(lscpu | sed -n 's/^Model name: *//p')"
echo "# load: $(uptime | sed 's/.*load average/load average/')"
echo "# jax: $("$JAX_PYTHON" -c 'import jax, jaxlib, flax; print(jax.__version__, jaxlib.__version__, "flax", flax.__version__)' 2>/dev/null)"
echo "# torch: $("$TORCH_PYTHON" -c 'import torch; print(torch.__version__, torch.get_num_threads(), "threads")' 2>/dev/null)"
echo "# config: ${IMAGE_SIZE} px, batch ${BATCH}, ${STEPS} timed steps; JAX_ARGS='${JAX_ARGS}' JAX XLA_FLAGS='${JAX_XLA_FLAGS}' TORCH_ARGS='${TORCH_ARGS}'; logs in ${LOG_DIR}"

for workload in $WORKLOADS; do
  case $workload in
    rfd_step) jax_module=bench.step ;;
    inversion_iter) jax_module=bench.inversion ;;
    *) echo "unknown workload $workload" >&2; exit 2 ;;
  esac
  # shellcheck disable=SC2086  # JAX_ARGS / TORCH_ARGS are word lists
  XLA_FLAGS="$JAX_XLA_FLAGS" PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} \
    "$JAX_PYTHON" -m "$jax_module" "${common[@]}" $JAX_ARGS > "$LOG_DIR/$workload.jax.txt" 2>&1
  # shellcheck disable=SC2086
  "$TORCH_PYTHON" bench/torch_reference.py --workload "$workload" "${common[@]}" $TORCH_ARGS \
    > "$LOG_DIR/$workload.torch.txt" 2>&1
  jax=$(images_per_s "$LOG_DIR/$workload.jax.txt")
  torch=$(images_per_s "$LOG_DIR/$workload.torch.txt")
  ratio=$(awk -v a="$jax" -v b="$torch" 'BEGIN { printf "%.2f", a / b }')
  echo "$workload jax=$jax torch=$torch ratio=$ratio"
done
echo "# load after: $(uptime | sed 's/.*load average/load average/')"
