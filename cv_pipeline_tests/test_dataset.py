"""Chat dataset: stable hash split, de-duplication, top-N subset, content version, on-disk formats."""

from __future__ import annotations

import json

import pytest

from cv_pipeline.curation import validate
from cv_pipeline.curation.dataset import (
    SplitFractions,
    build_chat_dataset,
    load_split,
    save_chat_dataset,
    split_of,
)


def pair(qid: int, score: int, rank: int = 0, question: str | None = None) -> dict:
    return {
        "question_id": qid,
        "answer_id": qid + 1_000_000,
        "rank": rank,
        "question_score": score,
        "answer_score": score // 2,
        "tags": ["regression"],
        "question": question or f"Question {qid}: how do I interpret a p-value?",
        "answer": f"Answer {qid}: it is the probability of data at least this extreme under the null.",
        "link": f"https://stats.stackexchange.com/questions/{qid}",
        "license": "CC BY-SA 4.0",
    }


def test_split_is_stable_when_partitions_are_added():
    first = build_chat_dataset([pair(q, 1000 - q) for q in range(1, 2001)], top_n=100)
    more = build_chat_dataset([pair(q, 1000 - q) for q in range(1, 4001)], top_n=100)
    where_first = {r["question_id"]: s for s, rows in first.splits.items() for r in rows}
    where_more = {r["question_id"]: s for s, rows in more.splits.items() for r in rows}
    assert all(where_more[q] == s for q, s in where_first.items())
    # and the split sizes follow the fractions roughly (5% / 5% by default)
    assert 0.03 < len(more.splits["test"]) / 4000 < 0.07
    assert 0.03 < len(more.splits["validation"]) / 4000 < 0.07


@pytest.mark.parametrize("qid", [1, 17, 123456, 99999999])
def test_split_of_is_deterministic_and_valid(qid):
    assert split_of(qid) == split_of(qid)
    assert split_of(qid) in {"train", "validation", "test"}


def test_all_test_fraction_puts_everything_in_test():
    assert {split_of(q, SplitFractions(validation=0.0, test=0.999999)) for q in range(200)} == {"test"}


def test_bad_fractions_are_refused():
    with pytest.raises(ValueError, match="split fractions"):
        SplitFractions(validation=0.6, test=0.5)


def test_duplicates_keep_the_highest_scored_copy_and_are_counted():
    rows = [pair(5, 10, question="old copy of the question"), pair(5, 40, question="new copy"), pair(6, 3)]
    ds = build_chat_dataset(rows, top_n=10)
    kept = [r for rows in ds.splits.values() for r in rows]
    assert ds.duplicates_dropped == 1
    assert sorted(r["question_id"] for r in kept) == [5, 6]
    five = next(r for r in kept if r["question_id"] == 5)
    assert five["messages"][0]["content"] == "new copy"


def test_top_subset_is_the_highest_voted_train_pairs():
    ds = build_chat_dataset([pair(q, q * 3 % 1000) for q in range(1, 1001)], top_n=50)
    train_scores = sorted((r["question_score"] for r in ds.splits["train"]), reverse=True)
    assert [r["question_score"] for r in ds.top] == train_scores[:50]
    assert {r["question_id"] for r in ds.top} <= {r["question_id"] for r in ds.splits["train"]}


def test_messages_alternate_and_splits_are_disjoint():
    ds = build_chat_dataset([pair(q, q) for q in range(1, 300)], top_n=20)
    assert validate.ids_in_two_splits(ds.splits) == []
    for rows in ds.splits.values():
        assert validate.bad_roles(rows) == []


def test_data_version_changes_with_content_only():
    rows = [pair(q, q) for q in range(1, 100)]
    a = build_chat_dataset(rows, top_n=10).data_version
    assert build_chat_dataset(list(reversed(rows)), top_n=10).data_version == a
    changed = [dict(r) for r in rows]
    changed[3]["answer"] += " (edited)"
    assert build_chat_dataset(changed, top_n=10).data_version != a


def test_saved_dataset_loads_back_with_every_split(tmp_path):
    ds = build_chat_dataset([pair(q, q) for q in range(1, 200)], top_n=25)
    out = save_chat_dataset(ds, tmp_path / "chat", source="unit test")
    for split in ("train", "validation", "test", "top_10k"):
        loaded = load_split(out, split)
        expected = ds.top if split == "top_10k" else ds.splits[split]
        assert len(loaded) == len(expected)
        jsonl = [json.loads(line) for line in open(out / f"{split}.jsonl")]
        assert [r["question_id"] for r in jsonl] == [r["question_id"] for r in expected]
    assert loaded[0]["messages"][0]["role"] == "user"
    assert (out / "README.md").read_text().count("CC BY-SA") >= 1
    assert (out / "lengths.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(KeyError, match="no split 'dev'"):
        load_split(out, "dev")


def test_loading_a_missing_dataset_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="materialise chat_dataset"):
        load_split(tmp_path / "nowhere", "train")


@pytest.mark.parametrize(
    "text, has_markup",
    [
        ("plain text", False),
        ("if $a<b$ then", False),
        ("x < y and y > z", False),
        ("<p>left over</p>", True),
        ("a <br/> b", True),
        ("<!-- comment", True),
        ("Closed. This question needs details", True),
    ],
)
def test_markup_detector(text, has_markup):
    assert bool(validate.rows_with_markup([{"question_id": 1, "question": text, "answer": "ok"}])) is has_markup


def test_concurrent_writers_of_one_folder_take_turns(tmp_path):
    """Two processes (say a scheduled run and a manual one) writing the same dataset folder never race."""
    import subprocess
    import sys

    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from cv_pipeline.atomic import atomic_dir\n"
        "for i in range(15):\n"
        "    with atomic_dir(Path(sys.argv[1])) as tmp:\n"
        "        for j in range(20):\n"
        "            (tmp / f'part{j}.txt').write_text(sys.argv[2])\n"
        "        time.sleep(0.01)\n"
    )
    target = tmp_path / "chat_dataset"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(target), tag]) for tag in ("A", "B")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    contents = {(target / f"part{j}.txt").read_text() for j in range(20)}
    assert len(contents) == 1  # one writer's complete folder, never a mix
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["chat_dataset"]
