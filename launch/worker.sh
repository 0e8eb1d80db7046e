#!/usr/bin/env bash
# The per-worker script: the SAME command on every worker of a TPU slice (launch/tpu_vm.sh runs it
# through `gcloud compute tpus tpu-vm ssh --worker=all`) or on every GPU node (multinode_gpu.sh).
#
#   bash worker.sh setup                 install JAX for this accelerator and diffmic-jax
#   bash worker.sh prepare               build the dataset once into $BUCKET/tfds
#   bash worker.sh train|evaluate [FLAG...]   the job itself, one process per worker
#
# The workdir is shared by all workers (every process writes its part of each Orbax checkpoint),
# so it is the bucket itself: --workdir=gs://... (Orbax, metrics, reports and plots all write
# through etils.epath / gcsfs; no mount). So is the data dir, --config.data.data_dir=$BUCKET/tfds:
# `prepare` builds on local disk and uploads, and every process copies the built dataset once to
# its own disk ($DIFFMIC_DATA_CACHE, default ~/.cache/diffmic_jax), since array_record's
# random-access reader opens local files only; a later run reuses a complete copy.
set -euo pipefail

# ---- settings (exported by tpu_vm.sh / multinode_gpu.sh; defaults for a manual run) ----
BUCKET=${BUCKET:?set BUCKET=gs://your-bucket}
CONFIG=${CONFIG:-configs/aptos.py}
RUN_NAME=${RUN_NAME:-aptos}
REPO_DIR=${REPO_DIR:-$HOME/diffmic-jax}   # holds configs/ (tpu_vm.sh copies the checkout here)
PACKAGE=${PACKAGE:-$REPO_DIR}        # what pip installs: the copied checkout, or git+https://...
JAX_EXTRA=${JAX_EXTRA:-tpu}          # tpu | cuda12
DATA_DIR=${DATA_DIR:-$BUCKET/tfds}      # or a local / shared-file-system folder
MANUAL_DIR=${MANUAL_DIR:-$HOME/raw}  # source images + CSVs, for `prepare` only
DISTRIBUTED=${DISTRIBUTED:-on}       # on: jax.distributed.initialize() (no arguments on Cloud TPU)

cmd=${1:?usage: worker.sh setup|prepare|train|evaluate [FLAG...]}
shift || true
cd "$REPO_DIR"

case "$cmd" in
  setup)
    python3 -m pip install -U pip
    python3 -m pip install -U "jax[$JAX_EXTRA]"
    python3 -m pip install -U "$PACKAGE" gcsfs  # gcsfs: gs:// workdirs (the package's [gcs] extra).
    python3 -c 'import jax, diffmic_jax.train; print("jax", jax.__version__)'  # Fails here, not mid-job.
    ;;
  prepare)  # One worker (or a workstation): build, then upload. Uses no accelerator.
    gcloud storage rsync -r "$BUCKET/raw/$RUN_NAME" "$MANUAL_DIR"
    JAX_PLATFORMS=cpu python3 -m diffmic_jax.main --mode=prepare --distributed=off \
      --config="$CONFIG" --workdir="/tmp/prepare_$RUN_NAME" \
      --config.data.data_dir="$DATA_DIR" --config.data.manual_dir="$MANUAL_DIR"
    ;;
  train|evaluate)
    python3 -m diffmic_jax.main --mode="$cmd" --distributed="$DISTRIBUTED" \
      --config="$CONFIG" --workdir="$BUCKET/runs/$RUN_NAME" \
      --config.data.data_dir="$DATA_DIR" "$@"
    ;;
  *)
    echo "unknown command: $cmd" >&2; exit 2 ;;
esac
