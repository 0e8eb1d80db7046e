#!/usr/bin/env bash
# DiffMIC on a Cloud TPU VM slice, start to finish: create, set up every worker, build the data
# once into the bucket, train and evaluate on all workers, delete. Run from the repository root:
#
#   PROJECT=my-project BUCKET=gs://my-bucket bash launch/tpu_vm.sh
#
# Every worker runs the same launch/worker.sh command; `--distributed=on` makes main.py call
# `jax.distributed.initialize()` with no arguments, which on Cloud TPU finds the coordinator, the
# process count and this process's id by itself. Each worker feeds its own shard of the batch; the
# step is one jax.jit over a ('data',) mesh of all chips (no pmap), so BatchNorm statistics and the
# MMD term are over the global batch. Raw images go to $BUCKET/raw/$RUN_NAME first, e.g.
#   gcloud storage rsync -r ~/data/aptos2019 gs://my-bucket/raw/aptos
set -euo pipefail

PROJECT=${PROJECT:?set PROJECT}
ZONE=${ZONE:-us-central2-b}
TPU_NAME=${TPU_NAME:-diffmic}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-16}        # v4-16: 2 hosts x 4 chips (8 TensorCores)
RUNTIME_VERSION=${RUNTIME_VERSION:-tpu-ubuntu2204-base}
BUCKET=${BUCKET:?set BUCKET=gs://your-bucket}      # same region as ZONE
CONFIG=${CONFIG:-configs/aptos.py}
RUN_NAME=${RUN_NAME:-aptos}
PACKAGE=${PACKAGE:-}                               # '': pip installs the copied checkout
EXTRA_FLAGS=${EXTRA_FLAGS:-}                       # e.g. --config.model.dtype=bfloat16

ssh_all() {  # ssh_all WORKER COMMAND: COMMAND on one worker or on --worker=all.
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
    --worker="$1" --command="$2"
}
ENV="BUCKET=$BUCKET CONFIG=$CONFIG RUN_NAME=$RUN_NAME PACKAGE='$PACKAGE' JAX_EXTRA=tpu"

# 1. The slice.
gcloud compute tpus tpu-vm create "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
  --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION"

# 2. Every worker: the configs and the worker script (a tarball of the checkout), JAX, the package.
git archive --format=tar.gz --prefix=diffmic-jax/ -o /tmp/diffmic-jax.tar.gz HEAD
gcloud compute tpus tpu-vm scp /tmp/diffmic-jax.tar.gz "$TPU_NAME":~/ --project="$PROJECT" \
  --zone="$ZONE" --worker=all
ssh_all all "tar xzf ~/diffmic-jax.tar.gz -C ~ && $ENV bash ~/diffmic-jax/launch/worker.sh setup"

# 3. The dataset, built once (worker 0, on its CPU) into the bucket; each worker's first train
#    or evaluate copies it to its own disk.
ssh_all 0 "$ENV bash ~/diffmic-jax/launch/worker.sh prepare"

# 4. Train, then evaluate the validation-chosen checkpoint: one process per worker, all at once.
#    A preempted or killed run resumes from $BUCKET/runs/$RUN_NAME/checkpoints: run it again.
ssh_all all "$ENV bash ~/diffmic-jax/launch/worker.sh train $EXTRA_FLAGS"
ssh_all all "$ENV bash ~/diffmic-jax/launch/worker.sh evaluate --checkpoint=best $EXTRA_FLAGS"
gcloud storage ls "$BUCKET/runs/$RUN_NAME/reports/"

# 5. Delete the slice (the bucket keeps checkpoints, metrics and reports).
gcloud compute tpus tpu-vm delete "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --quiet
