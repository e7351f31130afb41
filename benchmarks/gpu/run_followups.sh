#!/usr/bin/env bash
# Third device call: the two questions the first two left open, on one machine in one call.
#   1. Both stacks (Unsloth, transformers + PEFT + bitsandbytes) on real chats rather than full rows of
#      random ids: batch 16 (the full profile's micro-batch), each batch padded to its longest chat.
#   2. Unsloth's offloaded gradient checkpointing ("unsloth") against the standard recompute ("true")
#      and none ("false"), on the stack benchmark's full rows (4 x 1024).
# Expects .gpu/carry/ as run_gpu_checks.sh does. A CPU smoke test: TINY=1 SITE=0 OUT=/tmp/x PY=.venv/bin/python
set -uo pipefail
OUT=${OUT:-/tmp/gpu_followups}
source "$(dirname "$0")/common.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
[ -f "$MODEL/config.json" ] || step build 150 "${BUILD_MODEL[@]}"
step chats 260 "$PY" benchmarks/gpu/bench_gpu_qlora.py $TINY --model-dir "$MODEL" --chats "$CARRY/chats.jsonl" \
  --batch 16 --seq-len 2048 --steps 8 --warmup 3 --child-timeout 120 --out "$OUT/bench_chats.json"
for mode in unsloth true false; do
  step "ckpt_$mode" 110 "$PY" benchmarks/gpu/bench_gpu_qlora.py $TINY --model-dir "$MODEL" --stacks unsloth \
    --checkpointing "$mode" --steps 8 --warmup 3 --child-timeout 100 --out "$OUT/bench_ckpt_$mode.json"
done
ls -la "$OUT"
