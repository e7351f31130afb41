# Sourced by run_gpu_checks.sh and run_batch_sweep.sh (set OUT first): what both device calls share.
# TINY=1: a 2-layer model on the CPU (a smoke test of the scripts); SITE=0: use the installed packages
# instead of the carried .gpu/carry/site.tgz; PY: the Python to run.
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
PY=${PY:-python3}
TINY=${TINY:+--tiny}
CARRY=.gpu/carry
MODEL=/tmp/llama3b_random${TINY:+_tiny}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ "${SITE:-1}" = 1 ] && [ -f "$CARRY/site.tgz" ]; then
  tar xzf "$CARRY/site.tgz" -C /tmp && export PYTHONPATH=/tmp/site
fi
# The random-weight Llama-3.2-3B-shaped model with SmolLM2's tokenizer, written to $MODEL.
BUILD_MODEL=("$PY" benchmarks/gpu/bench_gpu_qlora.py $TINY --build-only --model-dir "$MODEL" --tokenizer-from "$CARRY/tokenizer")

step() {  # step NAME SECONDS CMD...: run with a time limit, log to $OUT/NAME.log, note rc and time in steps.txt
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > >(tee "$OUT/$name.log") 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$OUT/steps.txt"
}
