"""Export: merged weights equal base + adapter, the Ollama Modelfile, the GGUF LoRA adapter."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cv_pipeline.evaluation import export
from cv_pipeline_tests.test_evaluation import (
    GGUF_NAME,
    base_dir_for,
    build_lora_adapter,
    one_torch_thread,  # noqa: F401  (autouse fixture shared with the evaluation tests)
    smol_gguf_dir,
)

QUESTION = "What is a p-value?"


@pytest.fixture(scope="module")
def smol_base(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return base_dir_for(request, tmp_path_factory)


@pytest.fixture(scope="module")
def smol_adapter(smol_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lora_adapter(smol_base, tmp_path_factory.mktemp("adapter") / "lora", seed=1)


@pytest.fixture(scope="module")
def fp32_export(smol_base: Path, smol_adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> export.ExportResult:
    return export.export_adapter(smol_base, smol_adapter, tmp_path_factory.mktemp("exp") / "all_pairs", "cv-all-pairs",
                                 dtype="float32")


# ---------------------------------------------------------------------------------------------
# A small interpreter for the Go-template subset our TEMPLATEs use, to compare with the HF template.


def render_go_template(template: str, system: str | None, messages: list[dict[str, str]]) -> str:
    """Render as Ollama does for a chat: the Modelfile's SYSTEM becomes a leading system message unless
    the chat starts with its own (server/routes.go), and `collate` (template/template.go) joins every
    system message into `.System` while keeping them in `.Messages` too."""
    if system and not (messages and messages[0]["role"] == "system"):
        messages = [{"role": "system", "content": system}, *messages]
    scope_system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    parts = re.split(r"(\{\{-?\s*.*?\s*-?\}\})", template)
    # Apply trim markers: "{{-" trims whitespace before the action, "-}}" after it.
    for i, part in enumerate(parts):
        if part.startswith("{{-") and i > 0:
            parts[i - 1] = parts[i - 1].rstrip()
        if part.endswith("-}}") and i + 1 < len(parts):
            parts[i + 1] = parts[i + 1].lstrip()

    def holds(condition: str, scope: dict[str, str | None]) -> bool:
        compare = re.fullmatch(r'(eq|ne) \.(\w+) "(.*)"', condition)
        if compare:
            op, name, value = compare.groups()
            return (scope[name] == value) == (op == "eq")
        return bool(scope[condition.strip(". ")])

    def run(pos: int, scope: dict[str, str | None], out: list[str], emit: bool) -> int:
        while pos < len(parts):
            part = parts[pos]
            action = re.fullmatch(r"\{\{-?\s*(.*?)\s*-?\}\}", part)
            if not action:
                if emit:
                    out.append(part)
                pos += 1
                continue
            word = action.group(1)
            if word == "end":
                return pos + 1
            if word.startswith("if "):
                pos = run(pos + 1, scope, out, emit and holds(word[3:], scope))
            elif word == "range .Messages":
                body_start, end = pos + 1, pos + 1
                for m in messages if emit else [{"role": "", "content": ""}]:
                    end = run(body_start, {**scope, "Role": m["role"], "Content": m["content"]}, out, emit)
                pos = end
            else:
                if emit:
                    out.append(str(scope[word.lstrip(".")]))
                pos += 1
        return pos

    out: list[str] = []
    run(0, {"System": scope_system}, out, True)
    return "".join(out)


def test_chatml_template_renders_like_the_training_chat_template(smol_base: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_base)
    assert export.detect_chat_format(tok) == "chatml"
    system = export.default_system_prompt(tok, "chatml")
    assert system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    hf = tok.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True)
    ollama = render_go_template(export.CHATML_TEMPLATE, system, [{"role": "user", "content": QUESTION}])
    assert ollama == hf


def _llama31_chat_template() -> str:
    """Meta's Llama 3.1 chat template (Llama 3.2 Instruct uses the same format) as Unsloth ships it.

    No Llama tokenizer can be downloaded here; Unsloth's copy is the real Jinja template, with a
    "{system_message}" placeholder where Meta's has an empty default system message. It is read
    from Unsloth's source without importing Unsloth (which would patch transformers)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("unsloth")
    if spec is None or spec.origin is None:
        pytest.skip("Unsloth ships the Llama 3.1 chat template used as the reference; it is not installed")
    tree = ast.parse((Path(spec.origin).parent / "chat_templates.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "llama31_template" for t in node.targets):
            return ast.literal_eval(node.value).replace('"{system_message}"', '""')
    raise AssertionError("unsloth/chat_templates.py defines no llama31_template")


def test_llama3_template_renders_like_the_real_llama31_chat_template(smol_base: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_base)  # any tokenizer: only its template renders text here
    tok.chat_template = _llama31_chat_template()
    tok.bos_token = "<|begin_of_text|>"
    assert export.detect_chat_format(tok) == "llama3"
    system = export.default_system_prompt(tok, "llama3")
    assert system == "Cutting Knowledge Date: December 2023\nToday Date: 26 July 2024\n\n"
    for explicit in (None, "You answer statistics questions."):
        chat = [{"role": "user", "content": QUESTION}]
        hf = tok.apply_chat_template(
            ([{"role": "system", "content": explicit}] if explicit else []) + chat,
            tokenize=False, add_generation_prompt=True, date_string="26 July 2024",
        )
        # The Modelfile's SYSTEM is the default system text, a chat's own system message replaces it;
        # Ollama's tokenizer adds <|begin_of_text|> itself (the GGUF's add_bos_token).
        own = [] if explicit is None else [
            {"role": "system", "content": hf.split("\n\n", 1)[1].split("<|eot_id|>", 1)[0]}]
        ollama = render_go_template(export.LLAMA3_TEMPLATE, system, own + chat)
        assert hf == "<|begin_of_text|>" + ollama


@pytest.mark.parametrize("name", ["CHATML_TEMPLATE", "LLAMA3_TEMPLATE"])
@pytest.mark.parametrize("own_system", [False, True], ids=["modelfile-system", "chat-system"])
def test_a_multi_turn_chat_gets_exactly_one_system_block(name: str, own_system: bool) -> None:
    """Ollama passes system messages in .Messages as well as .System: the loop must not repeat them."""
    chat = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}]
    if own_system:
        chat = [{"role": "system", "content": "Chat's own"}, *chat]
    rendered = render_go_template(getattr(export, name), "Modelfile's", chat)
    header = "<|im_start|>system" if name == "CHATML_TEMPLATE" else "<|start_header_id|>system"
    assert rendered.count(header) == 1
    assert ("Chat's own" in rendered) is own_system and ("Modelfile's" in rendered) is not own_system
    assert [rendered.index(t) for t in ("Q1", "A1", "Q2")] == sorted(rendered.index(t) for t in ("Q1", "A1", "Q2"))


def test_llama3_template_renders_the_llama3_chat_format() -> None:
    rendered = render_go_template(export.LLAMA3_TEMPLATE, "S", [{"role": "user", "content": "Q"}])
    assert rendered == (
        "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nQ<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert render_go_template(export.LLAMA3_TEMPLATE, None, [{"role": "user", "content": "Q"}]).startswith(
        "<|start_header_id|>user"
    )


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{'<|im_start|>' + message['role']}}", "chatml"),
        ("{{'<|start_header_id|>' + message['role'] + '<|end_header_id|>'}}", "llama3"),
        ("[INST] {{ message['content'] }} [/INST]", None),
        (None, None),
    ],
)
def test_detect_chat_format_table(template: str | None, expected: str | None) -> None:
    assert export.detect_chat_format(SimpleNamespace(chat_template=template)) == expected


@pytest.mark.parametrize(
    ("chat_format", "adapter", "must_have", "must_not_have"),
    [
        ("chatml", "./adapter", ['PARAMETER stop "<|im_end|>"', "ADAPTER ./adapter", "TEMPLATE \"\"\""], ["<|eot_id|>"]),
        ("llama3", "./adapter", ['PARAMETER stop "<|eot_id|>"', "<|start_header_id|>"], ["<|im_end|>"]),
        (None, None, ["FROM /m", "PARAMETER temperature 0.7", "PARAMETER num_ctx 2048"], ["TEMPLATE", "ADAPTER"]),
    ],
)
def test_render_modelfile_table(chat_format, adapter, must_have: list[str], must_not_have: list[str]) -> None:
    text = export.render_modelfile("/m", adapter, chat_format, "Be helpful.")
    assert text.startswith("FROM /m\n")
    assert 'SYSTEM """Be helpful."""' in text
    for needle in must_have:
        assert needle in text
    for needle in must_not_have:
        assert needle not in text


@pytest.mark.parametrize("inserted, asked, expected", [
    ("You are SmolLM.", None, "You are SmolLM."),  # what the template put in every training prompt
    (None, None, None),  # a template that inserts no system block: the Modelfile adds none either
    (None, "Answer briefly.", "Answer briefly."),
])
def test_the_modelfile_system_is_what_training_prompts_held(inserted: str | None, asked: str | None,
                                                            expected: str | None) -> None:
    def render(messages, tokenize, add_generation_prompt):
        system = f"<|im_start|>system\n{inserted}<|im_end|>\n" if inserted else ""
        return system + "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)

    tok = SimpleNamespace(apply_chat_template=render)
    assert export.modelfile_system(tok, "chatml", asked) == expected
    modelfile = export.render_modelfile("base", "./adapter", "chatml", export.modelfile_system(tok, "chatml", asked))
    assert ("SYSTEM" in modelfile) is (expected is not None)


def test_modelfile_refuses_triple_quotes_in_system() -> None:
    with pytest.raises(ValueError, match='must not contain """'):
        export.render_modelfile("/m", None, "chatml", 'a """ b')


# ---------------------------------------------------------------------------------------------
# GGUF layout


def test_rope_permutation_matches_the_base_gguf_layout(smol_base: Path) -> None:
    """HF dequantised the GGUF and un-permuted q/k; our permutation must give the GGUF rows back."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((smol_base / "config.json").read_text())
    hf = load_file(str(next(smol_base.glob("*.safetensors"))))
    reader = gguf.GGUFReader(str(smol_gguf_dir() / GGUF_NAME))
    by_name = {t.name: t for t in reader.tensors}
    for gguf_name, hf_name, heads in [
        ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", config["num_attention_heads"]),
        ("blk.3.attn_k.weight", "model.layers.3.self_attn.k_proj.weight", config["num_key_value_heads"]),
    ]:
        t = by_name[gguf_name]
        gguf_rows = gguf.quants.dequantize(t.data, t.tensor_type)
        permuted = export.llama_rope_permute(hf[hf_name], heads)
        assert not np.allclose(permuted, hf[hf_name])  # the permutation is not the identity here
        np.testing.assert_allclose(permuted, gguf_rows, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Whole exports


@pytest.mark.slow
def test_fp32_merged_model_matches_base_plus_adapter(fp32_export: export.ExportResult, smol_base: Path,
                                                    smol_adapter: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from cv_pipeline.evaluation.evaluator import load_model

    peft_model, tok = load_model(smol_base, smol_adapter, "cpu")
    merged = AutoModelForCausalLM.from_pretrained(fp32_export.merged_dir, dtype=torch.float32).eval()
    base_only = load_model(smol_base, None, "cpu")[0]
    prompt = tok.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        want, got, base_logits = peft_model(input_ids=ids).logits, merged(input_ids=ids).logits, base_only(input_ids=ids).logits
    # The adapter moves logits by O(1) (about 2 here), so agreement within float32 noise over 30
    # layers (about 1e-4 measured) shows the merge, not a no-op.
    assert float((want - base_logits).abs().max()) > 0.1
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-4)
    assert (fp32_export.merged_dir / "tokenizer.json").is_file()


@pytest.mark.slow
def test_export_files_modelfile_and_gguf_adapter(fp32_export: export.ExportResult, smol_base: Path,
                                                 smol_adapter: Path) -> None:
    import gguf
    from safetensors.numpy import load_file

    res = fp32_export
    for path in (res.modelfile, res.modelfile_merged, res.adapter_dir / "adapter_model.safetensors",
                 res.adapter_dir / "adapter_config.json", res.out_dir / "README.md", res.out_dir / "export.json"):
        assert path.is_file(), path
    modelfile = res.modelfile.read_text()
    assert modelfile.startswith(f"FROM {smol_base.resolve()}\n")
    assert "\nADAPTER ./adapter\n" in modelfile
    assert 'TEMPLATE """' in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in modelfile
    assert res.modelfile_merged.read_text().startswith("FROM ./merged\n")
    from cv_pipeline.training.records import adapter_version

    record = json.loads((res.out_dir / "export.json").read_text())
    assert record["adapter_version"] == adapter_version(smol_adapter) and record["evaluated"] is None
    assert "ADAPTER" not in res.modelfile_merged.read_text()

    assert res.gguf_adapter is not None and res.gguf_adapter.is_file()
    reader = gguf.GGUFReader(str(res.gguf_adapter))

    def field(name: str):
        f = reader.fields[name]
        value = f.parts[f.data[0]]
        return bytes(value).decode() if f.types[0] == gguf.GGUFValueType.STRING else value[0]

    assert field("general.type") == "adapter"
    assert field("general.architecture") == "llama"
    assert field("adapter.type") == "lora"
    assert field("adapter.lora.alpha") == pytest.approx(16.0)
    cfg = json.loads((smol_base / "config.json").read_text())
    names = {t.name: t for t in reader.tensors}
    assert len(names) == cfg["num_hidden_layers"] * 2 * 2  # q and v, A and B each
    a, b = names["blk.0.attn_q.weight.lora_a"], names["blk.0.attn_q.weight.lora_b"]
    assert a.data.shape == (8, cfg["hidden_size"]) and b.data.shape == (cfg["hidden_size"], 8)
    assert "blk.29.attn_v.weight.lora_b" in names

    # The GGUF update, scaled as llama.cpp does (alpha / r), is the merged weight change in GGUF row order.
    merged = load_file(str(next(res.merged_dir.glob("*.safetensors"))))
    base = load_file(str(next(smol_base.glob("*.safetensors"))))
    key = "model.layers.0.self_attn.q_proj.weight"
    delta = export.llama_rope_permute(merged[key] - base[key], cfg["num_attention_heads"])
    np.testing.assert_allclose(b.data @ a.data * (16.0 / 8), delta, atol=1e-5)


@pytest.mark.slow
def test_fp16_export_replaces_old_folder_and_stores_half_precision(smol_base: Path, smol_adapter: Path,
                                                                  tmp_path: Path) -> None:
    from safetensors import safe_open

    out = tmp_path / "top_10k"
    out.mkdir()
    (out / "stale.txt").write_text("from an older export")
    res = export.export_adapter(smol_base, smol_adapter, out, "cv-top-10k", write_gguf=False)
    assert not (out / "stale.txt").exists()
    assert res.gguf_adapter is None and not (out / "adapter.gguf").exists()
    with safe_open(str(next(res.merged_dir.glob("*.safetensors"))), framework="np") as fh:
        key = "model.layers.0.self_attn.q_proj.weight"
        assert fh.get_tensor(key).dtype == np.float16
    assert json.loads((res.merged_dir / "config.json").read_text())["dtype"] == "float16"


def test_export_rejects_adapter_from_other_base(smol_base: Path, smol_adapter: Path, tmp_path: Path) -> None:
    from cv_pipeline.evaluation.evaluator import AdapterMismatchError

    other = shutil.copytree(smol_adapter, tmp_path / "other")
    (other / "training_summary.json").write_text(json.dumps({"base_model_hash": "0" * 64,
                                                              "base_model_name_or_path": "meta-llama/Llama-3.2-3B"}))
    with pytest.raises(AdapterMismatchError, match="meta-llama/Llama-3.2-3B"):
        export.export_adapter(smol_base, other, tmp_path / "out", "x")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["", "has space", "../up", "-lead"])
def test_export_rejects_bad_model_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="model_name"):
        export.export_adapter(tmp_path, tmp_path, tmp_path / "out", name)


def test_the_llama_cpp_check_says_what_it_needs_where_llama_cpp_is_missing(tmp_path: Path) -> None:
    """benchmarks/check_gguf_adapter.py runs the export in llama.cpp; llama-cpp-python is not a dependency."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "check_gguf_adapter.py"
    blocker = tmp_path / "llama_cpp.py"  # shadows an installed llama-cpp-python: the message is what is tested
    blocker.write_text("raise ImportError('not here')\n")
    proc = subprocess.run([sys.executable, str(script), "--data", str(tmp_path)], capture_output=True, text=True,
                          timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode != 0
    assert "llama-cpp-python is not installed" in proc.stderr


def test_the_export_readme_says_where_the_base_gguf_for_llama_cpp_is(tmp_path: Path) -> None:
    """`llama-cli -m base.gguf` alone left the user to find the file: for the embedded base it is named."""
    from cv_pipeline.training.base_model import INFO_FILE, embedded_gguf_path

    gguf_file = embedded_gguf_path()  # installed by the project's bootstrap
    (tmp_path / INFO_FILE).write_text(json.dumps({"source": "embedded", "gguf": gguf_file.name}))
    assert export._base_gguf(tmp_path) == gguf_file
    text = export._readme("cv-top-10k", str(tmp_path), True, export._base_gguf(tmp_path))
    assert f"`llama-cli -m {gguf_file} --lora adapter.gguf`" in text and "base.gguf" not in text

    (tmp_path / INFO_FILE).write_text(json.dumps({"source": "unsloth/Llama-3.2-3B-Instruct"}))
    assert export._base_gguf(tmp_path) is None
    text = export._readme("cv-top-10k", str(tmp_path), True, None)
    assert "`llama-cli -m base.gguf --lora adapter.gguf`" in text and "convert_hf_to_gguf.py" in text
    assert "adapter.gguf" not in export._readme("cv-top-10k", str(tmp_path), False, None)
    assert export._base_gguf(tmp_path / "missing") is None
