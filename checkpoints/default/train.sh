#!/usr/bin/env bash
# Reproduces checkpoints/default: tokenizer, transformer (VARiant supernet) and evaluator.
# Usage: bash checkpoints/default/train.sh [RUN_DIR] [DEVICE]    (DEVICE: cuda or cpu)
# SCALE (env, default 1) multiplies every step count, e.g. SCALE=0.002 for a smoke run.
set -euo pipefail
RUN=${1:-runs/default}
DEVICE=${2:-cuda}
SCALE=${SCALE:-1}
WORKERS=${WORKERS:-4}
PY=${PYTHON:-python3}
steps() { "$PY" -c "import sys; print(max(2, int($1 * float(sys.argv[1]))))" "$SCALE"; }
VE="$PY -m var_engine.cli"
mkdir -p "$RUN"

# 1) evaluator (independent of the generator; trains beside the tokenizer)
$VE train-evaluator --out "$RUN/model" --device "$DEVICE" --workers "$WORKERS" \
  --steps "$(steps 3000)" --batch-size 256 --lr 2e-3 --warmup-steps 100 --log-every 250 \
  --ckpt-every 1000 --save-dtype float16 --no-progress > "$RUN/evaluator.log" 2>&1 &
EVAL_PID=$!

T0=$SECONDS
# 2) tokenizer: 32x32 -> 8x8 latent, 512 codes, 7 scales (155 tokens)
$VE train-tokenizer --out "$RUN/tokenizer" --device "$DEVICE" --workers "$WORKERS" \
  --patch-nums 1,2,3,4,5,6,8 --vocab-size 512 --z-channels 16 --ch 32 --ch-mult 1,2,2 \
  --num-res-blocks 1 --norm-groups 16 \
  --steps "$(steps 5000)" --batch-size 128 --lr 2e-3 --warmup-steps 200 --eval-every 1000 \
  --ckpt-every 1000 --log-every 100 --no-progress

echo "tokenizer: $((SECONDS - T0)) s"
T1=$SECONDS
# 3) transformer: depth 8, width 128, as a VARiant supernet (subnets 4 and 2, progressive schedule)
$VE train --tokenizer "$RUN/tokenizer" --out "$RUN/model" --device "$DEVICE" \
  --depth 8 --width 128 --heads 4 --augment-copies 4 \
  --supernet --depths 4,2 --switch-scales 3,4,5 --schedule progressive \
  --steps "$(steps 3000)" --batch-size 256 --lr 1.5e-3 --warmup-steps 300 --ema 0.998 \
  --eval-every 1500 --ckpt-every 1000 --log-every 100 --save-dtype float16 --no-progress

echo "transformer: $((SECONDS - T1)) s"
wait $EVAL_PID
mkdir -p "$RUN/model_distilled"
cp "$RUN/model/evaluator."* "$RUN/model_distilled/"   # the evaluator travels with the final model
T2=$SECONDS
# 4) supernet fine-tune with in-place distillation (subnets learn the full network's distribution);
#    the shipped weights ran this stage on 2 CPU cores with --threads 1 (about 45 minutes)
$VE train --tokenizer "$RUN/tokenizer" --init-from "$RUN/model" --out "$RUN/model_distilled" --device "$DEVICE" \
  --supernet --depths 4,2 --switch-scales 3,4,5 --schedule fixed:0.6 --distill 1.0 \
  --steps "$(steps 700)" --batch-size 64 --lr 2e-4 --warmup-steps 50 --ema 0.995 --augment-copies 4 \
  --eval-every 350 --ckpt-every 50 --log-every 25 --save-dtype float16 --no-progress

echo "distillation fine-tune: $((SECONDS - T2)) s"
mkdir -p "$RUN/model_final"
cp "$RUN/model/evaluator."* "$RUN/model_final/"
T3=$SECONDS
# 5) a second distillation round that draws depth 4 and switch scale 4 twice as often (the shipped
#    weights ran it on 2 CPU cores with --threads 1, 46 minutes)
$VE train --tokenizer "$RUN/tokenizer" --init-from "$RUN/model_distilled" --out "$RUN/model_final" --device "$DEVICE" \
  --supernet --depths 4,4,2 --switch-scales 3,4,4,5 --schedule fixed:0.6 --distill 1.0 \
  --steps "$(steps 1000)" --batch-size 64 --lr 1.5e-4 --warmup-steps 50 --ema 0.998 --augment-copies 4 \
  --eval-every 500 --ckpt-every 50 --log-every 25 --save-dtype float16 --no-progress

echo "second distillation fine-tune: $((SECONDS - T3)) s"
# 6) the decode-free search reward: a classifier on the tokenizer's partial latents at every scale
$VE train-latent-reward --tokenizer "$RUN/tokenizer" --out "$RUN/model_final" --device "$DEVICE" \
  --steps "$(steps 1500)" --batch-size 256 --lr 2e-3 --save-dtype float16 --no-progress
echo "total: $((SECONDS - T0)) s"
rm -f "$RUN/model/train_state.pt" "$RUN/model/evaluator_run/train_state.pt" "$RUN/model_distilled/train_state.pt" \
  "$RUN/model_final/train_state.pt" "$RUN/model_final/latent_reward_run/train_state.pt"
echo "model written to $RUN/model_final"
