#!/bin/bash
# The official code and this port timed in one window, one process at a time: the official
# training and test iterations, then three runs of the port's steps (peak RSS varies from run to
# run), one with model.remat=blocks, one with glibc's malloc defaults, and the 60-step chain.
# Each line of the log carries the load average, since other work on the host slows both codes.
#
#   OFFICIAL_DIR=.official [PYTHON=python] [OFFICIAL_PYTHONPATH=...] [OUT=bench/results/side_by_side] \
#     bench/side_by_side.sh
#
# OFFICIAL_PYTHONPATH: where torch's interpreter finds torchvision and timm for the official code.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=${OUT:-bench/results/side_by_side}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
load() { echo "$(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || true) load: $(cut -d' ' -f1-3 /proc/loadavg)"; }

load
PYTHONPATH=$PYTHONPATH${OFFICIAL_PYTHONPATH:+:$OFFICIAL_PYTHONPATH} "$PYTHON" bench/official_speed.py \
  --device=cpu --steps=2 --official_dir="${OFFICIAL_DIR:?set OFFICIAL_DIR}" --out="$OUT/official_speed_cpu.json"
for i in 1 2 3; do
  load
  "$PYTHON" bench/train_speed.py --dcg_backbone=resnet50 --steps=3 --noparts \
    --out="$OUT/train_speed_resnet50_run$i.json"
done
load
"$PYTHON" bench/train_speed.py --dcg_backbone=resnet50 --steps=3 --noparts --remat=blocks \
  --out="$OUT/train_speed_resnet50_remat_blocks.json"
load
DIFFMIC_KEEP_FREED_MEMORY=0 "$PYTHON" bench/train_speed.py --dcg_backbone=resnet50 --steps=3 \
  --noparts --out="$OUT/train_speed_resnet50_glibc_default.json"
load
"$PYTHON" bench/sampling_speed.py --chains=truncated_60 --norerun_encoder --repeats=3 \
  --out="$OUT/sampling_speed_truncated60.json"
load
