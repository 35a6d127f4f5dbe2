#!/usr/bin/env bash
# GPU checks in one go, for a machine with a CUDA GPU and mtml's packages importable
# (learn2learn too for the comparisons: scripts/build_learn2learn.sh). Steps, most important
# first, each under its own time limit inside an overall budget (BUDGET seconds, default 520),
# so a slow step cannot starve the rest; a step that fails is reported and the next one runs:
#   1. `mtml benchmark --compare` at the issue's target setting (meta-batch 32, 28x28):
#      task_parallel loop vs vmap, episode batches, numerics reference/tf32/bf16 (mtml.speed);
#   2. `mtml benchmark --against learn2learn` at meta-batch 32 and 4, 28x28;
#   3. the CUDA tests: tests/test_cuda.py, and test_parallel.py + test_speed_numerics.py
#      with MTML_TEST_DEVICE=cuda (batched paths against the loop, bf16 gradients, on the GPU);
#   4. --compare and --against at 84x84 (meta-batch 32 and 4) and 28x28 meta-batch 4;
#   5. scripts/bench_kernels.py: channels_last, TF32, bf16 and torch.compile for Conv-4;
#   6. `mtml benchmark` of the default params on cuda;
#   7. the embedded default pipeline on cuda (methods side by side), wall time per stage.
# Logs and JSON go to RESULTS (default gpu-check/); summary.log has one line per step.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
RESULTS=${RESULTS:-gpu-check}
mkdir -p "$RESULTS"
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-520}
START=$(date +%s)
export PYTHONUNBUFFERED=1
left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# step NAME CAP COMMAND...: run COMMAND with at most CAP seconds (less when the budget is short)
step() {
  local name=$1 cap=$2 l t0 rc
  shift 2
  l=$(left)
  if (( l < 25 )); then echo "== skip $name: budget spent" | tee -a "$RESULTS/summary.log"; return; fi
  (( cap > l - 5 )) && cap=$(( l - 5 ))
  echo "== $(date +%T) $name (limit ${cap}s)"
  t0=$(date +%s)
  timeout "$cap" "$@" > "$RESULTS/$name.log" 2>&1
  rc=$?
  echo "== $name rc=$rc $(( $(date +%s) - t0 ))s" | tee -a "$RESULTS/summary.log"
  grep -v -i -E "gym|warn|^\s*$" "$RESULTS/$name.log" | tail -n "${TAIL:-12}"
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
} 2>&1 | tee "$RESULTS/device.log"

BENCH=("$PY" -m mtml benchmark --threads 1)
compare() {  # compare SIZE META_BATCH [CAP]; 84x84 episodes take ~10x the memory: smaller batches
  local eval="--episodes 256 --eval-batches 1,64,256"
  (( $1 > 28 )) && eval="--episodes 128 --eval-batches 1,16,64"
  step "compare-${1}px-mb$2" "${3:-90}" "${BENCH[@]}" --compare --image-size "$1" --meta-batch "$2" \
    --iterations 3 $eval --repeats 3 --numerics reference,tf32,bf16 --out "$RESULTS/compare-${1}px-mb$2.json"
}
against() {  # against SIZE META_BATCH
  step "l2l-${1}px-mb$2" "${3:-60}" "${BENCH[@]}" --against learn2learn --image-size "$1" --meta-batch "$2" \
    --iterations 3 --episodes 32 --repeats 3 --out "$RESULTS/l2l-${1}px-mb$2.json"
}

compare 28 32 120
against 28 32
against 28 4
step tests-cuda 150 env MTML_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider -x \
  tests/test_cuda.py tests/test_parallel.py tests/test_speed_numerics.py
compare 84 32
against 84 32
compare 28 4 60
against 84 4 45
compare 84 4 60
step kernels 120 "$PY" scripts/bench_kernels.py --device cuda --episodes 128 --repeats 10 \
  --out "$RESULTS/kernels.json"
step bench-default 60 "${BENCH[@]}" --params params.yaml --iterations 20 --episodes 50 \
  --out "$RESULTS/bench-default.json"

work=$(mktemp -d)
cp params.yaml "$work/"
cat > "$work/run.sh" <<'RUN'
set -u
t0=$(date +%s)
for d in glyphs glyphs-shifted; do $PY -m mtml prepare --dataset $d; done
$PY -m mtml episodes --experiment glyphs-5w1s
t1=$(date +%s)
methods=$($PY -c 'import yaml; print(" ".join(yaml.safe_load(open("params.yaml"))["methods"]))')
for m in $methods; do $PY -m mtml train --experiment glyphs-5w1s --method "$m" > "train-$m.log" 2>&1 & done
wait
t2=$(date +%s)
for m in $methods; do $PY -m mtml evaluate --experiment glyphs-5w1s --method "$m" > "eval-$m.log" 2>&1 & done
wait
t3=$(date +%s)
$PY -m mtml aggregate
echo "wall seconds: prepare+episodes $((t1 - t0)), train (side by side) $((t2 - t1)), evaluate $((t3 - t2)), total $((t3 - t0))"
tail -n 2 train-*.log eval-*.log
cat metrics/default/summary.md
RUN
TAIL=30 step default-pipeline 300 env PY="$PY" PYTHONPATH="${PYTHONPATH:-}:$REPO/src" bash -c "cd '$work' && bash run.sh"
echo "== done in $(( $(date +%s) - START ))s"
