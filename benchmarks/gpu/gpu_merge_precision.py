"""Merging a LoRA adapter for evaluation on a GPU: the cost of the float32 merge, and what bf16 rounding does.

``load_model(..., merge=True)`` (the evaluation's ``merge_adapters='always'``, and any float32 run) merges in
float32 on the CPU, rounds each merged weight once to bf16 and moves the model to the GPU (``merged``);
before, PEFT merged into the model loaded in bf16 on the GPU (``merged_peft_bf16``). At Llama-3.2-3B's shape (random weights
saved in bf16, SmolLM2's tokenizer) with a LoRA of the trainer's shape (r=16 on the seven projections)
whose update is scaled to ``--update-size`` of each weight's norm (the demo's trained adapter: median
0.004), this measures for each way of running the adapter:

- load (+ merge) time and peak GPU memory;
- against a float32 reference (base and LoRA beside it, float32 arithmetic), over the real chats: the mean
  absolute change of the per-token loss, the share of positions whose top-1 token is unchanged, and
  the relative logit error ||logits - ref|| / ||ref - mean(ref)|| (the base model alone gives the scale
  of the adapter's own effect);
- greedy decoding speed, LoRA beside against merged.

    python benchmarks/gpu/gpu_merge_precision.py --model-dir /tmp/model --chats chats.jsonl --out precision.json
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for cv_pipeline and benchmarks

import torch

from benchmarks.bench_merge_precision import lora_updates
from benchmarks.gpu.bench_gpu_qlora import TARGETS
from benchmarks.gpu.gpu_eval_check import decoding_parser, read_questions, timed_generation
from cv_pipeline.evaluation.evaluator import _prepare_tokenizer, encode_chat, load_model, resolve_device


def make_adapter(model_dir: Path, target: Path, update_size: float, dev: torch.device) -> dict:
    """A saved LoRA (random A and B) whose update B @ A * scale is ``update_size`` of each weight's norm."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True).to(dev)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, target_modules=TARGETS, init_lora_weights=False))
    n = 0
    with torch.no_grad():
        for module, ratio in lora_updates(model):
            module.lora_B["default"].weight.mul_(update_size / ratio)
            n += 1
    model.save_pretrained(target)
    del model
    return {"modules": n, "update_size": update_size}


def teacher_forced(model, batches) -> list[dict[str, torch.Tensor]]:
    """Per batch: the per-token loss, the top-1 ids and (first batch only) the logits, all on the CPU."""
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for i, (ids, mask) in enumerate(batches):
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1].float()
            labels = ids[:, 1:].to(device)
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
            keep = mask[:, 1:].bool()
            out.append({"nll": nll.cpu()[keep], "top1": logits.argmax(-1).cpu()[keep],
                        "logits": logits.cpu()[keep] if i == 0 else None})
    return out


def compare(got: list[dict], ref: list[dict]) -> dict:
    nll = torch.cat([g["nll"] for g in got]), torch.cat([r["nll"] for r in ref])
    top1 = torch.cat([g["top1"] for g in got]), torch.cat([r["top1"] for r in ref])
    lg, lr = got[0]["logits"], ref[0]["logits"]
    return {
        "mean_loss": round(float(nll[0].mean()), 5),
        "loss_shift": round(float(nll[0].mean() - nll[1].mean()), 6),
        "mean_abs_token_loss_change": round(float((nll[0] - nll[1]).abs().mean()), 6),
        "top1_same": round(float((top1[0] == top1[1]).float().mean()), 5),
        "relative_logit_error": round(float((lg - lr).norm() / (lr - lr.mean(-1, keepdim=True)).norm()), 6),
    }


def main() -> None:
    ap = decoding_parser(__doc__)
    ap.add_argument("--n-rows", type=int, default=32, help="chats scored by teacher forcing")
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--update-size", type=float, default=0.004, help="||B @ A * scale|| / ||W|| of every module")
    ap.add_argument("--adapter-dir", type=Path, default=Path("/tmp/merge_precision_adapter"))
    args = ap.parse_args()
    dev = resolve_device(args.device)
    cuda = dev.type == "cuda"
    half = torch.bfloat16 if cuda else torch.float32

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model_dir, local_files_only=True)
    rows = [json.loads(line) for line in args.chats.open(encoding="utf-8")][: args.n_rows]
    encoded = [encode_chat(tok, r["messages"], args.max_len)[0] for r in rows]
    batches = []
    for s in range(0, len(encoded), 8):
        chunk = encoded[s : s + 8]
        ids = torch.zeros(len(chunk), max(map(len, chunk)), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, e in enumerate(chunk):
            ids[i, : len(e)], mask[i, : len(e)] = torch.tensor(e), 1
        batches.append((ids, mask))

    result: dict = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "n_rows": len(rows),
                    "positions": int(sum(int(m[:, 1:].sum()) for _, m in batches)), "dtype": str(half)}
    t0 = time.perf_counter()
    result["adapter"] = make_adapter(args.model_dir, args.adapter_dir, args.update_size, dev)
    result["adapter"]["make_s"] = round(time.perf_counter() - t0, 1)
    questions = read_questions(args.chats, args.n_questions)

    def peft_bf16_merge():
        from peft import PeftModel

        model = load_model(args.model_dir, None, args.device, dtype=half)[0]
        return PeftModel.from_pretrained(model, str(args.adapter_dir)).merge_and_unload().eval()

    ways = {
        "reference_fp32_beside": lambda: load_model(args.model_dir, args.adapter_dir, args.device, dtype=torch.float32)[0],
        "base_alone": lambda: load_model(args.model_dir, None, args.device)[0],
        "beside": lambda: load_model(args.model_dir, args.adapter_dir, args.device)[0],
        "merged_peft_bf16": peft_bf16_merge,
        "merged": lambda: load_model(args.model_dir, args.adapter_dir, args.device, merge=True)[0],
    }
    ref = None
    result["ways"] = {}
    for name, build in ways.items():
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        model = build()
        if cuda:
            torch.cuda.synchronize()
        row = {"load_s": round(time.perf_counter() - t0, 2),
               "load_peak_memory_gb": round(torch.cuda.max_memory_allocated() / 1024**3, 2) if cuda else None}
        scored = teacher_forced(model, batches)
        if ref is None:
            ref = scored
        row.update(compare(scored, ref))
        if name in ("beside", "merged"):
            tok = _prepare_tokenizer(tok, model)
            timed = timed_generation(model, tok, questions, args.batch_size, args.max_new_tokens)
            row["answers"] = timed.pop("answers")
            row["decode"] = timed
        result["ways"][name] = row
        print(name, {k: v for k, v in row.items() if k not in ("answers", "decode")}, flush=True)
        del model
    ways_ = result["ways"]
    ways_["merged"]["same_answers_as_beside"] = sum(
        a == b for a, b in zip(ways_["beside"].pop("answers"), ways_["merged"].pop("answers"), strict=True))
    result["merged_decode_speedup"] = round(ways_["merged"]["decode"]["generated_positions_per_s"]
                                                 / ways_["beside"]["decode"]["generated_positions_per_s"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
