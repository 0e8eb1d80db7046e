#!/usr/bin/env bash
# DiffMIC on several GPU hosts: one JAX process per host, each seeing all of its local GPUs.
#
# Any launcher (plain ssh, a job scheduler):  run this on EVERY node, same command, with
#   JAX_COORDINATOR_ADDRESS=node0:12345 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=<0|1> \
#     BUCKET=gs://my-bucket bash launch/multinode_gpu.sh train
# main.py sees the coordinator in the environment (--distributed=auto) and passes the three
# values to jax.distributed.initialize(), which reads JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
# JAX_PROCESS_ID itself.
#
# SLURM: `sbatch launch/multinode_gpu.sh train` (or srun inside an allocation). With one task per
# node, jax.distributed.initialize() detects SLURM by itself (coordinator: the first node of
# SLURM_STEP_NODELIST; id: SLURM_PROCID), so only --distributed=on is needed.
#
#SBATCH --job-name=diffmic
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --time=24:00:00
set -euo pipefail

export BUCKET=${BUCKET:?set BUCKET=gs://your-bucket (or any path every node can read)}
export CONFIG=${CONFIG:-configs/aptos.py}
export RUN_NAME=${RUN_NAME:-aptos}
export JAX_EXTRA=cuda12
export REPO_DIR=${REPO_DIR:-$PWD}
# The workdir, $BUCKET/runs/$RUN_NAME, must be one directory every node sees: the bucket itself
# (gs:// is written directly, no mount) or a shared file system's directory.
MODE=${1:-train}
shift || true

if [[ -n "${SLURM_JOB_ID:-}" && -z "${JAX_COORDINATOR_ADDRESS:-}" ]]; then
  # One process per node; JAX reads the SLURM variables. Each copies the data to its own disk.
  DISTRIBUTED=on srun --ntasks-per-node=1 bash "$REPO_DIR/launch/worker.sh" "$MODE" "$@"
else
  : "${JAX_COORDINATOR_ADDRESS:?set JAX_COORDINATOR_ADDRESS=host:port of process 0}"
  : "${JAX_NUM_PROCESSES:?set JAX_NUM_PROCESSES}" "${JAX_PROCESS_ID:?set JAX_PROCESS_ID}"
  DISTRIBUTED=auto bash "$REPO_DIR/launch/worker.sh" "$MODE" "$@"
fi
