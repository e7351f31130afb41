"""Small helpers that turn results into Dagster metadata (previews, hashes)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from cv_pipeline.training.records import file_hash  # noqa: F401  (a data version, used by the assets from here)


def md_table(rows: list[dict], columns: list[str], max_chars: int = 80) -> str:
    """A Markdown table of the first rows, cells shortened and pipes escaped."""

    def cell(v: object) -> str:
        s = " ".join(str(v).split())
        s = s if len(s) <= max_chars else s[: max_chars - 1] + "…"
        return s.replace("|", "\\|")

    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |\n" for r in rows)


def image(path: Path) -> dg.MetadataValue:
    """A PNG shown inline in the UI (as a Markdown data URI) with its path beside it."""
    import base64

    data = base64.b64encode(Path(path).read_bytes()).decode()
    return dg.MetadataValue.md(f"![{Path(path).name}](data:image/png;base64,{data})\n\n`{path}`")
