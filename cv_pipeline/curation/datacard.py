"""The chat dataset's data card: counts, length histograms, sources and attribution duties."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

from cv_pipeline.atomic import write_text
from cv_pipeline.curation.dataset import ChatDataset, generated_source
from cv_pipeline.plots import histograms


_SITE_NAMES = {"stats.stackexchange.com": "Cross Validated"}
_LICENCE_DEEDS = {
    f"CC BY-SA {v}": f"https://creativecommons.org/licenses/by-sa/{v}/" for v in ("2.5", "3.0", "4.0")
}


def _site(rows: list[dict]) -> tuple[str, str]:
    """The site the rows' links point to: its name (as Stack Exchange names it, where known) and how the card
    introduces it ("Cross Validated (host)")."""
    hosts = Counter(urlsplit(r["link"]).netloc for r in rows if r.get("link"))
    if not hosts:
        return "Stack Exchange", "a Stack Exchange site"
    host = hosts.most_common(1)[0][0]
    return (_SITE_NAMES[host], f"{_SITE_NAMES[host]} ({host})") if host in _SITE_NAMES else (host, host)


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
    rows = [r for split_rows in ds.splits.values() for r in split_rows]
    site_name, site = _site(rows)
    licences = Counter(r["license"] for r in rows) + Counter(r["answer_license"] for r in rows)
    licence_rows = "\n".join(
        f"| {name} | {n:,} | {_LICENCE_DEEDS.get(name, '(see the post)')} |" for name, n in sorted(licences.items())
    )
    note = (
        f"\n**Generated data.** The embedded sample site wrote these questions and answers in {site_name}'s shape "
        f"(the demo's corpus); they are not posts from {site}. Their links and licences imitate real ones so that "
        "the pipeline's attribution can be exercised and checked, and point at no such text. What follows says "
        "what real data from the site requires.\n"
        if generated_source(source) else ""
    )
    text = f"""# {site_name} chat dataset{" (generated demo data)" if note else ""}
{note}
Data version `{ds.data_version}`. Source: {source}.

| part | pairs |
|---|---|
{counts}

Each row: `messages` = [user: the question (its title, then its body, unless the cleaning left titles out),
assistant: the highest-voted answer], as plain text, with `question_id`, `answer_id`, scores, tags, and for
attribution the question's `link` and `license` and the answer's `answer_link` and `answer_license`. Pairs are
de-duplicated across all partitions by question id and by question text (the highest-voted copy stays).
Splits are fixed by a hash of the question id. `top_10k` holds the highest-voted pairs of `train` (in question-id order, like the splits).

![lengths](lengths.png)

## Licence and attribution
The text is user content from {site}, licensed CC BY-SA: each post's licence as the source gives it, or
where it gives none, by post date (2.5 before 2011-04-08, 3.0 before 2018-05-02, 4.0 since); a question and
its answer may differ: `license` is the question's, `answer_license` the answer's. Posts in this dataset, questions and answers counted apart:

| licence | posts | licence text |
|---|---|---|
{licence_rows}

**The text is modified**, as the licences require saying: HTML markup and post notices removed, characters
normalised (see the cleaning rules in the project README), pairs with code blocks, empty or short pairs and
duplicates dropped. Anyone republishing it must say it comes from Stack Exchange, link each question (`link`)
and answer (`answer_link`), name and link their authors (each post's page names them), say that it was
modified, and share derivatives under the same licence. Author names are deliberately not in this dataset.
"""
    readme = write_text(out_dir / "README.md", text)
    return readme, plot
