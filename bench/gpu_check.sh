#!/usr/bin/env bash
# The GPU checks in one run (about 8 minutes on an H100/H200): the GPU tests, the sampler's GPU
# mode (runners x precisions vs the physical floor) and, given an official checkout in
# $OFFICIAL_DIR (default .official), the side-by-side with the official code.
# Results (JSON + markdown + logs) go to $OUT (default bench/results/gpu).
#
#   OUT=bench/results/gpu OFFICIAL_DIR=../VAR bash bench/gpu_check.sh
set -u
OUT=${OUT:-bench/results/gpu}
OFFICIAL_DIR=${OFFICIAL_DIR:-.official}
mkdir -p "$OUT"
export VAR_ENGINE_BENCH_RESULTS="$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
log() { echo "== $(date +%T) $*" | tee -a "$OUT/gpu_check.log"; }
step() {  # step SECONDS NAME CMD...: run with a time limit, keep going on failure
  local limit=$1 name=$2; shift 2
  log "$name"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  log "$name exit $?"
  tail -n 30 "$OUT/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/device.txt"

step 150 tests python -m pytest -q -rs tests/test_runners.py
step 200 sampler_bf16 python -m bench.sampler --device cuda --models d16,d20,d30 --batches 1,8,64 \
  --precision bf16 --runners eager,cuda-graphs --repeats 3 --out-name sampler_gpu_bf16
step 90 sampler_fp32 python -m bench.sampler --device cuda --models d16 --batches 1,8,64 \
  --precision fp32 --runners eager,cuda-graphs --repeats 3 --out-name sampler_gpu_fp32
if [ -f "$OFFICIAL_DIR/models/var.py" ]; then
  step 120 official_bf16 python -m bench.official --official-dir "$OFFICIAL_DIR" --model d16 --device cuda \
    --precision bf16 --runner cuda-graphs --batches 1,8,64 --repeats 3
else
  log "no official checkout at $OFFICIAL_DIR: side-by-side skipped"
fi
step 150 sampler_compile python -m bench.sampler --device cuda --models d16 --batches 1,64 --precision bf16 \
  --runners eager,compile --compile-mode reduce-overhead --no-reference --repeats 3 --out-name sampler_gpu_compile
log done
