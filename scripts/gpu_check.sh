#!/usr/bin/env bash
# GPU checks in one go, for a machine with a CUDA GPU and mtml's packages importable:
#   1. tests/test_cuda.py (CPU/GPU gradient agreement, every kind trained on cuda, resume);
#   2. `mtml benchmark` of the default params and the three embedded presets on cuda;
#   2b. `mtml benchmark --compare` (issue 17): training.task_parallel loop vs vmap and
#      evaluation.episode_batch 1 (the loop) vs batches, interleaved, for meta-batch 4 and 32
#      at 28x28 and 84x84 (tests/test_parallel.py, vmap against the loop, runs on cuda first);
#   3. the embedded default pipeline (params.yaml) on cuda, methods trained side by side,
#      in a scratch copy, with wall times per stage.
# Results go to $OUT (default: gpu-check/). Each step has its own time limit so a slow one
# cannot starve the rest; a step that fails is reported and the next one still runs.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
log() { echo "== $(date +%T) $*"; }

log "device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
$PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'

log "tests/test_cuda.py"
timeout "${TEST_LIMIT:-240}" $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/test_cuda.log"

log "benchmarks"
for p in params.yaml configs/task_attention.yaml configs/multimodal.yaml; do
  name=$(basename "$p" .yaml)
  timeout "${BENCH_LIMIT:-90}" $PY -m mtml benchmark --params "$p" --threads 1 --iterations 20 --episodes 50 \
    --out "$OUT/bench-$name.json" 2>&1 | tee "$OUT/bench-$name.log"
done

log "speed options (task_parallel, episode_batch) on cuda"
MTML_TEST_DEVICE=cuda timeout "${TEST_LIMIT:-240}" $PY -m pytest -q -p no:cacheprovider tests/test_parallel.py 2>&1 | tee "$OUT/test_parallel.log"
for size in 28 84; do
  for mb in 4 32; do
    timeout "${BENCH_LIMIT:-90}" $PY -m mtml benchmark --compare --threads 1 --image-size $size --meta-batch $mb \
      --iterations 5 --episodes 128 --eval-batches 1,16,64,128 --repeats 5 \
      --out "$OUT/compare-${size}px-mb$mb.json" 2>&1 | tee "$OUT/compare-${size}px-mb$mb.log"
  done
done

log "default pipeline on cuda"
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
RUN
(cd "$work" && PY=$PY PYTHONPATH="${PYTHONPATH:-}:$REPO/src" \
  timeout "${PIPELINE_LIMIT:-300}" bash run.sh) 2>&1 | tee "$OUT/default_pipeline.log"
cp "$work/metrics/default/summary.md" "$work/metrics/default/summary.json" "$OUT/" 2>/dev/null
log "done"
