#!/usr/bin/env bash
# The Cloud TPU pod workflow of launch/README.md, one subcommand per step:
#
#   launch/tpu_pod.sh create                 # create the TPU VM (all hosts of the slice)
#   launch/tpu_pod.sh setup                  # copy this checkout to every host, install Python 3.11 + deps
#   launch/tpu_pod.sh data ARCHIVE           # CIFAR only: copy the python-version archive, convert on every host
#   launch/tpu_pod.sh run -- <main args>     # same `python -m rfd_jax.main ...` on every host, in the background
#   launch/tpu_pod.sh logs                   # follow worker 0's log (the one that writes results)
#   launch/tpu_pod.sh fetch                  # copy worker 0's runs/ directory here
#   launch/tpu_pod.sh ssh [WORKER]           # a shell on one host (default 0)
#   launch/tpu_pod.sh delete                 # delete the TPU VM (billing stops)
#
# First, on any machine (no TPU, no data needed): check that the config fits the slice and see its
# projected time, e.g. for a v5litepod-8 (launch/README.md, "Before you launch"):
#   python -m rfd_jax.tools.aot --config configs/cifar100.py --target v5e:2x4
#
# Override any variable below from the environment, e.g. TPU_NAME=my-tpu ZONE=us-central2-b.
# Untested here (no TPU access while writing it); the commands follow the gcloud TPU VM docs.
set -euo pipefail

TPU_NAME=${TPU_NAME:-rfd-jax}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-32}         # 16 chips on 4 hosts; v4-8 is a single host
RUNTIME_VERSION=${RUNTIME_VERSION:-tpu-ubuntu2204-base}  # v5e: v2-alpha-tpuv5-lite, v6e: v2-alpha-tpuv6e
PROJECT=${PROJECT:-}                                 # empty: gcloud's default project
JAX_VERSION=${JAX_VERSION:-0.10.2}                   # must match requirements.txt
REMOTE_DIR=${REMOTE_DIR:-rfd_jax}                    # code, relative to the remote home directory
REMOTE_VENV=${REMOTE_VENV:-venv-rfd-jax}
REMOTE_LOG=${REMOTE_LOG:-rfd_jax.log}

REPO=$(cd "$(dirname "$0")/.." && pwd)
project_flag=()
[ -n "$PROJECT" ] && project_flag=(--project="$PROJECT")

tpu() {  # gcloud compute tpus tpu-vm <verb> ... with zone and project
  local verb=$1
  shift
  gcloud compute tpus tpu-vm "$verb" "$@" --zone="$ZONE" "${project_flag[@]}"
}

on_all() {  # run a shell command on every host of the slice
  tpu ssh "$TPU_NAME" --worker=all --command="$1"
}

case "${1:-}" in
  create)
    tpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION"
    ;;
  setup)
    # This checkout (uncommitted edits included) minus outputs and local environments.
    tarball=$(mktemp -d)/rfd_jax.tar.gz
    tar -C "$REPO" --exclude=.git --exclude=runs --exclude='.venv*' --exclude=__pycache__ \
        -czf "$tarball" .
    tpu scp "$tarball" "$TPU_NAME":rfd_jax.tar.gz --worker=all
    # The TPU images ship Python 3.10; rfd_jax needs 3.11 (deadsnakes PPA).
    on_all "set -e
      mkdir -p ~/$REMOTE_DIR && tar -xzf ~/rfd_jax.tar.gz -C ~/$REMOTE_DIR  # keeps runs/
      if ! command -v python3.11 >/dev/null; then
        sudo add-apt-repository -y ppa:deadsnakes/ppa
        sudo apt-get update -q && sudo apt-get install -y -q python3.11 python3.11-venv
      fi
      [ -d ~/$REMOTE_VENV ] || python3.11 -m venv ~/$REMOTE_VENV
      ~/$REMOTE_VENV/bin/pip install -q -U pip
      ~/$REMOTE_VENV/bin/pip install -q -r ~/$REMOTE_DIR/requirements.txt 'jax[tpu]==$JAX_VERSION'
      ~/$REMOTE_VENV/bin/python -c 'import jax, libtpu; print(\"jax\", jax.__version__)'"
    ;;
  data)
    archive=${2:?usage: $0 data /path/to/cifar-100-python.tar.gz (or cifar-10-python.tar.gz)}
    case "$(basename "$archive")" in
      cifar-10-*) dataset=cifar10 ;;
      cifar-100-*) dataset=cifar100 ;;
      *) echo "cannot tell cifar10 from cifar100 by the name $archive" >&2; exit 2 ;;
    esac
    tpu scp "$archive" "$TPU_NAME":"$(basename "$archive")" --worker=all
    # Every host loads the whole dataset from its own disk (it keeps only its rows of each batch).
    on_all "cd ~/$REMOTE_DIR && ~/$REMOTE_VENV/bin/python -m rfd_jax.prepare_data $dataset \
      --archive ~/$(basename "$archive") --data_dir ~/tensorflow_datasets"
    ;;
  run)
    shift
    [ "${1:-}" = "--" ] && shift
    [ $# -gt 0 ] || { echo "usage: $0 run -- --config configs/<name>.py [--workdir runs/...] [--config.x=y ...]" >&2; exit 2; }
    args=$(printf '%q ' "$@")
    # nohup: the run survives the ssh session. jax.distributed is initialised automatically on a
    # TPU VM (rfd_jax.engine.parallel.maybe_initialize_distributed); every host runs the same command.
    on_all "cd ~/$REMOTE_DIR && nohup ~/$REMOTE_VENV/bin/python -m rfd_jax.main $args \
      > ~/$REMOTE_LOG 2>&1 < /dev/null &"
    echo "started on all workers; follow with: $0 logs"
    ;;
  logs)
    tpu ssh "$TPU_NAME" --worker="${2:-0}" --command="tail -n +1 -f ~/$REMOTE_LOG"
    ;;
  fetch)
    tpu scp --recurse "$TPU_NAME":"$REMOTE_DIR/runs" "$REPO/" --worker=0
    ;;
  ssh)
    tpu ssh "$TPU_NAME" --worker="${2:-0}"
    ;;
  delete)
    tpu delete "$TPU_NAME" --quiet
    ;;
  *)
    sed -n '2,14p' "$0" >&2
    exit 2
    ;;
esac
