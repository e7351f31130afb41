"""Ask a base model (optionally with an adapter) one question and stream the answer as it is generated."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from cv_pipeline.evaluation.evaluator import load_model, should_merge, stop_token_ids


@lru_cache(maxsize=1)
def _cached_model(base_dir: str, adapter_dir: str | None, device: str) -> tuple[Any, Any]:
    # One model kept: asking several questions in a row should not reload the weights each time.
    # Merged where that is exact (float32): decoding then runs the base layers only. In bf16 the LoRA stays
    # beside the base, as the evaluation scores it (EvalConfig.merge_adapters 'auto').
    return load_model(base_dir, adapter_dir, device, merge=should_merge("auto", device))


def _stop_when_set(event: threading.Event):
    """A stopping criterion that ends generation once ``event`` is set (transformers imported lazily)."""
    import torch
    from transformers import StoppingCriteria

    class StopWhenSet(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return StopWhenSet()


def stream_answer(
    question: str,
    base_dir: Path | str,
    adapter_dir: Path | str | None = None,
    device: str = "auto",
    max_new_tokens: int = 256,
    temperature: float = 0.0,
) -> Iterator[str]:
    """Yield pieces of the model's answer to ``question`` as they are decoded.

    ``temperature`` 0 means greedy decoding (reproducible); above 0 samples.
    """
    from transformers import GenerationConfig, StoppingCriteriaList, TextIteratorStreamer

    if not isinstance(question, str) or not question.strip():
        raise ValueError("the question is empty: pass the text of a question to answer")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    adapter_key = str(Path(adapter_dir).resolve()) if adapter_dir else None
    model, tok = _cached_model(str(Path(base_dir).resolve()), adapter_key, device)
    messages = [{"role": "user", "content": question}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    enc = tok(prompt, add_special_tokens=False, return_tensors="pt").to(next(model.parameters()).device)
    stops = stop_token_ids(model, tok)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    gen_cfg = GenerationConfig(
        max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=tok.pad_token_id, **sampling
    )
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    failure: list[BaseException] = []
    stop = threading.Event()  # set when the caller stops reading (Ctrl-C, or a closed generator)

    def _run() -> None:
        try:
            model.generate(**enc, generation_config=gen_cfg, streamer=streamer,
                           stopping_criteria=StoppingCriteriaList([_stop_when_set(stop)]))
        except BaseException as exc:  # handed to the caller's thread below
            failure.append(exc)
            streamer.end()  # unblock the consumer, which would otherwise wait forever

    worker = threading.Thread(target=_run, name="stream_answer", daemon=True)
    worker.start()
    try:
        for piece in streamer:
            if piece:
                yield piece
    finally:
        stop.set()  # generation ends at its next token instead of running on to max_new_tokens
        worker.join()
    if failure:
        raise RuntimeError(f"generation failed: {failure[0]}") from failure[0]
