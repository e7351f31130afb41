#!/usr/bin/env bash
# Second device call: the pipeline's trainer (gpu_trainer_check.py) at the same effective batch of 16
# chats per optimiser step, split three ways, on one machine in one call so the rates compare:
#   4 x 4 (the report's and the full profile's), 16 x 1, and 16 x 1 with packing.
# Expects .gpu/carry/ as run_gpu_checks.sh does. A CPU smoke test: TINY=1 SITE=0 OUT=/tmp/x PY=.venv/bin/python
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu_sweep}
PY=${PY:-python3}
TINY=${TINY:+--tiny}
CARRY=.gpu/carry
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ "${SITE:-1}" = 1 ] && [ -f "$CARRY/site.tgz" ]; then
  tar xzf "$CARRY/site.tgz" -C /tmp && export PYTHONPATH=/tmp/site
fi
MODEL=/tmp/llama3b_random${TINY:+_tiny}
[ -f "$MODEL/config.json" ] || timeout 120 "$PY" benchmarks/gpu/bench_gpu_qlora.py $TINY --build-only --model-dir "$MODEL" \
  --tokenizer-from "$CARRY/tokenizer" > "$OUT/build.log" 2>&1
for variant in "4 4" "16 1" "16 1 --packing"; do
  set -- $variant
  name=b$1_a$2${3:+_packed}
  t0=$SECONDS
  timeout 110 "$PY" benchmarks/gpu/gpu_trainer_check.py $TINY --model-dir "$MODEL" --chats "$CARRY/chats.jsonl" \
    --batch "$1" --grad-accum "$2" ${3:-} --max-steps 8 --out "$OUT/trainer_$name.json" > "$OUT/trainer_$name.log" 2>&1
  echo "== $name: rc=$? in $((SECONDS - t0)) s" | tee -a "$OUT/steps.txt"
  grep -E '"(tokens_per_s|step_s_median|peak_memory_gb|tokens_per_step_mean)"' "$OUT/trainer_$name.json" 2>/dev/null
done
