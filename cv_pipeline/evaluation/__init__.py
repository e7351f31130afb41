"""Evaluation, local inference and export of the LoRA adapters (Dagster-free).

- ``metrics``: pure scoring functions (ROUGE-L, cosine, perplexity, bootstrap CIs)
- ``evaluator``: load base/adapter, held-out loss, batched generation, embeddings, ``evaluate_models``
- ``report``: metrics.json, PNG plots, report.md and a self-contained report.html
- ``inference``: ``stream_answer`` for interactive use
- ``export``: merged weights, Ollama Modelfile, GGUF LoRA adapter

Submodules are imported on use, so ``metrics`` and ``report`` stay cheap (no torch import).
"""

from typing import Literal

# EvalConfig.merge_adapters and the Dagster setting of the same name; here, so that neither needs torch to name it.
MergeMode = Literal["auto", "always", "never"]
