"""Unsloth 4-bit QLoRA vs transformers + PEFT + bitsandbytes on a Llama-3.2-3B-shaped model.

The GPU machines hold no model weights, so the model is built from a config of Llama-3.2-3B's
shape with random weights (throughput and memory do not depend on the values) and the data are
random token ids of a fixed length. Each stack runs in its own process: importing Unsloth patches
transformers for the whole process, so the plain stack must never see it.

Both stacks run the same hand-written loop (forward, backward, AdamW on the LoRA weights), batch
4, LoRA r=16 on q,k,v,o,gate,up,down, gradient checkpointing on, as the report trained.
Reported: tokens/s, peak GPU memory, and the projected time of one epoch over --pairs chats of
--pair-tokens tokens each (effective batch 16 as in the report).

Two variations: `--chats FILE` feeds real chats (chat_dataset JSONL, tokenised with the model
folder's tokenizer and chat template, each batch right-padded to its longest chat, tokens/s
counting non-padding tokens) instead of full rows of random ids; `--checkpointing` chooses how
activations are kept: "unsloth" (Unsloth's offloaded checkpointing; the plain stack has no such
mode and uses "true"), "true" (the standard recompute) or "false" (no checkpointing).

    python benchmarks/gpu/bench_gpu_qlora.py --out results.json          # on the GPU
    python benchmarks/gpu/bench_gpu_qlora.py --tiny --out /tmp/tiny.json # CPU smoke test, fp32, no 4-bit
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LLAMA_3B = dict(num_hidden_layers=28, hidden_size=3072, intermediate_size=8192, num_attention_heads=24,
                num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0,
                tie_word_embeddings=True)
TINY = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, max_position_embeddings=2048, tie_word_embeddings=True)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CHAT_TEMPLATE = ("{% for m in messages %}<|start|>{{ m['role'] }}\n{{ m['content'] }}<|end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|start|>assistant\n{% endif %}")


def build_model_dir(path: Path, tiny: bool, tokenizer_from: Path | None = None) -> None:
    """Random-weight Llama of the chosen shape + a tokenizer, saved as a model folder.

    The tokenizer is a throwaway word-level one, or, with ``tokenizer_from``, a real model's tokenizer
    and chat template (the trainer check tokenises real chats with it). The weights are initialised on
    the GPU when there is one: on the CPU, initialising 3.2B parameters takes minutes.
    """
    import shutil

    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    shape = dict(TINY if tiny else LLAMA_3B)
    if tokenizer_from is not None:
        tok = AutoTokenizer.from_pretrained(tokenizer_from)
        shape["vocab_size"] = max(shape["vocab_size"], len(tok))
        ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                   pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    else:
        vocab = {"<pad>": 0, "<|start|>": 1, "<|end|>": 2, "<unk>": 3, **{f"w{i}": i + 4 for i in range(200)}}
        raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        raw.pre_tokenizer = pre_tokenizers.Whitespace()
        tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|start|>", eos_token="<|end|>",
                                      pad_token="<pad>", unk_token="<unk>")
        tok.chat_template = CHAT_TEMPLATE
        ids = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config = LlamaConfig(**shape, **ids)
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(0)
    dtype = torch.float32 if tiny else torch.bfloat16
    with torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu"):
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(path)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the stacks run in child processes: give them the whole GPU
    tok.save_pretrained(path)
    if tokenizer_from is not None and (Path(tokenizer_from) / "chat_template.jinja").is_file():
        shutil.copy(Path(tokenizer_from) / "chat_template.jinja", Path(path) / "chat_template.jinja")


def child(stack: str, model_dir: str, args: argparse.Namespace) -> dict:
    """One stack, one process: load in 4-bit (GPU) or fp32 (--tiny CPU), add LoRA, time the loop."""
    if stack == "unsloth":
        import unsloth  # noqa: F401  (before transformers)
        from unsloth import FastLanguageModel
    import torch

    cuda = torch.cuda.is_available() and not args.tiny
    four_bit = cuda
    # What each stack is given for use_gradient_checkpointing (on the CPU smoke test: off).
    ckpt = {"unsloth": "unsloth", "true": True, "false": False}[args.checkpointing] if cuda else False
    if stack == "plain" and ckpt == "unsloth":
        ckpt = True  # the plain stack's only checkpointing is the standard recompute
    t0 = time.perf_counter()
    if stack == "unsloth":
        model, _ = FastLanguageModel.from_pretrained(
            model_dir, max_seq_length=args.seq_len, load_in_4bit=four_bit,
            dtype=None if cuda else torch.float32, use_gradient_checkpointing=ckpt)
        model = FastLanguageModel.get_peft_model(
            model, r=16, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, bias="none",
            use_gradient_checkpointing=ckpt, random_state=3407)
    else:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        kwargs: dict = {"dtype": torch.bfloat16 if cuda else torch.float32}
        if four_bit:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16)
            kwargs["device_map"] = {"": 0}
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
        if four_bit:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(ckpt))
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS,
                                                 bias="none", task_type="CAUSAL_LM"))
    load_s = time.perf_counter() - t0
    dev = "cuda" if cuda else "cpu"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4)
    n_steps = args.warmup + args.steps
    batches = (chat_batches(model_dir, args.chats, args.batch, args.seq_len, n_steps) if args.chats
               else random_batches(model.config.vocab_size, args.batch, args.seq_len, n_steps))
    model.train()
    times, tokens = [], []
    for step, (ids, mask) in enumerate(batches):
        ids, mask = ids.to(dev), mask.to(dev)
        labels = ids.masked_fill(mask == 0, -100)
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t)
            tokens.append(int(mask.sum()))
    step_s = sorted(times)[len(times) // 2]
    tokens_per_s = sum(tokens) / sum(times)  # non-padding tokens over the timed steps
    return {
        "stack": stack, "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "four_bit": four_bit, "gradient_checkpointing": ckpt, "data": "chats" if args.chats else "random full rows",
        "load_s": round(load_s, 1), "step_s_median": round(step_s, 4),
        "step_s_all": [round(x, 4) for x in times], "tokens_per_step_mean": round(sum(tokens) / len(tokens), 1),
        "tokens_per_s": round(tokens_per_s, 1),
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 1024**3, 2) if cuda else None,
        "trainable_params": sum(p.numel() for p in params), "final_loss": round(float(loss), 4),
        "projected_epoch_h": round(args.pairs * args.pair_tokens / tokens_per_s / 3600, 2),
    }


def random_batches(vocab: int, batch: int, seq_len: int, n: int):
    """`n` batches of full rows of random token ids (every position a real token)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    for _ in range(n):
        ids = torch.randint(4, vocab, (batch, seq_len), generator=gen)
        yield ids, torch.ones_like(ids)


def chat_batches(model_dir: str, chats: Path, batch: int, seq_len: int, n: int):
    """`n` batches of real chats in file order, tokenised with the folder's chat template, each chat cut
    at `seq_len` tokens and each batch right-padded to its longest chat (mask 0 on the padding)."""
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rows: list[list[int]] = []
    with open(chats, encoding="utf-8") as f:
        for line in f:
            if len(rows) == batch * n:
                break
            ids = tok.apply_chat_template(json.loads(line)["messages"], tokenize=True, return_dict=False)
            rows.append(list(ids)[:seq_len])
    if len(rows) < batch * n:
        raise SystemExit(f"{chats} has {len(rows)} chats; {batch * n} are needed ({n} steps of {batch})")
    for i in range(0, len(rows), batch):
        part = rows[i : i + batch]
        width = max(map(len, part))
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in part])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in part])
        yield ids, mask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="2-layer model, fp32, no 4-bit: checks the script on a CPU")
    ap.add_argument("--stacks", default="unsloth,plain", help="comma list of unsloth,plain")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=1024, help="tokens per sequence (every sequence full)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per stack")
    ap.add_argument("--warmup", type=int, default=3, help="untimed first steps (compilation, autotuning)")
    ap.add_argument("--pairs", type=int, default=40_000, help="chats per epoch for the projection")
    ap.add_argument("--pair-tokens", type=int, default=450, help="mean tokens per chat for the projection")
    ap.add_argument("--chats", type=Path, help="chat_dataset JSONL: train on these chats instead of random full rows")
    ap.add_argument("--checkpointing", choices=("unsloth", "true", "false"), default="unsloth",
                    help="use_gradient_checkpointing (plain stack: 'unsloth' means 'true')")
    ap.add_argument("--out", type=Path, default=Path("bench_gpu_qlora.json"))
    ap.add_argument("--model-dir", type=Path, help="reuse a model folder built earlier (built there if missing)")
    ap.add_argument("--tokenizer-from", type=Path, help="model folder whose tokenizer and chat template to use")
    ap.add_argument("--build-only", action="store_true", help="build the --model-dir folder and stop")
    ap.add_argument("--child-timeout", type=float, default=300, help="seconds before one stack is stopped")
    ap.add_argument("--child", nargs=2, metavar=("STACK", "MODEL_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.tiny:
        args.seq_len, args.steps, args.warmup = min(args.seq_len, 64), min(args.steps, 3), min(args.warmup, 1)
    if args.child:
        print("RESULT " + json.dumps(child(args.child[0], args.child[1], args)), flush=True)
        return

    tmp = tempfile.TemporaryDirectory()
    model_dir = args.model_dir or Path(tmp.name) / "model"
    t0 = time.perf_counter()
    if not (model_dir / "config.json").is_file():
        build_model_dir(model_dir, args.tiny, args.tokenizer_from)
    results = {"build_model_s": round(time.perf_counter() - t0, 1), "stacks": {}, "errors": {}}
    if args.build_only:
        print(f"model folder {model_dir} ready in {results['build_model_s']} s", flush=True)
        return
    passthrough = ["--batch", str(args.batch), "--seq-len", str(args.seq_len), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--pairs", str(args.pairs), "--pair-tokens", str(args.pair_tokens),
                   "--checkpointing", args.checkpointing, *(["--chats", str(args.chats)] if args.chats else [])]
    for stack in args.stacks.split(","):
        cmd = [sys.executable, __file__, *passthrough, *(["--tiny"] if args.tiny else []), "--child", stack,
               str(model_dir)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.child_timeout)
        except subprocess.TimeoutExpired as exc:
            out = "".join(x.decode(errors="replace") if isinstance(x, bytes) else x
                          for x in (exc.stdout or "", exc.stderr or ""))
            results["errors"][stack] = f"stopped after {args.child_timeout:.0f} s\n" + out[-3000:]
            print(stack, results["errors"][stack][-500:], flush=True)
            continue
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode == 0 and lines:
            results["stacks"][stack] = json.loads(lines[-1][len("RESULT "):])
        else:  # keep going: one stack failing must not lose the other's numbers
            results["errors"][stack] = (proc.stdout + proc.stderr)[-3000:]
        print(stack, results["stacks"].get(stack) or results["errors"][stack][-500:], flush=True)
    s = results["stacks"]
    if "unsloth" in s and "plain" in s:
        results["unsloth_speedup"] = round(s["unsloth"]["tokens_per_s"] / s["plain"]["tokens_per_s"], 2)
        if s["plain"]["peak_memory_gb"]:
            results["unsloth_memory_ratio"] = round(s["unsloth"]["peak_memory_gb"] / s["plain"]["peak_memory_gb"], 2)
    results["settings"] = {k: v for k, v in vars(args).items() if k not in ("child", "out", "model_dir", "tokenizer_from")}
    results["shape"] = {k: v for k, v in json.loads((model_dir / "config.json").read_text()).items()
                        if k in LLAMA_3B}
    results["versions"] = _versions()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "errors"}, indent=1, default=str))
    tmp.cleanup()


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "trl", "unsloth", "bitsandbytes"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    out["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    return out


if __name__ == "__main__":
    main()
