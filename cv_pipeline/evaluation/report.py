"""The evaluation report: metrics.json, PNG plots, report.md and a self-contained report.html.

Plots use matplotlib's object API (``Figure``) with the Agg canvas, never pyplot: no global
backend state, safe inside a Dagster worker thread, no display needed.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cv_pipeline import atomic

ATTRIBUTION = (
    "Questions and reference answers come from stats.stackexchange.com (Cross Validated), "
    "user contributions licensed under CC BY-SA; each row keeps its link and licence in the chat dataset."
)


@dataclass
class ReportFiles:
    """What :func:`write_report` wrote, plus the metrics table for Dagster metadata."""

    metrics_json: Path
    report_md: Path
    report_html: Path
    plots: dict[str, Path] = field(default_factory=dict)
    markdown_table: str = ""

    def paths(self) -> dict[str, Path]:
        return {"metrics_json": self.metrics_json, "report_md": self.report_md, "report_html": self.report_html,
                **{f"plot_{k}": v for k, v in self.plots.items()}}


def _fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _table_rows(results: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["model", "held-out loss", "perplexity", "loss rows / tokens", "ROUGE-L mean [95% CI]",
              "embedding cosine mean [95% CI]", "answers"]
    rows = []
    for name, m in results["models"].items():
        r, c = m["rouge_l"], m["embedding_cosine"]
        rows.append([
            name,
            _fmt(m["loss"]),
            _fmt(m["perplexity"], 2),
            f"{m.get('n_loss_examples', '?')} / {m.get('n_loss_tokens', '?')}",
            f"{_fmt(r['mean'], 3)} [{_fmt(r['ci_low'], 3)}, {_fmt(r['ci_high'], 3)}]",
            f"{_fmt(c['mean'], 3)} [{_fmt(c['ci_low'], 3)}, {_fmt(c['ci_high'], 3)}]",
            str(m["n"]),
        ])
    return header, rows


def markdown_table(results: Mapping[str, Any]) -> str:
    """The per-model metrics as a Markdown table (also used as Dagster ``MetadataValue.md``)."""
    header, rows = _table_rows(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _save_png(fig: Any, target: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return atomic.write_bytes(target, buf.getvalue())


def _plot_loss(results: Mapping[str, Any], target: Path) -> Path:
    from matplotlib.figure import Figure

    names = list(results["models"])
    losses = [results["models"][n]["loss"] for n in names]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    bars = ax.bar(names, losses, color=["#888888"] + ["#3b7dd8"] * (len(names) - 1))
    for bar, n in zip(bars, names, strict=True):
        top = (bar.get_x() + bar.get_width() / 2, bar.get_height())
        ax.annotate(f"ppl {results['models'][n]['perplexity']:.1f}", top, ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("mean token loss (nats)")
    ax.set_title("Held-out loss on assistant tokens (lower is better)")
    return _save_png(fig, target)


def _plot_distribution(results: Mapping[str, Any], metric: str, title: str, target: Path) -> Path:
    from matplotlib.figure import Figure

    names = list(results["models"])
    data = [[e[metric] for e in results["per_example"] if e["model"] == n] for n in names]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.set_title(title)
    ax.set_ylabel(metric)
    return _save_png(fig, target)


def _plot_training(curves: Mapping[str, Sequence[Mapping[str, float]]], target: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    for name, points in curves.items():
        ax.plot([p["step"] for p in points], [p["loss"] for p in points], label=name, marker=".")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss")
    ax.legend()
    return _save_png(fig, target)


def _intro(results: Mapping[str, Any]) -> list[str]:
    """What was measured, how and on what: the paragraphs both reports open with (plain text)."""
    cfg = results.get("config", {})
    merged = {True: "Each adapter was merged into the base weights.",
              False: "Each adapter ran as LoRA modules beside the base weights."}.get(results.get("adapters_merged"), "")
    paragraphs = [
        f"Device: {results.get('device', '?')}. {results.get('n_test_rows', '?')} held-out test rows; loss on up to "
        f"{cfg.get('n_loss_examples', '?')} of them, and answers generated for up to {cfg.get('n_generation_examples', '?')} "
        f"of those (greedy decoding, cut at {cfg.get('max_new_tokens', '?')} new tokens, so long answers end "
        f"mid-sentence). {merged}",
        "Loss and perplexity are over the answer's tokens only, up to its end of turn, as training learns them "
        "(token-weighted over the rows). ROUGE-L and the cosine of all-MiniLM-L6-v2 embeddings (of each text's first "
        "256 word pieces) compare each generated answer with the top-voted answer. Intervals are bootstrap 95% confidence intervals of the mean.",
    ]
    if results.get("excluded_trained_rows"):
        paragraphs.append(
            f"{results['excluded_trained_rows']} test rows were left out: an adapter trained on those questions (the "
            "chat dataset was rebuilt with other splits after the adapters were trained)."
        )
    if results.get("adapters_without_record"):
        paragraphs.append(
            f"Not checked against what they trained on (no record; trained by an earlier version): "
            f"{', '.join(results['adapters_without_record'])}."
        )
    return paragraphs


def _markdown(results: Mapping[str, Any], table: str, plots: Mapping[str, Path]) -> str:
    parts = ["# Adapter evaluation", "", f"Base model: `{results['base_model']}`.", ""]
    for paragraph in _intro(results):
        parts += [paragraph, ""]
    parts += [
        table,
        "",
        "## Plots",
        "",
    ]
    parts += [f"![{name}]({path.name})" for name, path in plots.items()]
    parts += ["", "## The report's three prompts", ""]
    for entry in results["prompts"]:
        parts += [f"### {entry['prompt']}", ""]
        for name, answer in entry["answers"].items():
            quoted = "\n".join("> " + line for line in (answer or "(empty answer)").splitlines())
            parts += [f"**{name}**", "", quoted, ""]
    parts += ["## Attribution", "", ATTRIBUTION, ""]
    return "\n".join(parts)


def _html(results: Mapping[str, Any], plots: Mapping[str, Path]) -> str:
    esc = html.escape
    header, rows = _table_rows(results)
    table = "<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>"
    table += "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows) + "</tbody></table>"
    imgs = "".join(
        f'<figure><img alt="{esc(name)}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'
        f"<figcaption>{esc(name)}</figcaption></figure>"
        for name, path in plots.items()
    )
    answers = ""
    for entry in results["prompts"]:
        answers += f"<h3>{esc(entry['prompt'])}</h3><div class='side'>"
        answers += "".join(
            f"<div><h4>{esc(name)}</h4><pre>{esc(ans or '(empty answer)')}</pre></div>"
            for name, ans in entry["answers"].items()
        )
        answers += "</div>"
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px}.side{display:flex;gap:1em}.side>div{flex:1}"
        "pre{white-space:pre-wrap;background:#f6f6f6;padding:.5em}img{max-width:100%}"
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Adapter evaluation</title>"
        f"<style>{style}</style></head><body><h1>Adapter evaluation</h1>"
        f"<p>Base model: <code>{esc(str(results['base_model']))}</code>.</p>"
        + "".join(f"<p>{esc(paragraph)}</p>" for paragraph in _intro(results))
        + f"{table}<h2>Plots</h2>{imgs}"
        f"<h2>The report's three prompts</h2>{answers}<h2>Attribution</h2><p>{esc(ATTRIBUTION)}</p></body></html>\n"
    )


def write_report(
    results: Mapping[str, Any],
    out_dir: Path | str,
    training_curves: Mapping[str, Sequence[Mapping[str, float]]] | None = None,
) -> ReportFiles:
    """Write the report files into ``out_dir`` and return their paths and the table.

    The folder is swapped in whole (``atomic_dir``): a run that fails partway leaves the previous report as it
    was, never new metrics beside an old page.
    """
    out = Path(out_dir)
    if not results.get("models"):
        raise ValueError("write_report: the results have no models; run evaluate_models first")
    table = markdown_table(results)
    with atomic.atomic_dir(out) as tmp:
        plots = {
            "heldout_loss": _plot_loss(results, tmp / "heldout_loss.png"),
            "rouge_l": _plot_distribution(results, "rouge_l", "ROUGE-L vs the top-voted answer", tmp / "rouge_l.png"),
            "embedding_cosine": _plot_distribution(
                results, "embedding_cosine", "Embedding cosine vs the top-voted answer", tmp / "embedding_cosine.png"
            ),
        }
        if training_curves:
            plots["training_loss"] = _plot_training(training_curves, tmp / "training_loss.png")
        atomic.write_json(tmp / "metrics.json", dict(results))
        atomic.write_text(tmp / "report.md", _markdown(results, table, plots))
        atomic.write_text(tmp / "report.html", _html(results, plots))
    return ReportFiles(out / "metrics.json", out / "report.md", out / "report.html",
                       {name: out / path.name for name, path in plots.items()}, table)
