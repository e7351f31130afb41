#!/usr/bin/env bash
# Third device call(s): the questions the first two left open, on one machine per call.
#   chats:   both stacks (Unsloth, transformers + PEFT + bitsandbytes) on real chats rather than full
#            rows of random ids: batch 16 (the full profile's micro-batch), each batch padded to its
#            longest chat.
#   ckpt:    the stack benchmark's full rows (4 x 1024) under Unsloth's offloaded gradient checkpointing
#            ("unsloth"), the standard recompute ("true") and none ("false").
#   trainer: the pipeline's trainer (gpu_trainer_check.py) at the full profile's shape (16 x 1) on chats
#            that fill 2048 tokens, under each TrainingHyperparams.gradient_checkpointing setting.
#   merge:   evaluation decoding with the LoRA merged into the base weights against unmerged
#            (gpu_merge_decode.py; bf16, 16 questions, batch 8, 64 new tokens).
#   precision: load_model's float32 merge rounded once against PEFT's bf16 merge and the LoRA beside the
#            base, each against a float32 reference (gpu_merge_precision.py), with load cost and decoding.
# PARTS chooses which run (default: the first four). Expects .gpu/carry/ as run_gpu_checks.sh does.
# A CPU smoke test: TINY=1 SITE=0 OUT=/tmp/x PY=.venv/bin/python
set -uo pipefail
OUT=${OUT:-/tmp/gpu_followups}
PARTS=${PARTS:-chats ckpt trainer merge}
source "$(dirname "$0")/common.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
[ -f "$MODEL/config.json" ] || step build 150 "${BUILD_MODEL[@]}"
if [[ " $PARTS " == *" chats "* ]]; then
  step chats 260 "$PY" benchmarks/gpu/bench_gpu_qlora.py $TINY --model-dir "$MODEL" --chats "$CARRY/chats.jsonl" \
    --batch 16 --seq-len 2048 --steps 8 --warmup 3 --child-timeout 120 --out "$OUT/bench_chats.json"
fi
if [[ " $PARTS " == *" ckpt "* ]]; then
  for mode in unsloth true false; do
    step "ckpt_$mode" 110 "$PY" benchmarks/gpu/bench_gpu_qlora.py $TINY --model-dir "$MODEL" --stacks unsloth \
      --checkpointing "$mode" --steps 8 --warmup 3 --child-timeout 100 --out "$OUT/bench_ckpt_$mode.json"
  done
fi
if [[ " $PARTS " == *" trainer "* ]]; then
  for mode in unsloth recompute off; do
    step "trainer_$mode" 130 "$PY" benchmarks/gpu/gpu_trainer_check.py $TINY --model-dir "$MODEL" \
      --chats "$CARRY/long_chats.jsonl" --n-chats 128 --max-seq-length 2048 --batch 16 --grad-accum 1 \
      --max-steps 4 --warmup 1 --checkpointing "$mode" --out "$OUT/trainer_$mode.json"
    grep -E '"(tokens_per_s|step_s_median|peak_memory_gb)"' "$OUT/trainer_$mode.json" 2>/dev/null
  done
fi
if [[ " $PARTS " == *" merge "* ]]; then
  step merge 150 "$PY" benchmarks/gpu/gpu_merge_decode.py --model-dir "$MODEL" --chats "$CARRY/chats.jsonl" \
    ${TINY:+--n-questions 4 --batch-size 2 --max-new-tokens 8} --out "$OUT/merge_decode.json"
fi
if [[ " $PARTS " == *" precision "* ]]; then
  step precision 300 "$PY" benchmarks/gpu/gpu_merge_precision.py --model-dir "$MODEL" --chats "$CARRY/chats.jsonl" \
    ${TINY:+--n-rows 8 --n-questions 4 --batch-size 2 --max-new-tokens 8} --out "$OUT/merge_precision.json"
fi
ls -la "$OUT"
