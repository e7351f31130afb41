#!/usr/bin/env bash
# Everything the GPU machine runs, in one call (see README.md beside this file):
#   1. unpack the carried packages (unsloth, trl, bitsandbytes, datasets, ...) and print versions;
#   2. build one random-weight Llama-3.2-3B-shaped model folder with SmolLM2's tokenizer;
#   3. the pipeline's own trainer on it (gpu_trainer_check.py): 4-bit QLoRA, real chats;
#   4. the evaluation's path (gpu_eval_check.py): base + that adapter, batched generation;
#   5. the stack benchmark (bench_gpu_qlora.py): Unsloth vs transformers + PEFT + bitsandbytes.
# Each step has its own time limit, so one that hangs leaves time for the rest; logs and JSON land
# in $OUT. Expects .gpu/carry/{site.tgz,tokenizer/,chats.jsonl}. A CPU smoke test
# of the script (2-layer model, ~2 min): TINY=1 SITE=0 OUT=/tmp/x PY=.venv/bin/python bash benchmarks/gpu/run_gpu_checks.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu_checks}
source "$(dirname "$0")/common.sh"
rm -rf "$MODEL"

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  timeout 90 "$PY" -c "
import torch, unsloth, bitsandbytes, trl, peft, datasets, transformers
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')
print('unsloth', unsloth.__version__, 'trl', trl.__version__, 'peft', peft.__version__, 'bitsandbytes', bitsandbytes.__version__,
      'transformers', transformers.__version__, 'datasets', datasets.__version__)"
  echo "imports rc=$?"
} 2>&1 | tee "$OUT/env.txt"

step build 120 "${BUILD_MODEL[@]}"
step trainer 160 "$PY" benchmarks/gpu/gpu_trainer_check.py $TINY --model-dir "$MODEL" --chats "$CARRY/chats.jsonl" \
  --keep-adapter /tmp/gpu_adapter --out "$OUT/gpu_trainer_check.json"
step eval 90 "$PY" benchmarks/gpu/gpu_eval_check.py --model-dir "$MODEL" --adapter /tmp/gpu_adapter \
  --chats "$CARRY/chats.jsonl" --out "$OUT/gpu_eval_check.json"
step bench 240 "$PY" benchmarks/gpu/bench_gpu_qlora.py $TINY --model-dir "$MODEL" --steps 8 --warmup 3 --child-timeout 120 \
  --out "$OUT/bench_gpu_qlora.json"
ls -la "$OUT"
