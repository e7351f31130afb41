"""What an adapter folder records about itself, for evaluation and export (which do not import Unsloth).

- its version: a hash of its weights and LoRA config (the adapter assets' data version);
- the questions it trained on (their fingerprints), which evaluation keeps out of its held-out rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

#: Written beside an adapter: the fingerprints of the questions it trained on.
TRAINED_QUESTIONS_FILE = "trained_questions.json"


def file_hash(path: Path) -> str:
    """The first 16 hex digits of a file's sha256 (a data version, here and in the Dagster assets)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def adapter_version(adapter_dir: Path | str) -> str:
    """An adapter's version: the hash of its weights and LoRA config, so that retraining with other settings
    (which Dagster sees neither in code version nor in inputs) marks evaluation and exports stale, a run that
    keeps its published adapter changes nothing downstream, and an export can be matched to its evaluation."""
    files = [Path(adapter_dir) / name for name in ("adapter_config.json", "adapter_model.safetensors")]
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {adapter_dir} is not a whole adapter; re-run the training step that writes it")
    return "-".join(map(file_hash, files))


def question_fingerprint(question: str) -> str:
    """A short hash of a question's text (the user turn): the same question under another id has the same one."""
    return hashlib.sha256(question.strip().encode("utf-8", "surrogatepass")).hexdigest()[:16]


def trained_questions_record(chats: Iterable[Sequence[dict]]) -> dict[str, Any]:
    """What TRAINED_QUESTIONS_FILE holds for these chats (each a ``messages`` list; its last user turn is the question)."""
    return {"question_fingerprints": sorted(
        {question_fingerprint([m["content"] for m in messages if m["role"] == "user"][-1]) for messages in chats})}
