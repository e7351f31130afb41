import json
from pathlib import Path

import dagster as dg

from cv_pipeline.curation import validate
from cv_pipeline.curation.dataset import SPLITS, read_cleaned
from cv_pipeline.defs.curation.assets import cleaned_qa_pairs

chat_dataset = dg.AssetKey("chat_dataset")
from cv_pipeline.defs.resources import DataDirResource


def _result(bad: list[int], what: str) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=not bad,
        metadata={"failing_rows": len(bad), "example_question_ids": dg.MetadataValue.json(bad[:20]), "rule": what},
    )


def _cleaned_rows(data_dir: DataDirResource) -> list[dict]:
    return read_cleaned(sorted(data_dir.sub("cleaned").glob("pairs_*.parquet")))


@dg.asset_check(asset=cleaned_qa_pairs, description="No HTML tags or post-notice text left in any pair.")
def cleaned_has_no_markup(data_dir: DataDirResource) -> dg.AssetCheckResult:
    return _result(validate.rows_with_markup(_cleaned_rows(data_dir)), "no markup or notice text")


@dg.asset_check(asset=cleaned_qa_pairs, description="No kept pair comes from a post with a code block.")
def cleaned_has_no_code_block_posts(data_dir: DataDirResource) -> dg.AssetCheckResult:
    from cv_pipeline.collection import load_batch
    from cv_pipeline.curation.cleaner import has_code_block

    kept = {r["question_id"] for r in _cleaned_rows(data_dir)}
    bad = []
    for raw in sorted(data_dir.sub("raw").glob("questions_*.json")):
        if raw.name.endswith(".stats.json"):  # the run-stats sidecar, not a batch
            continue
        for q in load_batch(raw).questions:
            if q.question_id in kept and (has_code_block(q.body_html) or (q.top_answer and has_code_block(q.top_answer.body_html))):
                bad.append(q.question_id)
    return _result(bad, "no pair from a <pre> post")


@dg.asset_check(asset=cleaned_qa_pairs, description="Every pair has a question, an answer and a licence.")
def cleaned_rows_complete(data_dir: DataDirResource) -> dg.AssetCheckResult:
    rows = _cleaned_rows(data_dir)
    return _result(sorted(set(validate.rows_with_empty_text(rows) + validate.rows_without_license(rows))), "non-empty, licensed")


def _splits(data_dir: DataDirResource) -> dict[str, list[dict]]:
    root = Path(data_dir.sub("chat_dataset"))
    return {s: [json.loads(line) for line in (root / f"{s}.jsonl").read_text(encoding="utf-8").splitlines()] for s in SPLITS}


# Blocking: a dataset that fails any of these stops the run before training spends GPU time on it.
@dg.asset_check(asset=chat_dataset, blocking=True, description="Messages alternate user/assistant and none is empty.")
def chat_roles_alternate(data_dir: DataDirResource) -> dg.AssetCheckResult:
    return _result([q for rows in _splits(data_dir).values() for q in validate.bad_roles(rows)], "roles alternate, no empty message")


@dg.asset_check(asset=chat_dataset, blocking=True, description="No question id appears in two splits.")
def chat_splits_disjoint(data_dir: DataDirResource) -> dg.AssetCheckResult:
    return _result(validate.ids_in_two_splits(_splits(data_dir)), "splits disjoint")


@dg.asset_check(asset=chat_dataset, blocking=True, description="Every row carries its licence and link.")
def chat_rows_licensed(data_dir: DataDirResource) -> dg.AssetCheckResult:
    rows = [r for rows in _splits(data_dir).values() for r in rows]
    return _result([r["question_id"] for r in rows if not r.get("license") or not r.get("link")], "licence and link present")


@dg.asset_check(asset=chat_dataset, blocking=True, description="No HTML or notice text in any message.")
def chat_has_no_markup(data_dir: DataDirResource) -> dg.AssetCheckResult:
    rows = [
        {"question_id": r["question_id"], "question": r["messages"][0]["content"], "answer": r["messages"][-1]["content"]}
        for rows in _splits(data_dir).values()
        for r in rows
    ]
    return _result(validate.rows_with_markup(rows), "no markup")
