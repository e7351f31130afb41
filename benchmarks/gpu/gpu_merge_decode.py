"""Evaluation decoding with the LoRA adapter merged into the base weights, against unmerged.

Greedy decoding is launch-bound on a GPU: every new token runs 28 layers plus, unmerged, 196 LoRA
modules (two small matmuls each). ``merge_and_unload()`` folds each ``B @ A`` into its base weight,
so decoding runs the base model's kernels only. This times ``generate_answers`` both ways on the
same questions, in one process, with a LoRA of the trainer's shape (r=16 on the seven
projections) whose B matrices are random (a freshly initialised adapter has B = 0 and merging it
would change nothing), and reports how many greedy answers stayed the same (merging in bf16
rounds every merged weight once).

    python benchmarks/gpu/gpu_merge_decode.py --model-dir /tmp/model --chats chats.jsonl --out merge.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for cv_pipeline and benchmarks

import torch

from benchmarks.gpu.bench_gpu_qlora import TARGETS
from benchmarks.gpu.gpu_eval_check import (
    decoding_parser,
    read_questions,
    timed_generation,
)
from cv_pipeline.evaluation.evaluator import _prepare_tokenizer, resolve_device


def main() -> None:
    args = decoding_parser(__doc__).parse_args()

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(args.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    questions = read_questions(args.chats, args.n_questions)
    tok = AutoTokenizer.from_pretrained(args.model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=dtype, local_files_only=True)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, target_modules=TARGETS, init_lora_weights=False))
    model.to(dev).eval()
    tok = _prepare_tokenizer(tok, model)
    result: dict = {"device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
                    "questions": len(questions), "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens}
    with torch.inference_mode():
        result["unmerged"] = timed_generation(model, tok, questions, args.batch_size, args.max_new_tokens)
        t0 = time.perf_counter()
        model = model.merge_and_unload()
        result["merge_s"] = round(time.perf_counter() - t0, 2)
        result["merged"] = timed_generation(model, tok, questions, args.batch_size, args.max_new_tokens)
    before, after = result["unmerged"].pop("answers"), result["merged"].pop("answers")
    result["same_answers"] = sum(a == b for a, b in zip(before, after))
    result["merged_speedup"] = round(result["merged"]["generated_positions_per_s"]
                                     / result["unmerged"]["generated_positions_per_s"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
