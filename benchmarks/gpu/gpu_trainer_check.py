"""The pipeline's own trainer on a GPU: ``train_adapter`` on real chats, 4-bit QLoRA, a Llama-3.2-3B shape.

``bench_gpu_qlora.py`` compares model stacks with a hand-written loop on random token ids. This
script runs what the ``lora_adapter_*`` assets run (Unsloth's FastLanguageModel, TRL's SFTTrainer,
the assistant-only loss mask, checkpointing, the atomic adapter write) on chats from the chat
dataset, so it checks that the CUDA path works end to end and measures it with real lengths and
padding. The model has random weights (no weights reach the GPU machine) and a real tokenizer and
chat template (``--tokenizer-from``), so the loss values mean nothing; tokens/s and memory do.

Reported: non-padding tokens/s over the timed optimiser steps (the first ``--warmup`` steps are
left out: compilation and autotuning), median step time, peak GPU memory, the adapter's size, and
the projected hours for the report's two adapters at the measured rate and the report's mean
chat length.

    python benchmarks/gpu/gpu_trainer_check.py --model-dir /tmp/model --chats chats.jsonl --out check.json
    python benchmarks/gpu/gpu_trainer_check.py --tiny --tokenizer-from data/models/base \\
        --chats data/chat_dataset/train.jsonl --out /tmp/check.json     # CPU smoke test (~1 min)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for cv_pipeline

# Unsloth must be imported before transformers, TRL and PEFT; the trainer module does so first.
from cv_pipeline.training.trainer import TrainingError, train_adapter  # isort: skip

import torch
from datasets import Dataset
from transformers import TrainerCallback

from cv_pipeline.training.config import ADAPTER_SPECS, LoraHyperparams, TrainingHyperparams
from cv_pipeline.training.device import detect_device


class StepTimer(TrainerCallback):
    """Wall time and non-padding tokens of every optimiser step."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, int]] = []
        self._t = 0.0
        self._tokens = 0

    def on_step_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._t, self._tokens = time.perf_counter(), state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.steps.append((time.perf_counter() - self._t, state.num_input_tokens_seen - self._tokens))


def load_chats(path: Path, n: int) -> Dataset:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            rows.append({"messages": json.loads(line)["messages"]})
            if len(rows) == n:
                break
    if not rows:
        raise SystemExit(f"{path} holds no chats: pass a chat_dataset JSONL (train.jsonl)")
    return Dataset.from_list(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, help="model folder (from bench_gpu_qlora.py); built here if missing")
    ap.add_argument("--tokenizer-from", type=Path, help="tokenizer and chat template for a model built here")
    ap.add_argument("--tiny", action="store_true", help="2-layer model on the CPU: checks the script")
    ap.add_argument("--chats", type=Path, required=True, help="chat_dataset JSONL (one {'messages': [...]} a line)")
    ap.add_argument("--n-chats", type=int, default=512)
    ap.add_argument("--max-steps", type=int, default=10, help="optimiser steps (batch x accumulation chats each)")
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing")
    ap.add_argument("--max-seq-length", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=4, help="per-device batch (the report's 4)")
    ap.add_argument("--grad-accum", type=int, default=4, help="accumulated passes per step (the report's 4)")
    ap.add_argument("--packing", action="store_true", help="pack chats into full rows (CUDA only)")
    ap.add_argument("--checkpointing", choices=("unsloth", "recompute", "off"), default="unsloth",
                    help="TrainingHyperparams.gradient_checkpointing")
    ap.add_argument("--pairs", type=int, default=40_000, help="pairs of the all-pairs adapter, for the projection")
    ap.add_argument("--pair-tokens", type=int, default=450, help="the report's mean tokens per chat")
    ap.add_argument("--keep-adapter", type=Path, help="copy the trained adapter here (for gpu_eval_check.py)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.tiny:
        args.max_steps, args.warmup, args.n_chats = min(args.max_steps, 3), min(args.warmup, 1), min(args.n_chats, 64)

    tmp = tempfile.TemporaryDirectory()
    model_dir = args.model_dir or Path(tmp.name) / "model"
    if not (model_dir / "config.json").is_file():
        from benchmarks.gpu.bench_gpu_qlora import build_model_dir

        build_model_dir(model_dir, args.tiny, args.tokenizer_from)

    device = detect_device("cpu" if args.tiny else "auto")
    hparams = TrainingHyperparams(max_steps=args.max_steps, max_seq_length=args.max_seq_length,
                                  warmup_steps=1, save_steps=args.max_steps, logging_steps=1,
                                  per_device_batch=2 if args.tiny else args.batch,
                                  grad_accum=2 if args.tiny else args.grad_accum, packing=args.packing,
                                  gradient_checkpointing=args.checkpointing)
    timer = StepTimer()
    result = {"device": device.as_dict(), "hparams": hparams.model_dump(), "n_chats": args.n_chats}
    out_dir = Path(tmp.name) / "run"
    try:
        train = train_adapter(model_dir, load_chats(args.chats, args.n_chats), None, out_dir, hparams,
                              LoraHyperparams(), device, log=lambda m: print(m, flush=True), callbacks=[timer])
    except TrainingError as exc:
        result["error"] = str(exc)
        train = None
    if train is not None:
        timed = timer.steps[args.warmup:] or timer.steps
        step_s = statistics.median(t for t, _ in timed)
        tok_s = sum(n for _, n in timed) / sum(t for t, _ in timed)
        adapter_bytes = sum(f.stat().st_size for f in (out_dir / "adapter").rglob("*") if f.is_file())
        summary = json.loads((out_dir / "adapter" / "training_summary.json").read_text())
        hours = {name: round(spec.epochs * (args.pairs if spec.subset == "all" else 10_000) * args.pair_tokens
                             / tok_s / 3600, 2) for name, spec in ADAPTER_SPECS.items()}
        result.update({
            "four_bit": device.is_cuda and device.four_bit_available,
            "steps": train.steps, "timed_steps": len(timed), "step_s_median": round(step_s, 3),
            "step_s_all": [round(t, 3) for t, _ in timer.steps],
            "tokens_per_step_mean": round(statistics.mean(n for _, n in timed)),
            "tokens_per_s": round(tok_s, 1), "tokens_per_s_whole_run": round(train.tokens_per_s, 1),
            "peak_memory_gb": round(train.peak_memory_gb, 2), "final_loss": train.final_loss,
            "loss_finite": all(torch.isfinite(torch.tensor(h["loss"])).item() for h in train.loss_history
                               if "loss" in h),
            "adapter_mb": round(adapter_bytes / 1e6, 1), "adapter_files": sorted(
                f.name for f in (out_dir / "adapter").iterdir()),
            "n_train_examples": train.n_train_examples, "summary_device": summary["device_info"]["name"],
            "projected_hours": hours,
        })
        if args.keep_adapter:
            import shutil

            shutil.rmtree(args.keep_adapter, ignore_errors=True)
            shutil.copytree(out_dir / "adapter", args.keep_adapter)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "hparams"}, indent=1, default=str))
    tmp.cleanup()
    if train is None:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
