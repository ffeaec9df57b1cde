#!/usr/bin/env bash
# The GPU checks in one run (about 5 minutes on an H200, plus the optional parts): the CUDA tests,
# the side by side with the official code (given a checkout in $OFFICIAL_DIR, default .official),
# the sampler's GPU mode (runners vs the physical floor, eager top ops), the decoder's settings with
# the profiler's top ops, torch.compile per block, the VARiant depth plans' speed and KV (default model
# at batch 256 and d16, CUDA graphs, fast draw; no quality); with WITH_COMPILE=1 also whole steps under
# 'reduce-overhead' (VAR-d16 took over 150 s to compile that way on an H200), and with FRONTIER_STEPS
# set, the supernet schedule frontier at that many steps (FRONTIER_SCHEDULES picks the schedules; with
# FRONTIER_RESUME=1 those already in bench/results/supernet_frontier.json are not trained again).
# Results (JSON + markdown + logs) go to $OUT (default bench/results/gpu); with ARCHIVE=path.tgz
# they are also packed into one archive after every step, so a run cut short keeps what finished.
#
#   OUT=bench/results/gpu OFFICIAL_DIR=../VAR bash bench/gpu_check.sh
#   FRONTIER_STEPS=1000 WITH_COMPILE=1 bash bench/gpu_check.sh
#   FRONTIER_STEPS=1000 FRONTIER_RESUME=1 bash bench/gpu_check.sh   # adds progressive:0.2,0.7,0.1 only
set -u
OUT=${OUT:-bench/results/gpu}
OFFICIAL_DIR=${OFFICIAL_DIR:-.official}
ARCHIVE=${ARCHIVE:-}
mkdir -p "$OUT"
export VAR_ENGINE_BENCH_RESULTS="$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
log() { echo "== $(date +%T) $*" | tee -a "$OUT/gpu_check.log"; }
pack() { if [ -n "$ARCHIVE" ]; then tar czf "$ARCHIVE" -C "$(dirname "$OUT")" "$(basename "$OUT")"; fi; }
step() {  # step SECONDS NAME CMD...: run with a time limit, keep going on failure
  local limit=$1 name=$2; shift 2
  log "$name"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  log "$name exit $?"
  tail -n 30 "$OUT/$name.log"
  pack
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/device.txt"

step 120 tests python -m pytest -q -rs tests/test_runners.py -k "cuda or bf16"
if [ -f "$OFFICIAL_DIR/models/var.py" ]; then
  step 120 official_bf16 python -m bench.official --official-dir "$OFFICIAL_DIR" --model d16 --device cuda \
    --precision bf16 --runner cuda-graphs --batches 1,8,64 --repeats 3
else
  log "no official checkout at $OFFICIAL_DIR: side-by-side skipped"
fi
step 180 sampler_bf16 python -m bench.sampler --device cuda --models d16,d20,d30 --batches 1,8,64 \
  --precision bf16 --runners eager,cuda-graphs --no-reference --repeats 3 --profile --out-name sampler_gpu_bf16
step 90 sampler_fp32 python -m bench.sampler --device cuda --models d16 --batches 1,64 \
  --precision fp32 --runners eager,cuda-graphs --repeats 3 --out-name sampler_gpu_fp32
step 180 decoder python -m bench.decoder --device cuda --models d16 --batches 1,64 --precisions bf16,fp32 \
  --repeats 3 --profile --out-name decoder_gpu
step 90 draw python -m bench.draw --device cuda --models d16 --layout-batches 1,64 --precision bf16 \
  --per-class 0 --repeats 3 --out-name draw_gpu
step 180 sampler_compile python -m bench.sampler --device cuda --models d16 --batches 1,64 --precision bf16 \
  --runners eager,cuda-graphs,compile --compile-granularity block --no-reference --repeats 3 \
  --out-name sampler_gpu_compile_block
step 240 variant python -m bench.variant --device cuda --models default,d16 --runner cuda-graphs --draw fast \
  --batch 256 --per-class 0 --repeats 5 --out-name variant_gpu
if [ -n "${WITH_COMPILE:-}" ]; then
  step 600 sampler_compile_graphs python -m bench.sampler --device cuda --models d16 --batches 1 --precision bf16 \
    --runners eager,compile --compile-mode reduce-overhead --compile-granularity step --no-reference --repeats 3 \
    --out-name sampler_gpu_compile_graphs
fi
if [ -n "${FRONTIER_STEPS:-}" ]; then
  # with FRONTIER_RESUME=1 the committed table is copied first: schedules it already holds with the
  # same settings are skipped, so only new ones train (about 50 s each at 1,000 steps on an H200)
  if [ -n "${FRONTIER_RESUME:-}" ] && [ -f bench/results/supernet_frontier.json ]; then
    cp bench/results/supernet_frontier.json "$OUT/"
  fi
  step "${FRONTIER_SECONDS:-1800}" frontier python -m bench.supernet_frontier --device cuda --steps "$FRONTIER_STEPS" \
    --per-class "${FRONTIER_PER_CLASS:-100}" \
    --schedules "${FRONTIER_SCHEDULES:-progressive,fixed:0.5,fixed:0.2,fixed:0.8,progressive+distill,progressive:0.2,0.7,0.1}"
fi
log done
pack
