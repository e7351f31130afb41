"""How much does merging a LoRA adapter into 16-bit weights change what the evaluation measures?

Merged into bf16 weights an adapter decodes 3.8-5.5x faster on a GPU, but every merged weight is rounded.
This measures, on the real base model and a trained adapter, the held-out loss and greedy answers of:

- ``beside_fp32``: the reference, float32 base with the LoRA modules beside it;
- ``beside_bf16``: the same with every weight (base and LoRA) rounded to bf16;
- ``merged_peft_bf16``: PEFT's ``merge_and_unload`` on the model loaded in bf16 (its weights rounded
  first, then the merged sum), what the evaluation did in session 6. These are also the weights of any
  merge into a bf16 checkpoint such as Llama-3.2's, whose ``W`` is already on the bf16 grid (the recorded
  JSONs show it as ``merged_bf16_checkpoint``, built that way, with the same loss and answers);
- ``merged_once``: ``load_model(..., merge=True, dtype=bfloat16)``: merged in float32, rounded once (what
  ``merge_adapters='always'`` and a bf16 export do now; the default 'auto' keeps the LoRA beside in bf16);
- ``base``: the base alone, bf16-rounded, for the size of the adapter's effect.

Weights are rounded to bf16 but the arithmetic runs in float32, because this host's CPU runs bf16
matmuls about 5x slower and the question is what rounding the stored weights does. The same question in
bf16 arithmetic on a GPU is ``benchmarks/gpu/gpu_merge_precision.py``.

    .venv/bin/python benchmarks/bench_merge_precision.py --adapter data/adapters/all_pairs/adapter \\
        [--base data/models/base] [--test data/chat_dataset/test.jsonl] [--out benchmarks/results/merge_precision_all_pairs.json]

The adapter and test split come from ``make demo`` (the demo profile's adapters).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for cv_pipeline

import torch

from cv_pipeline.atomic import write_json
from cv_pipeline.evaluation.evaluator import _prepare_tokenizer, generate_answers, load_model, teacher_forced_loss

REFERENCE = "beside_fp32"


def rounded(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter rounded to bf16 and stored back in float32 (bf16 weights, float32 arithmetic)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    return model


def lora_updates(model):
    """(module, ||B @ A * scale|| / ||W||) for every LoRA module of a PeftModel: how big its merged update is."""
    for module in model.modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
            delta = module.get_delta_weight("default").float()
            yield module, float(delta.norm() / module.base_layer.weight.float().norm())


def variants(base: Path, adapter: Path):
    """(name, model) pairs, built one at a time so that only one model is in memory."""
    from peft import PeftModel

    def plain(dtype=torch.float32):
        return load_model(base, None, "cpu", dtype=dtype)[0]

    yield "base", rounded(plain())
    yield REFERENCE, PeftModel.from_pretrained(plain(), str(adapter)).eval()
    yield "beside_bf16", rounded(PeftModel.from_pretrained(plain(), str(adapter))).eval()
    merged = PeftModel.from_pretrained(plain(torch.bfloat16), str(adapter)).merge_and_unload()
    yield "merged_peft_bf16", merged.float().eval()
    yield "merged_once", load_model(base, adapter, "cpu", merge=True, dtype=torch.bfloat16)[0].float().eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapter", type=Path, required=True, help="a trained adapter folder (data/adapters/NAME/adapter)")
    ap.add_argument("--base", type=Path, default=Path("data/models/base"))
    ap.add_argument("--test", type=Path, default=Path("data/chat_dataset/test.jsonl"))
    ap.add_argument("--n-rows", type=int, default=32, help="held-out rows scored by teacher-forced loss")
    ap.add_argument("--n-answers", type=int, default=16, help="questions answered greedily")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--out", type=Path, help="default: benchmarks/results/merge_precision_<adapter name>.json")
    args = ap.parse_args()
    for path in (args.adapter / "adapter_config.json", args.base / "config.json", args.test):
        if not path.is_file():
            sys.exit(f"{path} is missing: run `make demo` first (it trains the adapters and writes the test split)")

    from peft import PeftModel

    rows = [json.loads(line) for line in args.test.open(encoding="utf-8")][: args.n_rows]
    questions = [r["messages"][0]["content"] for r in rows[: args.n_answers]]
    model, tok = load_model(args.base, None, "cpu")
    ratios = sorted(r for _, r in lora_updates(PeftModel.from_pretrained(model, str(args.adapter))))
    sizes = {"modules": len(ratios), "median": ratios[len(ratios) // 2], "max": ratios[-1]}
    del model
    scores: dict[str, dict] = {}
    for name, model in variants(args.base, args.adapter):
        t0 = time.perf_counter()
        with torch.no_grad():
            loss = teacher_forced_loss(model, _prepare_tokenizer(tok, model), rows, 512, 8)["mean_loss"]
        answers = generate_answers(model, tok, questions, args.max_new_tokens, 8)
        scores[name] = {"loss": loss, "answers": answers, "seconds": round(time.perf_counter() - t0, 1)}
        print(f"{name:18s} loss {loss:.5f}  ({scores[name]['seconds']} s)", flush=True)
        del model

    ref = scores[REFERENCE]
    gain = scores["base"]["loss"] - ref["loss"]  # what the adapter does to the loss
    table = {}
    for name, s in scores.items():
        table[name] = {
            "loss": round(s["loss"], 5),
            "loss_shift_vs_reference": round(s["loss"] - ref["loss"], 5),
            "adapter_gain_kept": None if name == "base" else round((scores["base"]["loss"] - s["loss"]) / gain, 4),
            "answers_same_as_reference": sum(a == b for a, b in zip(s["answers"], ref["answers"], strict=True)),
            "seconds": s["seconds"],
        }
    summary = json.loads((args.adapter / "training_summary.json").read_text()) if (
        args.adapter / "training_summary.json").is_file() else {}
    result = {
        "what": "held-out loss and greedy answers of a LoRA adapter beside and merged into bf16 weights",
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "compute": "float32",
        "adapter": str(args.adapter),
        "adapter_hparams": {k: summary.get("hparams", {}).get(k) for k in ("learning_rate", "max_steps", "epochs")},
        "update_size_vs_weight": sizes,
        "n_rows": len(rows),
        "n_answers": len(questions),
        "max_new_tokens": args.max_new_tokens,
        "variants": table,
        "merged_peft_shift_over_merged_once_shift": round(
            table["merged_peft_bf16"]["loss_shift_vs_reference"] / table["merged_once"]["loss_shift_vs_reference"], 2)
        if table["merged_once"]["loss_shift_vs_reference"] else None,
    }
    out = args.out or Path(f"benchmarks/results/merge_precision_{args.adapter.parent.name}.json")
    write_json(out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "variants"}, indent=1))
    for name, row in table.items():
        print(f"{name:18s} {row}")


if __name__ == "__main__":
    main()
