#!/usr/bin/env bash
# Every benchmark in one go on an accelerator host: speed first (alone on the chip), then the
# reduced-resolution accuracy runs side by side. Each part has a time cap so one slow part cannot
# take the others' results with it; results and logs go to $OUT (one tarball + the log).
#
#   DATA_ROOT=../shared/data TFDS_DIR=~/tensorflow_datasets OUT=/tmp/suite bench/accelerator_suite.sh
#
# DATA_ROOT holds aptos2019_224/images (32 real APTOS images are enough for the speed benches).
# TFDS_DIR holds the 64 px builds of aptos2019 and isic2018 (diffmic_64, grouped_64), made with
# `python -m diffmic_jax.main --config=configs/reduced.py:aptos --mode=prepare ...` beforehand.
# OFFICIAL_DIR (optional) is a checkout of the official PyTorch code for bench/official_speed.py.
# ACC_EPOCHS overrides the joint epochs of configs/reduced.py (default: the config's); ACC_SCHEMES
# picks the splits (default "diffmic grouped"); ACC_CAP caps each accuracy bench (s); SUITE_BUDGET
# (s) shortens that cap so the whole suite ends, packed, inside a job's time limit.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${DATA_ROOT:?}" "${TFDS_DIR:?}" "${OUT:?}"
R="$OUT/results"; mkdir -p "$R"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
part() {  # part SECONDS NAME CMD...: run with a cap, say how it ended.
  local cap=$1 name=$2; shift 2
  local t0=$SECONDS
  echo "=== $name (cap ${cap}s)"
  timeout "$cap" "$@" > "$R/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$R/$name.log"
  echo "=== $name: exit $rc after $((SECONDS - t0)) s"
}

"$PY" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null

part 110 train_speed_resnet50 "$PY" bench/train_speed.py --dcg_backbone=resnet50 --steps=5 \
  --data_root="$DATA_ROOT" --out="$R/train_speed_resnet50.json"
part 60 train_speed_resnet50_bf16 "$PY" bench/train_speed.py --dcg_backbone=resnet50 --steps=5 \
  --dtype=bfloat16 --noparts --data_root="$DATA_ROOT" --out="$R/train_speed_resnet50_bfloat16.json"
part 55 train_speed_resnet18 "$PY" bench/train_speed.py --dcg_backbone=resnet18 --steps=5 \
  --noparts --data_root="$DATA_ROOT" --out="$R/train_speed_resnet18.json"
part 90 sampling_speed "$PY" bench/sampling_speed.py --repeats=3 --data_root="$DATA_ROOT" \
  --out="$R/sampling_speed.json"
# conv.py's matmul forms were chosen on CPU; this shows whether they cost anything here.
part 60 conv_kernels "$PY" bench/conv_kernels.py --out="$R/conv_kernels.json"
if [ -n "${OFFICIAL_DIR:-}" ]; then
  part 120 official_speed "$PY" bench/official_speed.py --official_dir="$OFFICIAL_DIR" \
    --data_root="$DATA_ROOT" --out="$R/official_speed.json"
fi

# Accuracy: the benches (3 seeds each) share the chip; each process allocates GPU memory as it needs it.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
epochs=()
[ -n "${ACC_EPOCHS:-}" ] && epochs=(--config.train.epochs="$ACC_EPOCHS")
t0=$SECONDS
cap=${ACC_CAP:-300}
left=$(( ${SUITE_BUDGET:-100000} - SECONDS - 15 ))
[ "$left" -lt "$cap" ] && cap=$left
echo "=== accuracy (cap ${cap}s each)"
for ds in aptos isic; do
  for scheme in ${ACC_SCHEMES:-diffmic grouped}; do
    timeout "$cap" "$PY" bench/accuracy.py --config=configs/reduced.py:$ds --seeds=0,1,2 \
      --parallel=3 --workdir="$OUT/work/${ds}_$scheme" --out="$R/accuracy_${ds}64_$scheme.json" \
      --config.data.data_dir="$TFDS_DIR" --config.data.builder_config=$scheme "${epochs[@]}" \
      > "$R/accuracy_${ds}64_$scheme.log" 2>&1 &
  done
done
wait
echo "=== accuracy: $((SECONDS - t0)) s"
for f in "$R"/accuracy_*.log; do echo "--- $f"; tail -n 12 "$f"; done
for d in "$OUT"/work/*/; do
  for l in "$d"seed*.log; do cp "$l" "$R/$(basename "$d")_$(basename "$l")" 2>/dev/null; done
  for s in "$d"seed*/; do  # A seed that finished keeps its report even if its bench was capped.
    cp "${s}metrics.jsonl" "$R/$(basename "$d")_$(basename "$s")_metrics.jsonl" 2>/dev/null
    cp "${s}reports/test.json" "$R/$(basename "$d")_$(basename "$s")_test.json" 2>/dev/null
  done
done
# Does the diffusion use its own view of the image (validation split)? Each finished run, if time is left.
for ds in aptos isic; do
  for scheme in ${ACC_SCHEMES:-diffmic grouped}; do
    w="$OUT/work/${ds}_$scheme"
    left=$(( ${SUITE_BUDGET:-100000} - SECONDS - 15 ))
    [ -d "$w" ] && [ "$left" -ge 60 ] || continue
    part $(( left < 120 ? left : 120 )) "diffusion_vs_dcg_${ds}64_$scheme" "$PY" bench/diffusion_vs_dcg.py \
      --config=configs/reduced.py:$ds --workdir="$w" --seeds=0,1,2 --config.eval.num_samples=16 \
      --config.data.data_dir="$TFDS_DIR" --config.data.builder_config=$scheme \
      ${ACC_EPOCHS:+--config.train.epochs="$ACC_EPOCHS"} --out="$R/diffusion_vs_dcg_${ds}64_$scheme.json"
  done
done
tar -czf "$OUT/results.tar.gz" -C "$OUT" results
rm -rf "$OUT/work"
