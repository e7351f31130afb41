"""Matplotlib figures saved as PNG (Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from cv_pipeline.atomic import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def histograms(series: Mapping[str, Sequence[float]], path: Path, title: str, xlabel: str, bins: int = 40) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    for label, values in series.items():
        if values:
            ax.hist(values, bins=bins, alpha=0.55, label=f"{label} (n={len(values)})")
    ax.set(title=title, xlabel=xlabel, ylabel="pairs")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def curves(series: Mapping[str, Sequence[tuple[float, float]]], path: Path, title: str, xlabel: str, ylabel: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    for label, points in series.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="." if len(points) < 60 else None, label=label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
