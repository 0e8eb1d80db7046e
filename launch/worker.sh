#!/usr/bin/env bash
# The per-worker script: the SAME command on every worker of a TPU slice (launch/tpu_vm.sh runs it
# through `gcloud compute tpus tpu-vm ssh --worker=all`) or on every GPU node (multinode_gpu.sh).
#
#   bash worker.sh setup                 install JAX for this accelerator and diffmic-jax
#   bash worker.sh prepare               build the dataset once and upload it to $BUCKET/tfds
#   bash worker.sh fetch                 copy the built dataset to this worker's local disk
#   bash worker.sh train|evaluate [FLAG...]   the job itself, one process per worker
#
# Why the data is copied to local disk: grain reads TFDS array_record files with random access
# through a POSIX reader; local disk is fast and needs no GCS client in the reader. The workdir is
# shared by all workers (every process writes its part of each Orbax checkpoint), so it lives in
# the bucket, mounted with gcsfuse at $MOUNT (report/metric writers use plain file APIs).
set -euo pipefail

# ---- settings (exported by tpu_vm.sh / multinode_gpu.sh; defaults for a manual run) ----
BUCKET=${BUCKET:?set BUCKET=gs://your-bucket}
CONFIG=${CONFIG:-configs/aptos.py}
RUN_NAME=${RUN_NAME:-aptos}
REPO_DIR=${REPO_DIR:-$HOME/diffmic-jax}   # holds configs/ (tpu_vm.sh copies the checkout here)
PACKAGE=${PACKAGE:-$REPO_DIR}        # what pip installs: the copied checkout, or git+https://...
JAX_EXTRA=${JAX_EXTRA:-tpu}          # tpu | cuda12
DATA_DIR=${DATA_DIR:-$HOME/tensorflow_datasets}
MANUAL_DIR=${MANUAL_DIR:-$HOME/raw}  # source images + CSVs, for `prepare` only
MOUNT=${MOUNT:-$HOME/bucket}
DISTRIBUTED=${DISTRIBUTED:-on}       # on: jax.distributed.initialize() (no arguments on Cloud TPU)

cmd=${1:?usage: worker.sh setup|prepare|fetch|train|evaluate [FLAG...]}
shift || true
cd "$REPO_DIR"

case "$cmd" in
  setup)
    python3 -m pip install -U pip
    python3 -m pip install -U "jax[$JAX_EXTRA]"
    python3 -m pip install -U "$PACKAGE"
    if ! command -v gcsfuse >/dev/null; then  # Google's documented apt install.
      echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main" \
        | sudo tee /etc/apt/sources.list.d/gcsfuse.list
      curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
      sudo apt-get update -q && sudo apt-get install -y -q gcsfuse
    fi
    python3 -c 'import jax, diffmic_jax.train; print("jax", jax.__version__)'  # Fails here, not mid-job.
    ;;
  prepare)  # One worker (or a workstation): build, then upload. Uses no accelerator.
    gcloud storage rsync -r "$BUCKET/raw/$RUN_NAME" "$MANUAL_DIR"
    JAX_PLATFORMS=cpu python3 -m diffmic_jax.main --mode=prepare --distributed=off \
      --config="$CONFIG" --workdir="/tmp/prepare_$RUN_NAME" \
      --config.data.data_dir="$DATA_DIR" --config.data.manual_dir="$MANUAL_DIR"
    gcloud storage rsync -r "$DATA_DIR" "$BUCKET/tfds"
    ;;
  fetch)
    mkdir -p "$DATA_DIR" "$MOUNT"
    gcloud storage rsync -r "$BUCKET/tfds" "$DATA_DIR"
    mountpoint -q "$MOUNT" || gcsfuse --implicit-dirs "${BUCKET#gs://}" "$MOUNT"
    ;;
  train|evaluate)
    python3 -m diffmic_jax.main --mode="$cmd" --distributed="$DISTRIBUTED" \
      --config="$CONFIG" --workdir="$MOUNT/runs/$RUN_NAME" \
      --config.data.data_dir="$DATA_DIR" "$@"
    ;;
  *)
    echo "unknown command: $cmd" >&2; exit 2 ;;
esac
