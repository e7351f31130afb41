"""Pure scoring functions: ROUGE-L, cosine similarity, perplexity and summary statistics.

No model code here, so every function can be checked against a hand-computed table.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

# Words and numbers; punctuation is dropped so "model." and "model" match, as ROUGE scorers do.
_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens used by :func:`rouge_l`."""
    return _TOKEN.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (two-row dynamic programme, O(len(a)*len(b)))."""
    if not a or not b:
        return 0
    if len(a) < len(b):  # keep the row as short as possible
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 (beta = 1) of ``candidate`` against ``reference`` over lower-case word tokens.

    Empty on either side gives 0.0: there is nothing to match, and a model that answers nothing
    must not score as perfect.
    """
    cand, ref = tokenize(candidate), tokenize(reference)
    lcs = lcs_length(cand, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def cosine(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Cosine similarity; a zero vector has no direction, so it raises instead of returning NaN."""
    va, vb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if va.shape != vb.shape:
        raise ValueError(f"cosine: vectors have different shapes {va.shape} and {vb.shape}")
    na, nb = np.linalg.norm(va), np.linalg.norm(vb)
    if na == 0 or nb == 0:
        raise ValueError("cosine: a zero vector has no direction; check the embedder output")
    return float(np.dot(va, vb) / (na * nb))


def perplexity(mean_token_loss: float) -> float:
    """Perplexity from a token-weighted mean cross-entropy in nats: exp(loss)."""
    if not math.isfinite(mean_token_loss):
        raise ValueError(f"perplexity: mean token loss must be finite, got {mean_token_loss}")
    return math.exp(mean_token_loss)


def bootstrap_ci(
    values: Sequence[float], *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean; a fixed seed keeps reports reproducible."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("bootstrap_ci: no values to resample")
    if arr.size == 1:
        return float(arr[0]), float(arr[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(n_resamples, arr.size))
    means = arr[idx].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def summarize(values: Sequence[float], *, seed: int = 0) -> dict[str, float | int]:
    """Mean, median, (population) std, bootstrap 95% CI of the mean, and n."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("summarize: no values; evaluate at least one example")
    lo, hi = bootstrap_ci(arr, seed=seed)
    return {
        "mean": float(arr.mean()),
        "median": float(np.median(arr)),
        "std": float(arr.std()),
        "ci_low": lo,
        "ci_high": hi,
        "n": int(arr.size),
    }
