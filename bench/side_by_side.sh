#!/bin/bash
# The official code and this port timed in one window, one process at a time: the official
# training and test iterations, then the port's steps three times with glibc keeping freed memory
# (the default of cpu_tuning) and three times with glibc's defaults, alternated (peak RSS varies
# from run to run), one run with model.remat=blocks, and the 60-step chain; with PYTHON_NEXT (an
# interpreter with a newer JAX, e.g. Python 3.12 and JAX 0.12) the steps twice and the chain again.
# Each line of the log carries the load average, since other work on the host slows both codes.
#
#   OFFICIAL_DIR=.official [PYTHON=python] [PYTHON_NEXT=...] [OFFICIAL_PYTHONPATH=...] \
#     [OUT=bench/results/side_by_side] bench/side_by_side.sh
#
# OFFICIAL_PYTHONPATH: where torch's interpreter finds torchvision and timm for the official code.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=${OUT:-bench/results/side_by_side}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
load() { echo "$(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || true) load: $(cut -d' ' -f1-3 /proc/loadavg)"; }
step() { "$1" bench/train_speed.py --dcg_backbone=resnet50 --steps=3 --noparts "${@:2}"; }

load
PYTHONPATH=$PYTHONPATH${OFFICIAL_PYTHONPATH:+:$OFFICIAL_PYTHONPATH} "$PYTHON" bench/official_speed.py \
  --device=cpu --steps=2 --official_dir="${OFFICIAL_DIR:?set OFFICIAL_DIR}" --out="$OUT/official_speed_cpu.json"
for i in 1 2 3; do
  load
  step "$PYTHON" --out="$OUT/train_speed_resnet50_run$i.json"
  load
  DIFFMIC_KEEP_FREED_MEMORY=0 step "$PYTHON" --out="$OUT/train_speed_resnet50_glibc_default_run$i.json"
done
load
step "$PYTHON" --remat=blocks --out="$OUT/train_speed_resnet50_remat_blocks.json"
load
"$PYTHON" bench/sampling_speed.py --chains=truncated_60 --norerun_encoder --repeats=3 \
  --out="$OUT/sampling_speed_truncated60.json"
if [[ -n "${PYTHON_NEXT:-}" ]]; then
  for i in 1 2; do
    load
    step "$PYTHON_NEXT" --out="$OUT/train_speed_resnet50_next_run$i.json"
  done
  load
  "$PYTHON_NEXT" bench/sampling_speed.py --chains=truncated_60 --norerun_encoder --repeats=3 \
    --out="$OUT/sampling_speed_truncated60_next.json"
fi
load
