"""Train one LoRA adapter: Unsloth's FastLanguageModel + TRL's SFTTrainer + PEFT, on CUDA or CPU.

The loss covers the assistant turns only. We tokenise the chats ourselves (``tokenize_chat``)
instead of relying on TRL's ``assistant_only_loss``, which needs ``{% generation %}`` markers that
most chat templates (SmolLM2's, Llama 3.2's) lack; TRL then takes the ``input_ids``/``labels``
columns as they are. Checkpoints go to ``out_dir/checkpoints``; running again with the same
``out_dir`` resumes from the last one. The finished adapter is swapped in atomically at
``out_dir/adapter``.
"""

from __future__ import annotations

# Unsloth patches transformers, TRL and PEFT when it is imported: it must come first.
import unsloth  # noqa: F401  (isort: skip)
from unsloth import FastLanguageModel  # isort: skip

import gc
import hashlib
import json
import resource
import shutil
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import PrinterCallback, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from trl import SFTConfig, SFTTrainer

from cv_pipeline.atomic import atomic_dir, settled_dir, write_json
from cv_pipeline.training.base_model import validate_model_dir
from cv_pipeline.training.config import TRAINING_VERSION, LoraHyperparams, TrainingHyperparams
from cv_pipeline.training.device import DeviceInfo
from cv_pipeline.training.records import TRAINED_QUESTIONS_FILE, trained_questions_record
from cv_pipeline.training.turns import turn_end_ids

FINGERPRINT_FILE = "run_fingerprint.json"
SUMMARY_FILE = "training_summary.json"


class TrainingError(RuntimeError):
    """Training cannot start or finish; the message says what to change."""


class TrainingOOMError(TrainingError):
    """The GPU ran out of memory; the message lists what to reduce."""


@dataclass
class TrainResult:
    """What one ``train_adapter`` call produced and measured."""

    adapter_path: Path
    steps: int
    train_tokens: int  # non-padding tokens fed to the model in this session (resumed steps excluded)
    tokens_per_s: float
    wall_time_s: float
    peak_memory_gb: float  # CUDA: max allocated; CPU: the process's peak resident set size
    device: str
    resumed_from_step: int
    loss_history: list[dict[str, float]] = field(default_factory=list)
    final_loss: float | None = None
    final_eval_loss: float | None = None
    n_train_examples: int = 0
    n_dropped_examples: int = 0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["adapter_path"] = str(self.adapter_path)
        return d


def tokenize_chat(
    tokenizer, messages: list[dict[str, str]], max_seq_length: int, turn_ends: Collection[int] | None = None
) -> dict[str, list[int]]:
    """Token ids and labels of one chat; labels are -100 except on assistant turns (up to their end of turn).

    Each turn is rendered with the chat template and tokenised piece by piece: the prompt part
    (template up to the generation prompt) is masked, the assistant part is learnt up to and including
    its end-of-turn token (``turns.turn_end_ids``: ``<|im_end|>``/``<|eot_id|>``, else EOS), which is what
    evaluation scores. Tokenising the prompt alone matches what the model sees at inference time. Text
    the template adds after the end of turn (a newline) is masked: the model never has to produce it.
    ``turn_ends``: ``turn_end_ids(tokenizer)``, passed in by callers that tokenise many chats (reading the
    vocabulary costs tens of ms).
    """
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("a training chat must end with an assistant message")
    ends = set(turn_end_ids(tokenizer)) if turn_ends is None else turn_ends
    input_ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (prompt.startswith(rendered) and full.startswith(prompt)):
            raise TrainingError(
                "the chat template does not render chats as growing prefixes, so prompt and answer tokens "
                "cannot be told apart: use a standard instruct chat template"
            )
        # The template writes any BOS itself; letting the tokenizer add one too would double it.
        context = tokenizer(prompt[len(rendered) :], add_special_tokens=False)["input_ids"]
        answer = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
        learnt = next((j + 1 for j, t in enumerate(answer) if t in ends), len(answer))
        input_ids += context + answer
        labels += [-100] * len(context) + answer[:learnt] + [-100] * (len(answer) - learnt)
        rendered = full
    return {"input_ids": input_ids[:max_seq_length], "labels": labels[:max_seq_length]}


def tokenize_dataset(tokenizer, dataset: Dataset, max_seq_length: int, name: str = "train") -> tuple[Dataset, int]:
    """``input_ids``/``labels`` for every chat; drops chats whose answer starts past the length cap."""
    if "messages" not in dataset.column_names:
        raise TrainingError(
            f"the {name} dataset has no 'messages' column (columns: {dataset.column_names}): pass the "
            "chat_dataset split, whose rows are [user, assistant] message lists"
        )
    if len(dataset) == 0:
        raise TrainingError(f"the {name} dataset is empty: check the chat_dataset split and the subset selection")
    turn_ends = frozenset(turn_end_ids(tokenizer))
    tokenized = dataset.map(
        lambda row: tokenize_chat(tokenizer, row["messages"], max_seq_length, turn_ends),
        remove_columns=dataset.column_names,
        desc=f"Tokenising {name} chats",
    )
    kept = tokenized.filter(lambda row: any(label != -100 for label in row["labels"]))
    if len(kept) == 0:
        raise TrainingError(
            f"every {name} chat's prompt fills max_seq_length={max_seq_length} tokens, so nothing is left "
            "to learn: raise max_seq_length"
        )
    return kept, len(tokenized) - len(kept)


class _Progress(TrainerCallback):
    """Forwards the trainer's logs to the caller and counts this session's tokens."""

    def __init__(self, log: Callable[[str], None] | None, on_log: Callable[[dict], None] | None):
        self.log, self.on_log_cb = log, on_log
        self.initial_tokens = 0
        self.initial_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        # Called after a checkpoint's state is restored, so these are the resumed values.
        self.initial_tokens, self.initial_step = state.num_input_tokens_seen, state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = {**(logs or {}), "step": state.global_step}
        if self.on_log_cb is not None:
            self.on_log_cb(logs)
        if self.log is not None and ("loss" in logs or "eval_loss" in logs):
            parts = [f"step {state.global_step}/{state.max_steps}"]
            parts += [f"{k} {logs[k]:.4f}" for k in ("loss", "eval_loss", "grad_norm") if k in logs]
            if "learning_rate" in logs:
                parts.append(f"lr {logs['learning_rate']:.2e}")
            self.log(", ".join(parts))


def unsloth_device_type() -> str:
    """The backend Unsloth chose when it was imported: "cpu", or its accelerator's kind ("cuda", ...)."""
    import unsloth

    return str(getattr(unsloth, "DEVICE_TYPE", "cuda" if torch.cuda.is_available() else "cpu"))


def train_adapter(
    base_model_dir: Path,
    train_dataset: Dataset,
    eval_dataset: Dataset | None,
    out_dir: Path,
    hparams: TrainingHyperparams,
    lora: LoraHyperparams,
    device: DeviceInfo,
    log: Callable[[str], None] | None = None,
    on_log: Callable[[dict], None] | None = None,
    callbacks: list[TrainerCallback] | None = None,
) -> TrainResult:
    """Fine-tune a LoRA adapter on ``train_dataset`` (a ``messages`` column) and write it to ``out_dir/adapter``.

    Re-running with the same ``out_dir`` and settings resumes from the last checkpoint in
    ``out_dir/checkpoints``; changed settings, data or base model start afresh. ``callbacks`` are
    extra transformers callbacks (tests use one to interrupt a run).
    """
    say = log or (lambda _msg: None)
    base_model_dir, out_dir = Path(base_model_dir), Path(out_dir)
    try:
        base = validate_model_dir(base_model_dir)
    except Exception as exc:
        raise TrainingError(f"base model not ready: {exc} (materialise the base_model asset first)") from exc
    if hparams.max_seq_length > base.max_position_embeddings:
        raise TrainingError(
            f"max_seq_length={hparams.max_seq_length} exceeds the base model's context of "
            f"{base.max_position_embeddings} tokens ({base_model_dir}): lower max_seq_length"
        )
    if len(train_dataset) == 0:
        raise TrainingError("the train dataset is empty: check the chat_dataset split and the subset selection")

    four_bit = device.is_cuda and device.four_bit_available
    # (Runs recorded when the base model was hashed by its first and last MiB only are of training version 1:
    # they neither resume nor are kept, see TRAINING_VERSION.)
    [fingerprint] = _fingerprint([base.content_hash], train_dataset, hparams, lora, four_bit, device.is_cuda)
    # A second run with the same settings and data: the adapter this run already published (and its
    # measurements) stays as it is, whether or not its checkpoints are still there; nothing is loaded.
    published = _published_result(settled_dir(out_dir / "adapter"), fingerprint)
    if published is not None:
        say(f"{published.adapter_path} already holds this run's adapter ({published.steps} steps): kept")
        record = published.adapter_path / TRAINED_QUESTIONS_FILE
        if not record.exists():  # published by a version that kept no record: the same data, so record it now
            write_json(record, trained_questions_record(_chats(train_dataset)))
        return published

    unsloth_device = unsloth_device_type()
    if not device.is_cuda and unsloth_device != "cpu":
        # Unsloth picks its backend once, when imported: with a GPU visible it runs its GPU code (model on the
        # GPU, Triton kernels) whatever this run asked for, and a CPU run would fail at its first step.
        raise TrainingError(
            f"the device is set to 'cpu', but Unsloth found a {unsloth_device} accelerator when it was imported and "
            "runs its GPU code: hide the GPU from this step (CUDA_VISIBLE_DEVICES= empty, or UNSLOTH_FORCE_CPU=1, "
            "in its environment), or set the device to 'auto' to train on the GPU"
        )
    torch.manual_seed(hparams.seed)
    mode = "4-bit QLoRA" if four_bit else "LoRA"
    say(f"loading {base.architecture} from {base_model_dir} on {device.device} ({mode})")
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(base_model_dir),
        max_seq_length=hparams.max_seq_length,
        # CPU: Unsloth's fallback is fp32; CUDA: None lets Unsloth pick bf16/fp16 for the GPU.
        dtype=None if device.is_cuda else torch.float32,
        load_in_4bit=four_bit,
        use_gradient_checkpointing=checkpointing_arg(hparams, device),
        random_state=hparams.seed,
        local_files_only=True,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        use_gradient_checkpointing=checkpointing_arg(hparams, device),
        random_state=hparams.seed,
    )
    train_tok, dropped = tokenize_dataset(tokenizer, train_dataset, hparams.max_seq_length, "train")
    eval_tok = tokenize_dataset(tokenizer, eval_dataset, hparams.max_seq_length, "eval")[0] if eval_dataset else None
    if dropped:
        say(f"dropped {dropped} train chats whose prompt alone fills max_seq_length={hparams.max_seq_length}")

    ckpt_dir = out_dir / "checkpoints"
    resume = _resume_point(ckpt_dir, fingerprint, say)
    # Packing needs attention that respects document boundaries inside one row (varlen flash
    # attention); the CPU path has none, so packed chats would attend to each other there.
    packing = hparams.packing and device.is_cuda
    if hparams.packing and not packing:
        say("packing is off on the CPU: without varlen attention packed chats would attend to each other")
    args = _sft_config(ckpt_dir, hparams, device, packing, eval_tok is not None)
    progress = _Progress(log, on_log)
    trainer = SFTTrainer(
        model=model,
        processing_class=tokenizer,
        train_dataset=train_tok,
        eval_dataset=eval_tok,
        args=args,
        callbacks=[progress, *(callbacks or [])],
    )
    trainer.remove_callback(PrinterCallback)  # progress goes through ``log``, not raw prints

    _reset_peak_memory(device)
    start = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        final_eval = trainer.evaluate()["eval_loss"] if eval_tok is not None else None
    except torch.OutOfMemoryError as exc:
        raise TrainingOOMError(
            f"out of GPU memory with per_device_batch={hparams.per_device_batch}, max_seq_length="
            f"{hparams.max_seq_length}, 4-bit={four_bit}, gradient_checkpointing={hparams.gradient_checkpointing}: "
            "lower per_device_batch and raise grad_accum by the same factor, or set gradient_checkpointing to "
            "'unsloth'; both resume from the last checkpoint. Lowering max_seq_length or training in 4-bit "
            "(install bitsandbytes) changes the run, which then starts again (the old checkpoints are moved to "
            f"{ckpt_dir.name}{_PREVIOUS_SUFFIX})"
        ) from exc
    wall = time.perf_counter() - start

    state = trainer.state
    history = [
        {k: float(e[k]) for k in ("step", "loss", "eval_loss", "grad_norm", "learning_rate") if k in e}
        for e in state.log_history
        if "loss" in e or "eval_loss" in e
    ]
    tokens = int(state.num_input_tokens_seen - progress.initial_tokens)
    losses = [h["loss"] for h in history if "loss" in h]
    result = TrainResult(
        adapter_path=out_dir / "adapter",
        steps=state.global_step,
        train_tokens=tokens,
        tokens_per_s=tokens / wall if wall > 0 else 0.0,
        wall_time_s=wall,
        peak_memory_gb=_peak_memory_gb(device),
        device=device.name,
        resumed_from_step=progress.initial_step,
        loss_history=history,
        final_loss=losses[-1] if losses else None,
        final_eval_loss=float(final_eval) if final_eval is not None else None,
        n_train_examples=len(train_tok),
        n_dropped_examples=dropped,
    )
    with atomic_dir(result.adapter_path) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        summary = {
            **result.as_dict(),
            "adapter_path": None,
            "base_model": base.as_dict(),
            # evaluation and export refuse this adapter on any other base (same hash function)
            "base_model_hash": base.content_hash,
            "hparams": hparams.model_dump(),
            "lora": lora.model_dump(),
            "device_info": device.as_dict(),
            "run_fingerprint": fingerprint,
        }
        write_json(tmp / SUMMARY_FILE, summary)
        # Which questions it learnt, so that an evaluation on a dataset rebuilt since can leave them out.
        write_json(tmp / TRAINED_QUESTIONS_FILE, trained_questions_record(_chats(train_dataset)))
    say(f"adapter written to {result.adapter_path} after {result.steps} steps ({result.tokens_per_s:.0f} tokens/s)")
    # Unsloth's trainer holds references back to itself: free the model and optimizer state now, not whenever the
    # garbage collector runs, for what this process does next (the other adapter, evaluation).
    del trainer, model
    gc.collect()
    if device.is_cuda:
        torch.cuda.empty_cache()
    return result


def _sft_config(
    ckpt_dir: Path, hp: TrainingHyperparams, device: DeviceInfo, packing: bool, has_eval: bool
) -> SFTConfig:
    bf16 = device.is_cuda and device.bf16
    return SFTConfig(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=hp.per_device_batch,
        per_device_eval_batch_size=hp.per_device_batch,
        gradient_accumulation_steps=hp.grad_accum,
        num_train_epochs=hp.epochs,
        max_steps=hp.max_steps if hp.max_steps is not None else -1,
        learning_rate=hp.learning_rate,
        lr_scheduler_type=hp.lr_scheduler,
        warmup_steps=hp.warmup_steps,
        weight_decay=hp.weight_decay,
        optim=hp.optimizer if device.is_cuda else "adamw_torch",
        seed=hp.seed,
        data_seed=hp.seed,
        logging_steps=hp.logging_steps,
        save_strategy="steps",
        save_steps=hp.save_steps,
        save_total_limit=hp.save_total_limit,
        eval_strategy="steps" if has_eval and hp.eval_steps else "no",
        eval_steps=hp.eval_steps,
        max_length=hp.max_seq_length,
        packing=packing,
        use_cpu=not device.is_cuda,
        bf16=bf16,
        fp16=device.is_cuda and not bf16,
        # Unsloth checkpoints on CUDA itself, as chosen in get_peft_model (checkpointing_arg); on a
        # CPU TRL's default checkpointing made a step about 10x slower.
        gradient_checkpointing=False,
        include_num_input_tokens_seen="non_padding",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataset_num_proc=None,
    )


def checkpointing_arg(hp: TrainingHyperparams, device: DeviceInfo) -> str | bool:
    """Unsloth's `use_gradient_checkpointing` for the run's setting.

    On a CPU memory is plentiful and recomputing only costs time, so a CPU run never checkpoints.
    """
    if not device.is_cuda:
        return False
    return {"unsloth": "unsloth", "recompute": True, "off": False}[hp.gradient_checkpointing]


def _chats(dataset: Dataset, batch: int = 1000):
    """The ``messages`` of every row, read a batch at a time (not the whole column in memory at once)."""
    for rows in dataset.select_columns(["messages"]).iter(batch_size=batch):
        yield from rows["messages"]


def _published_result(adapter_dir: Path, fingerprint: str) -> TrainResult | None:
    """The result recorded with the adapter in ``adapter_dir``, if the run with this fingerprint wrote it."""
    try:
        summary = json.loads((adapter_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
        if summary.get("run_fingerprint") != fingerprint:
            return None
        names = [f.name for f in fields(TrainResult) if f.name != "adapter_path"]
        return TrainResult(adapter_path=adapter_dir, **{name: summary[name] for name in names})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _fingerprint(
    base_hashes: list[str], train: Dataset, hp: TrainingHyperparams, lora: LoraHyperparams, four_bit: bool,
    cuda: bool = False,
) -> list[str]:
    """What must match for a checkpoint to be resumable: the training code's version, base model and its
    precision, chats, and every setting that changes what is learnt (``TrainingHyperparams.resume_key``); one
    fingerprint per base hash given, reading the chats once.

    Precision: 4-bit QLoRA on CUDA, 16-bit LoRA on CUDA, or fp32 LoRA on the CPU (where packing is also
    off whatever ``packing`` says); 16-bit CUDA runs add a field of their own to the form the others share."""
    hashes = [hashlib.sha256(b.encode()) for b in base_hashes]
    precision = {"four_bit": four_bit} | ({"cuda_16bit": True} if cuda and not four_bit else {})
    settings = json.dumps([hp.resume_key(), lora.model_dump(), precision, {"training_version": TRAINING_VERSION}],
                          sort_keys=True).encode()
    for batch in [settings, *(json.dumps(b["messages"], sort_keys=True).encode()
                              for b in train.select_columns(["messages"]).iter(batch_size=1000))]:
        for h in hashes:
            h.update(batch)
    return [h.hexdigest() for h in hashes]


def _is_complete(checkpoint: Path) -> bool:
    """The Trainer writes a checkpoint's files straight into ``checkpoint-N`` and ``trainer_state.json``
    last, so a run killed while saving leaves a folder without a readable one (resuming it fails)."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


_PREVIOUS_SUFFIX = ".previous"


def _resume_point(ckpt_dir: Path, fingerprint: str, say: Callable[[str], None]) -> Path | None:
    """The last complete checkpoint of an earlier run of the same training (same fingerprint).

    Checkpoints of a different run are not resumed but moved aside to ``checkpoints.previous``
    (replacing an older set there), so that changing a setting by mistake loses no trained steps:
    moving them back resumes that run. Checkpoints a killed save left half written (newer than the
    last complete one) are removed: they would fail every retry.
    """
    stamp = ckpt_dir / FINGERPRINT_FILE
    recorded = json.loads(stamp.read_text())["fingerprint"] if stamp.is_file() else None
    if ckpt_dir.is_dir() and recorded != fingerprint:
        aside = ckpt_dir.with_name(ckpt_dir.name + _PREVIOUS_SUFFIX)
        if any(ckpt_dir.glob("checkpoint-*")):
            shutil.rmtree(aside, ignore_errors=True)
            ckpt_dir.rename(aside)
            say(f"not resuming the checkpoints in {ckpt_dir}: they belong to a run with other data or settings "
                f"(moved to {aside}; move them back to resume that run, or delete them)")
        else:
            shutil.rmtree(ckpt_dir)
    while ckpt_dir.is_dir() and (last := get_last_checkpoint(str(ckpt_dir))) is not None:
        if _is_complete(Path(last)):
            say(f"resuming from {last}")
            return Path(last)
        say(f"discarding {last}: its save was interrupted (no readable trainer_state.json)")
        shutil.rmtree(last)
    write_json(stamp, {"fingerprint": fingerprint})
    return None


def _reset_peak_memory(device: DeviceInfo) -> None:
    """Start measuring this training's peak: one process may convert the base model and train both adapters."""
    if device.is_cuda:
        torch.cuda.reset_peak_memory_stats()
        return
    try:  # Linux: reset the process's peak resident set (VmHWM) to what it holds now, the loaded model included
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass  # elsewhere the peak below is the process's since it started


def _peak_memory_gb(device: DeviceInfo) -> float:
    if device.is_cuda:
        return torch.cuda.max_memory_allocated() / 1024**3
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):  # "VmHWM:   4376312 kB", since _reset_peak_memory
                    return int(line.split()[1]) / 1024**2
    except (OSError, ValueError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (1024**3 if sys.platform == "darwin" else 1024**2)
