"""Matplotlib figures saved as PNG.

Figures are `matplotlib.figure.Figure` objects outside pyplot's registry: nothing global to close, so a
failing save leaks no figure into a long-lived process (the Dagster daemon, a code server).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cv_pipeline.atomic import atomic_path


def _figure() -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.6), dpi=110)
    return fig, fig.subplots()


def _save(fig: Any, ax: Any, path: Path) -> Path:
    ax.legend()
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return path


def histograms(series: Mapping[str, Sequence[float]], path: Path, title: str, xlabel: str, bins: int = 40) -> Path:
    fig, ax = _figure()
    for label, values in series.items():
        if values:
            ax.hist(values, bins=bins, alpha=0.55, label=f"{label} (n={len(values)})")
    ax.set(title=title, xlabel=xlabel, ylabel="pairs")
    return _save(fig, ax, path)


def curves(series: Mapping[str, Sequence[tuple[float, float]]], path: Path, title: str, xlabel: str, ylabel: str) -> Path:
    fig, ax = _figure()
    for label, points in series.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="." if len(points) < 60 else None, label=label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    return _save(fig, ax, path)
