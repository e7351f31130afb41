"""Where an assistant turn ends, in token ids: what training learns up to and evaluation scores up to;
and the record of which questions an adapter trained on, which evaluation keeps out of its held-out rows.

Kept apart from the trainer (which imports Unsloth) so that evaluation can use the same definitions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

#: Written beside an adapter: the fingerprints of the questions it trained on.
TRAINED_QUESTIONS_FILE = "trained_questions.json"

# The chat formats' end-of-turn markers (ChatML, Llama 3), then end-of-text tokens that also stop generation.
TURN_END_MARKERS = ("<|im_end|>", "<|eot_id|>")
END_OF_TURN_TOKENS = (*TURN_END_MARKERS, "<|end_of_text|>", "<|endoftext|>")


def turn_end_ids(tok: Any, markers: Sequence[str] = TURN_END_MARKERS) -> list[int]:
    """The tokenizer's ids of ``markers`` (those it has), then EOS unless it is the turn *start*, as in
    some GGUF conversions: never stop on (or learn or score up to) the start marker alone.

    A ChatML model whose EOS is ``<|endoftext|>`` (some base models) still ends its turns with
    ``<|im_end|>``: the marker, not only the EOS, ends the turn."""
    vocab = tok.get_vocab()
    ids = [vocab[t] for t in markers if t in vocab]
    if tok.eos_token_id is not None and tok.eos_token_id != tok.bos_token_id:
        ids.append(tok.eos_token_id)
    return ids


def question_fingerprint(question: str) -> str:
    """A short hash of a question's text (the user turn): the same question under another id has the same one."""
    return hashlib.sha256(question.strip().encode("utf-8", "surrogatepass")).hexdigest()[:16]


def trained_questions_record(chats: Iterable[Sequence[dict]]) -> dict[str, Any]:
    """What TRAINED_QUESTIONS_FILE holds for these chats (each a ``messages`` list; its last user turn is the question)."""
    return {"question_fingerprints": sorted(
        {question_fingerprint([m["content"] for m in messages if m["role"] == "user"][-1]) for messages in chats})}
