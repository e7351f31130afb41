"""Chats that fill ``--tokens`` tokens each: the worst case of the full profile's max_seq_length (2048).

Each chat keeps its question and repeats its answer until question + answer reach the length, so a
batch of them is as large as a batch can get once the trainer truncates to max_seq_length. Used for
the memory and throughput check of a batch shape (benchmarks/gpu/README.md).

    python benchmarks/gpu/make_long_chats.py --chats data/chat_dataset/train.jsonl \\
        --tokenizer data/models/base --out .gpu/carry/long_chats.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chats", type=Path, required=True, help="chat_dataset JSONL")
    ap.add_argument("--tokenizer", type=Path, required=True, help="folder with the tokenizer that counts tokens")
    ap.add_argument("--n", type=int, default=128, help="chats to write")
    ap.add_argument("--tokens", type=int, default=1950, help="least tokens of question + answer")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    lines = []
    with args.chats.open(encoding="utf-8") as fh:
        for line in fh:
            question, answer = (m["content"] for m in json.loads(line)["messages"][:2])
            while len(tok(question + answer)["input_ids"]) < args.tokens:
                answer = answer + "\n\n" + answer
            lines.append(json.dumps({"messages": [{"role": "user", "content": question},
                                                  {"role": "assistant", "content": answer}]}))
            if len(lines) == args.n:
                break
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(args.out)
    print(f"{len(lines)} chats of at least {args.tokens} tokens -> {args.out}")


if __name__ == "__main__":
    main()
