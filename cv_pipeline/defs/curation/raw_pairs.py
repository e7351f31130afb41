"""The raw HTML behind cleaned pairs, read back from the raw batches (for the checks and chat_dataset's gate)."""

from collections.abc import Iterable, Iterator
from pathlib import Path

from cv_pipeline.curation.validate import CHAT_RULES, chat_dataset_problems
from cv_pipeline.defs.resources import DataDirResource


def raw_questions(data_dir: DataDirResource, files: list[Path] | None = None) -> Iterator:
    """The questions of the raw batch ``files`` (default: every partition's)."""
    from cv_pipeline.collection import load_batch

    for raw in files if files is not None else sorted(data_dir.sub("raw").glob("questions_*.json")):
        if raw.name.endswith(".stats.json") or not raw.exists():  # a run-stats sidecar, or not collected
            continue
        yield from load_batch(raw).questions


def pair_bodies(q) -> list[str]:
    """The raw HTML of a question and of the answer the cleaner paired with it (cleaner.clean_batch's choice)."""
    from cv_pipeline.sources.models import pick_top_answer

    answer = q.top_answer or pick_top_answer(q.answers)
    return [q.body_html] + ([answer.body_html] if answer else [])


def _copies_of(data_dir: DataDirResource, question_ids: list[int], raw: list[Path] | None) -> Iterator:
    """The raw questions among ``question_ids``: every copy, where a question was collected twice (in two
    partitions, maybe edited in between)."""
    wanted = set(question_ids)
    return (q for q in raw_questions(data_dir, raw) if q.question_id in wanted)


def raw_pair_html(data_dir: DataDirResource, question_ids: list[int], raw: list[Path] | None = None) -> dict[int, list[str]]:
    """The raw HTML (title, question, answer) of a few pairs, one per copy, to tell a tag left over from one a post
    writes as text."""
    import html

    found: dict[int, list[str]] = {}
    for q in _copies_of(data_dir, question_ids, raw):
        found.setdefault(q.question_id, []).append(html.escape(q.title) + "".join(pair_bodies(q)))  # titles arrive decoded
    return found


def code_block_questions(data_dir: DataDirResource, question_ids: list[int], raw: list[Path] | None = None) -> list[int]:
    """Of ``question_ids``, those whose pair comes from a post with a <pre> code block (rule 1 drops such pairs).

    A question collected twice counts only when every copy has one: a kept pair may come from the copy
    without. A question whose raw batch is gone cannot be judged and is not listed.
    """
    from cv_pipeline.curation.cleaner import has_code_block

    code: dict[int, bool] = {}
    for q in _copies_of(data_dir, question_ids, raw):
        code[q.question_id] = code.get(q.question_id, True) and any(map(has_code_block, pair_bodies(q)))
    return sorted(qid for qid, has in code.items() if has)


def chat_problems(
    data_dir: DataDirResource, splits: dict[str, list[dict]], top: list[dict], rules: Iterable[str] = tuple(CHAT_RULES)
) -> dict[str, list[int]]:
    """validate.chat_dataset_problems, judged against the raw posts in ``data_dir``: what chat_dataset's gate and
    its blocking checks both apply."""
    return chat_dataset_problems(
        splits, raw_html=lambda ids: raw_pair_html(data_dir, ids), rules=rules, top=top,
        code_block_posts=lambda ids: code_block_questions(data_dir, ids),
    )
