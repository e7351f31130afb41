"""Where an assistant turn ends, in token ids: what training learns up to and evaluation scores up to.

Kept apart from the trainer (which imports Unsloth) so that evaluation can use the same definition.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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

