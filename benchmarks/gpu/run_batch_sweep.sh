#!/usr/bin/env bash
# Second device call: the pipeline's trainer (gpu_trainer_check.py) at the same effective batch of 16
# chats per optimiser step, split three ways, on one machine in one call so the rates compare:
#   4 x 4 (the report's), 16 x 1 (the full profile's since this sweep), and 16 x 1 with packing.
# Expects .gpu/carry/ as run_gpu_checks.sh does. A CPU smoke test: TINY=1 SITE=0 OUT=/tmp/x PY=.venv/bin/python
set -uo pipefail
OUT=${OUT:-/tmp/gpu_sweep}
source "$(dirname "$0")/common.sh"
[ -f "$MODEL/config.json" ] || timeout 120 "${BUILD_MODEL[@]}" > "$OUT/build.log" 2>&1
for variant in "4 4" "16 1" "16 1 --packing"; do
  set -- $variant
  name=b$1_a$2${3:+_packed}
  step "trainer_$name" 110 "$PY" benchmarks/gpu/gpu_trainer_check.py $TINY --model-dir "$MODEL" \
    --chats "$CARRY/chats.jsonl" --batch "$1" --grad-accum "$2" ${3:-} --max-steps 8 --out "$OUT/trainer_$name.json"
  grep -E '"(tokens_per_s|step_s_median|peak_memory_gb|tokens_per_step_mean)"' "$OUT/trainer_$name.json" 2>/dev/null
done
