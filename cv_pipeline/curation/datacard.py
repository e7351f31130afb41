"""The chat dataset's data card: counts, length histograms, sources and attribution duties."""

from __future__ import annotations

from pathlib import Path

from cv_pipeline.atomic import write_text
from cv_pipeline.curation.dataset import ChatDataset
from cv_pipeline.plots import histograms


def write_datacard(ds: ChatDataset, out_dir: Path, source: str) -> tuple[Path, Path]:
    """Write ``README.md`` and ``lengths.png`` into the dataset folder; returns both paths."""
    def words(rows: list[dict], role: int) -> list[int]:
        return [len(r["messages"][role]["content"].split()) for r in rows]

    train = ds.splits["train"]
    plot = histograms(
        {"question": words(train, 0), "answer": words(train, 1)},
        out_dir / "lengths.png",
        title="Train split: words per message",
        xlabel="words",
    )
    counts = "\n".join(f"| {name} | {n:,} |" for name, n in ds.counts.items())
    text = f"""# Cross Validated chat dataset

Data version `{ds.data_version}`. Source: {source}.

| part | pairs |
|---|---|
{counts}

Each row: `messages` = [user: question title + body, assistant: the highest-voted answer], as plain text
(the cleaning rules are in the project README), with `question_id`, `answer_id`, scores, tags, and for
attribution the question's `link` and `license` and the answer's `answer_link` and `answer_license`. Pairs are
de-duplicated across all partitions by question id and by question text (the highest-voted copy stays).
Splits are fixed by a hash of the question id. `top_10k` holds the highest-voted pairs of `train` (in question-id order, like the splits).

![lengths](lengths.png)

## Licence and attribution
The text is user content from Cross Validated (stats.stackexchange.com), licensed CC BY-SA (2.5, 3.0 or
4.0 by post date; a question and its answer may differ: `license` is the question's, `answer_license` the
answer's). Anyone republishing it must say it comes from Stack Exchange, link each question (`link`) and
answer (`answer_link`), name and link their authors (look them up from the ids), and share derivatives under
the same licence. Author names are deliberately not in this dataset.
"""
    readme = write_text(out_dir / "README.md", text)
    return readme, plot
