"""The evaluation's model path on a GPU: base + trained adapter through ``load_model``, batched generation.

Runs in its own process without Unsloth, as the evaluation asset does. It loads the base model
(bf16 on CUDA) and the adapter that ``gpu_trainer_check.py --keep-adapter`` wrote, with the same
base-hash and shape checks the evaluation applies, then times ``generate_answers`` (greedy, left
padding) on questions from the chat dataset. With random weights the answers are noise and rarely
stop early. Reported: positions generated (batch rows x new tokens of each ``generate`` call, the
work the GPU did) per second.

    python benchmarks/gpu/gpu_eval_check.py --model-dir /tmp/model --adapter /tmp/adapter \\
        --chats chats.jsonl --out eval_check.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for cv_pipeline

import torch

from cv_pipeline.evaluation.evaluator import generate_answers, load_model


def read_questions(chats: Path, n: int) -> list[str]:
    """The first user turns of a chat_dataset JSONL."""
    questions = []
    with chats.open(encoding="utf-8") as fh:
        for line in fh:
            questions.append(json.loads(line)["messages"][0]["content"])
            if len(questions) == n:
                break
    return questions


def timed_generation(model, tok, questions: list[str], batch_size: int, max_new_tokens: int) -> dict:
    """``generate_answers`` after a warm-up call, timed; counts the positions every ``generate`` call made."""
    cuda = next(model.parameters()).is_cuda
    generate_answers(model, tok, questions[:batch_size], max_new_tokens=4, batch_size=batch_size)  # warm-up
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    steps: list[tuple[int, int]] = []  # (batch rows, new positions) of every generate call
    generate = model.generate

    def counting_generate(*a, **kw):
        out = generate(*a, **kw)
        steps.append((out.shape[0], out.shape[1] - kw["input_ids"].shape[1]))
        return out

    model.generate = counting_generate
    try:
        t0 = time.perf_counter()
        answers = generate_answers(model, tok, questions, max_new_tokens=max_new_tokens, batch_size=batch_size)
        if cuda:
            torch.cuda.synchronize()
        gen_s = time.perf_counter() - t0
    finally:
        del model.generate  # back to the class's method
    positions = sum(rows * width for rows, width in steps)
    return {
        "answers": answers, "generate_s": round(gen_s, 2), "generated_positions": positions,
        "generated_positions_per_s": round(positions / gen_s, 1), "decode_steps": [w for _, w in steps],
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 1024**3, 2) if cuda else None,
    }


def decoding_parser(description: str) -> argparse.ArgumentParser:
    """The options every decoding check takes: model folder, questions, batch shape, device, output."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--chats", type=Path, required=True, help="chat_dataset JSONL; its user turns are the questions")
    ap.add_argument("--n-questions", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, required=True)
    return ap


def main() -> None:
    ap = decoding_parser(__doc__)
    ap.add_argument("--adapter", type=Path, required=True)
    args = ap.parse_args()

    questions = read_questions(args.chats, args.n_questions)
    t0 = time.perf_counter()
    model, tok = load_model(args.model_dir, args.adapter, args.device)
    load_s = time.perf_counter() - t0
    cuda = next(model.parameters()).is_cuda
    timed = timed_generation(model, tok, questions, args.batch_size, args.max_new_tokens)
    answers = timed.pop("answers")
    result = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "adapter_loaded": type(model).__name__, "load_s": round(load_s, 1),
        "questions": len(questions), "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
        **timed,
        "all_answers_text": all(isinstance(a, str) for a in answers), "first_answer_head": answers[0][:80],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
