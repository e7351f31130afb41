"""How much does the training stack add over a bare PyTorch loop? (CPU, SmolLM2-135M LoRA)

Three timings of the same work, batch 4 x 128 tokens, one optimiser step per batch:
  raw_unsloth  forward + backward + AdamW step on an Unsloth LoRA model, hand-written loop
  trainer      ``train_adapter`` (TRL SFTTrainer over an identical Unsloth model), step time from a callback
  raw_plain    the same hand-written loop on transformers + PEFT without Unsloth (a subprocess, because
               importing Unsloth patches transformers for the whole process)
Every chat is cut to exactly 128 tokens, so every batch has the same shape whatever the order.
The machine is shared, so raw and trainer steps are *paired*: after each trainer step the callback
runs one raw step, and both see the same load; the overhead is the median of the per-pair ratios.
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


class RawStepper:
    """Hand-written training steps: forward, backward, clip, AdamW, like the Trainer does."""

    def __init__(self, model):
        import torch

        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=2e-4, weight_decay=0.01)
        model.train()

    def step(self, rows: list[dict]) -> tuple[float, float]:
        """One step; wall and process-CPU seconds."""
        import torch

        ids = torch.tensor([r["input_ids"] for r in rows])
        labels = torch.tensor([r["labels"] for r in rows])
        t, c = time.perf_counter(), time.process_time()
        loss = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)  # the Trainer clips too (max_grad_norm=1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t, time.process_time() - c


def raw_loop(model, batch_rows: list[list[dict]], warmup: int) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds per step after warm-up."""
    stepper = RawStepper(model)
    timed = [stepper.step(rows) for rows in batch_rows][warmup:]
    return [w for w, _ in timed], [c for _, c in timed]


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

    On a shared machine the wall clock includes waiting for other processes (and CPU seconds include
    threads spinning while they wait), so the goal is judged on paired ratios instead. The trainer's
    window runs from on_step_begin to on_step_end: forward, backward, clipping, optimiser and
    scheduler; batch collation (before) and logging (after; one loss .item() per step) are outside.
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
    stepper = RawStepper(model)
    for i in range(args.warmup):
        stepper.step(rows[i])

    # 2. the real trainer on the same data and shapes
    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.cpu, self.raw, self.raw_cpu, self.t, self.c = [], [], [], [], 0.0, 0.0

        def on_step_begin(self, a, state, control, **kw):
            self.t, self.c = time.perf_counter(), time.process_time()

        def on_step_end(self, a, state, control, **kw):
            if state.global_step > args.warmup:
                self.times.append(time.perf_counter() - self.t)
                self.cpu.append(time.process_time() - self.c)
                wall, cpu = stepper.step(rows[state.global_step - 1])  # the paired raw step
                self.raw.append(wall)
                self.raw_cpu.append(cpu)

    timer = StepTimer()
    hp = TrainingHyperparams(per_device_batch=BATCH, grad_accum=1, max_seq_length=SEQ, max_steps=n, warmup_steps=0,
                             save_steps=10**6, logging_steps=1)
    with tempfile.TemporaryDirectory() as tmp:
        train_adapter(base, Dataset.from_list(make_chats(n * BATCH)), None, Path(tmp), hp, lora, device,
                            callbacks=[timer])

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
        "raw_unsloth": summarise(timer.raw, timer.raw_cpu),
        "trainer": summarise(timer.times, timer.cpu),
        "raw_plain_transformers_peft": summarise(plain["step_s"], plain["cpu_s"]),
    }
    pair_ratios = [t / r for t, r in zip(timer.times, timer.raw)]
    result["paired_wall_ratios"] = [round(x, 3) for x in pair_ratios]
    result["trainer_overhead_paired_median"] = round(statistics.median(pair_ratios) - 1, 3)
    result["trainer_overhead_wall_min"] = round(min(timer.times) / min(timer.raw) - 1, 3)
    result["trainer_overhead_cpu"] = round(
        statistics.median(timer.cpu) / statistics.median(timer.raw_cpu) - 1, 3)
    result["goal"] = "trainer_overhead_paired_median (trainer step / paired raw step - 1) <= 0.30"
    result["goal_met"] = result["trainer_overhead_paired_median"] <= 0.30
    write_json(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
