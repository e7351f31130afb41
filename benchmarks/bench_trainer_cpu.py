"""How much does the training stack add over a bare PyTorch loop? (CPU, SmolLM2-135M LoRA)

Three timings of the same work, batch 4 x 128 tokens, one optimiser step per batch:
  raw_unsloth  forward + backward + AdamW step on the Unsloth LoRA model, hand-written loop
  trainer      ``train_adapter`` (TRL SFTTrainer over the same Unsloth model), per-step time from a callback
  raw_plain    the same hand-written loop on transformers + PEFT without Unsloth (a subprocess, because
               importing Unsloth patches transformers for the whole process)
Every chat is cut to exactly 128 tokens, so every batch has the same shape whatever the order.
Goal: trainer step time <= 1.3 x raw_unsloth. Writes benchmarks/results/trainer_cpu.json.

    python benchmarks/bench_trainer_cpu.py [--steps 6] [--warmup 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BATCH, SEQ = 4, 128
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_chats(n: int) -> list[dict]:
    """Chats long enough that each one is truncated to exactly SEQ tokens."""
    filler = "The estimator is unbiased because the expectation of the sample mean equals the population mean. "
    return [
        {"messages": [
            {"role": "user", "content": f"Question {i}: why is the sample mean unbiased?"},
            {"role": "assistant", "content": filler * 6},
        ]}
        for i in range(n)
    ]


def batches(tokenizer, n_batches: int) -> list[dict]:
    from cv_pipeline.training.trainer import tokenize_chat

    rows = [tokenize_chat(tokenizer, c["messages"], SEQ) for c in make_chats(n_batches * BATCH)]
    assert all(len(r["input_ids"]) == SEQ for r in rows), "every chat must fill SEQ tokens"
    return [rows[i * BATCH:(i + 1) * BATCH] for i in range(n_batches)]


def raw_loop(model, batch_rows: list[list[dict]], warmup: int) -> tuple[list[float], list[float]]:
    """Hand-written training steps; returns wall and process-CPU seconds per step after warm-up."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.01)
    model.train()
    times, cpu = [], []
    for i, rows in enumerate(batch_rows):
        ids = torch.tensor([r["input_ids"] for r in rows])
        labels = torch.tensor([r["labels"] for r in rows])
        t, c = time.perf_counter(), time.process_time()
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # the Trainer clips too (max_grad_norm=1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    return times, cpu


def plain_child(base: str, steps: int, warmup: int, out: str) -> None:
    """Runs in a subprocess: transformers + PEFT, no Unsloth import anywhere."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert "unsloth" not in sys.modules
    torch.manual_seed(3407)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS,
                                             task_type="CAUSAL_LM"))
    # tokenize_chat lives in the trainer module, which imports Unsloth: rebuild the rows here instead.
    rows = json.loads(Path(out).with_suffix(".rows.json").read_text())
    times, cpu = raw_loop(model, rows[: steps + warmup], warmup)
    Path(out).write_text(json.dumps({"step_s": times, "cpu_s": cpu, "tokenizer_vocab": len(tok)}))


def summarise(times: list[float], cpu: list[float]) -> dict:
    """Wall-clock median and minimum, and process CPU seconds per step.

    On a shared machine the wall clock includes waiting for other processes; the minimum and the
    CPU seconds are the contention-robust figures, so the overhead goal is judged on CPU seconds.
    """
    med = statistics.median(times)
    return {"step_s_median": round(med, 3), "step_s_min": round(min(times), 3),
            "step_s_all": [round(t, 3) for t in times], "cpu_s_per_step_median": round(statistics.median(cpu), 3),
            "steps_per_s": round(1 / med, 4), "tokens_per_s": round(BATCH * SEQ / med, 1),
            "tokens_per_s_best": round(BATCH * SEQ / min(times), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per method")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first steps per method")
    ap.add_argument("--plain-child", nargs=2, metavar=("BASE", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "trainer_cpu.json")
    args = ap.parse_args()
    if args.plain_child:
        plain_child(args.plain_child[0], args.steps, args.warmup, args.plain_child[1])
        return

    import tempfile

    # The trainer module imports Unsloth, which must patch transformers before anything imports it.
    from cv_pipeline.training.trainer import FastLanguageModel, train_adapter  # isort: skip

    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    from cv_pipeline.atomic import write_json
    from cv_pipeline.training.base_model import prepare_base_model
    from cv_pipeline.training.config import LoraHyperparams, TrainingHyperparams
    from cv_pipeline.training.device import detect_device

    cache = Path(os.environ.get("CV_PIPELINE_CACHE", Path.home() / ".cache" / "cv_pipeline"))
    base = prepare_base_model("embedded", cache / "base_models" / "embedded").path
    n = args.steps + args.warmup
    device = detect_device("cpu")
    lora = LoraHyperparams()

    # 1. raw loop on the Unsloth LoRA model
    model, tok = FastLanguageModel.from_pretrained(str(base), max_seq_length=SEQ, dtype=torch.float32,
                                                   load_in_4bit=False, use_gradient_checkpointing=False)
    model = FastLanguageModel.get_peft_model(model, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                             target_modules=lora.target_modules, use_gradient_checkpointing=False,
                                             random_state=3407)
    rows = batches(tok, n)
    raw, raw_cpu = raw_loop(model, rows, args.warmup)
    del model

    # 2. the real trainer on the same data and shapes
    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.cpu, self.t, self.c = [], [], 0.0, 0.0

        def on_step_begin(self, a, state, control, **kw):
            self.t, self.c = time.perf_counter(), time.process_time()

        def on_step_end(self, a, state, control, **kw):
            if state.global_step > args.warmup:
                self.times.append(time.perf_counter() - self.t)
                self.cpu.append(time.process_time() - self.c)

    timer = StepTimer()
    hp = TrainingHyperparams(per_device_batch=BATCH, grad_accum=1, max_seq_length=SEQ, max_steps=n, warmup_steps=0,
                             save_steps=10**6, logging_steps=1)
    with tempfile.TemporaryDirectory() as tmp:
        res = train_adapter(base, Dataset.from_list(make_chats(n * BATCH)), None, Path(tmp), hp, lora, device,
                            callbacks=[timer])
    # Time between steps too (logging, dataloader): the callback window misses it, the wall clock does not.
    trainer_wall_per_step = res.wall_time_s / n

    # 3. transformers + PEFT without Unsloth, in its own process
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "plain.json"
        out.with_suffix(".rows.json").write_text(json.dumps(rows))
        subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--warmup", str(args.warmup),
                        "--plain-child", str(base), str(out)], check=True)
        plain = json.loads(out.read_text())

    result = {
        "what": "CPU LoRA step time, SmolLM2-135M fp32, batch 4 x 128 tokens, r=16 on 7 projections",
        "device": device.name,
        "torch_threads": torch.get_num_threads(),
        "load_average_at_end": os.getloadavg(),
        "raw_unsloth": summarise(raw, raw_cpu),
        "trainer": {**summarise(timer.times, timer.cpu),
                    "wall_per_step_incl_warmup_s": round(trainer_wall_per_step, 3)},
        "raw_plain_transformers_peft": summarise(plain["step_s"], plain["cpu_s"]),
    }
    for key, stat in (("cpu", "cpu_s_per_step_median"), ("wall_median", "step_s_median"), ("wall_min", "step_s_min")):
        result[f"trainer_overhead_{key}"] = round(result["trainer"][stat] / result["raw_unsloth"][stat] - 1, 3)
    result["goal"] = "trainer_overhead_cpu (trainer vs raw loop, same Unsloth model, CPU s/step) <= 0.30"
    result["goal_met"] = result["trainer_overhead_cpu"] <= 0.30
    write_json(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
