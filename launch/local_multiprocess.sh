#!/usr/bin/env bash
# Runs N processes of `python -m rfd_jax.main` on this machine as one jax.distributed cluster
# (CPU, collectives over gloo, a coordinator on 127.0.0.1): the multi-host code path without a pod.
#
#   launch/local_multiprocess.sh N -- --config configs/digits.py --workdir runs/digits-2proc [--config.x=y ...]
#
# Every process gets the same arguments plus RFD_JAX_DISTRIBUTED=1, RFD_JAX_COORDINATOR,
# RFD_JAX_NUM_PROCESSES and RFD_JAX_PROCESS_ID. Only process 0 writes the workdir. Output lines are
# prefixed with "[i] ". Devices per process: 1, or set XLA_FLAGS=--xla_force_host_platform_device_count=K.
# Environment: PYTHON (default python), RFD_JAX_PORT (default: a free port), JAX_PLATFORMS
# (default cpu).
# Exit status: 0 if every process succeeded, else the first non-zero status.
set -euo pipefail

if [ $# -lt 2 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]] || [ "$2" != "--" ]; then
  echo "usage: $0 N -- <rfd_jax.main arguments>" >&2
  exit 2
fi
num_processes=$1
shift 2
python=${PYTHON:-python}
repo=$(cd "$(dirname "$0")/.." && pwd)  # importable from any working directory
port=${RFD_JAX_PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

for ((i = 0; i < num_processes; i++)); do
  RFD_JAX_DISTRIBUTED=1 RFD_JAX_COORDINATOR="127.0.0.1:$port" \
  RFD_JAX_NUM_PROCESSES="$num_processes" RFD_JAX_PROCESS_ID="$i" JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" \
  PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" \
    "$python" -m rfd_jax.main "$@" > >(sed -u "s/^/[$i] /") 2> >(sed -u "s/^/[$i] /" >&2) &
  pids+=($!)
done

status=0
for pid in "${pids[@]}"; do
  rc=0
  wait "$pid" || rc=$?
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then
    status=$rc
    cleanup  # one process failed: the others would only wait for it until jax's timeout
  fi
done
exit "$status"
